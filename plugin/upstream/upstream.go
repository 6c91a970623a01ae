// Package upstream is one DNS-over-TLS upstream as the plugin sees it: an
// address, a pool of verified connections, and a health record, plus the
// policies that order several upstreams for a query.
package upstream

import (
	"cmp"
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dotstub/dotstub/plugin/dot"

	"github.com/miekg/dns"
)

// Defaults for the zero fields of Config.
const (
	DefaultMaxFails    = 2
	DefaultHealthCheck = 500 * time.Millisecond
)

// Config configures an Upstream.
type Config struct {
	Name string     // as configured, e.g. "tls://192.0.2.53%dns.example"; a metric label
	Pool dot.Config // the address, TLS and pool settings

	// MaxFails is the number of consecutive failures (of queries or probes)
	// that marks the upstream down. Zero never marks it down.
	MaxFails uint32
	// HealthCheck is the interval between probes while the upstream is
	// failing. Zero never probes; set MaxFails to zero with it, or an upstream
	// marked down stays down until every other one is down too.
	HealthCheck time.Duration
	// Probed, if set, is called after each health probe with its outcome.
	Probed func(err error)
}

// Upstream is one upstream server. A failed query or probe triggers probing,
// a query for ". IN NS" every HealthCheck, over the pool's own connections,
// until one succeeds. Probing is never a fresh handshake per probe unless the
// pool holds no connection.
type Upstream struct {
	cfg  Config
	pool *dot.Pool

	fails   atomic.Uint32 // consecutive failures
	trigger chan struct{} // buffered, capacity 1: asks the prober to start
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

// New returns an upstream; Start starts it.
func New(cfg Config) *Upstream {
	return &Upstream{cfg: cfg, pool: dot.New(cfg.Pool), trigger: make(chan struct{}, 1), stop: make(chan struct{})}
}

// Name returns the upstream as configured.
func (u *Upstream) Name() string { return u.cfg.Name }

// Config returns the upstream's configuration.
func (u *Upstream) Config() Config { return u.cfg }

// Start warms the pool and starts the prober, if HealthCheck is set.
func (u *Upstream) Start() {
	u.pool.Start()
	if u.cfg.HealthCheck > 0 {
		u.wg.Add(1)
		go u.prober()
	}
}

// Stop closes the pool, which ends a probe in flight at once, and stops the
// prober. It is safe to call more than once.
func (u *Upstream) Stop() {
	u.once.Do(func() { close(u.stop) })
	u.pool.Close()
	u.wg.Wait()
}

// Down reports whether the upstream has failed MaxFails times in a row.
func (u *Upstream) Down() bool {
	return u.cfg.MaxFails > 0 && u.fails.Load() >= u.cfg.MaxFails
}

// Exchange sends q over the upstream's pool and records the outcome.
func (u *Upstream) Exchange(ctx context.Context, q *dot.Query) (*dns.Msg, error) {
	a, err := u.pool.Exchange(ctx, q)
	u.record(err)
	return a, err
}

func (u *Upstream) record(err error) {
	if err == nil {
		if u.fails.Load() != 0 {
			u.fails.Store(0)
		}
		return
	}
	u.fails.Add(1)
	select {
	case u.trigger <- struct{}{}:
	default: // already triggered
	}
}

// prober waits for a failure, then probes until a probe succeeds.
func (u *Upstream) prober() {
	defer u.wg.Done()
	for {
		select {
		case <-u.stop:
			return
		case <-u.trigger:
		}
		t := time.NewTicker(u.cfg.HealthCheck)
		for u.fails.Load() > 0 {
			select {
			case <-u.stop:
				t.Stop()
				return
			case <-t.C:
				u.Probe()
			}
		}
		t.Stop()
	}
}

// Probe sends one health-check query and records its outcome.
func (u *Upstream) Probe() error {
	m := new(dns.Msg)
	m.SetQuestion(".", dns.TypeNS)
	q, err := dot.NewQuery(m)
	if err != nil {
		return err
	}
	defer q.Release()
	ctx, cancel := context.WithTimeout(context.Background(), cmp.Or(u.cfg.HealthCheck, dot.DefaultTimeout))
	defer cancel()
	_, err = u.pool.Exchange(ctx, q)
	if err == nil {
		u.fails.Store(0)
	} else {
		u.fails.Add(1)
	}
	if u.cfg.Probed != nil {
		u.cfg.Probed(err)
	}
	return err
}
