// Package upstream is one DNS-over-TLS upstream as the plugin sees it: an
// address, a pool of verified connections, and a health record, plus the
// policies that order several upstreams for a query.
package upstream

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dotstub/dotstub/plugin/dot"
	"github.com/dotstub/dotstub/plugin/pin"

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
	// ProbeName is the name a probe asks for, type NS; default the root.
	ProbeName string
	// Privacy is how probes are padded and stripped, as the queries are.
	Privacy dot.Privacy
	// ProbeNoRec clears the RD bit of probes (forward's health_check
	// no_rec), for upstreams that answer probes for their own zones only.
	ProbeNoRec bool
	// Pins are the pins Pool.TLS enforces (or reports on), for tools that
	// check them against a live server; the upstream itself does not read
	// them.
	Pins pin.Set
	// Probed, if set, is called after each health probe with its outcome.
	Probed func(err error)
	// Changed, if set, is called when the upstream is marked down, with the
	// failure that did it, and when it is up again, with nil: in the order
	// the changes happen, one call at a time.
	Changed func(down bool, cause error)
}

// Upstream is one upstream server. A failed query or probe triggers probing,
// a query for ProbeName IN NS every HealthCheck, over the pool's own
// connections, until one succeeds. Probing is never a fresh handshake per
// probe unless the pool holds no connection, and never a handshake at all
// while the pool backs off after a failed one.
//
// A query fails when it brings no answer: an error, or no answer within the
// upstream's patience (see Patience). A query that its caller stops waiting
// for sooner, because another upstream answered it first, says nothing about
// this one.
type Upstream struct {
	cfg  Config
	pool *dot.Pool
	lat  latency

	verified atomic.Bool   // a handshake has succeeded since New
	fails    atomic.Uint32 // consecutive failures; written under mu when it crosses MaxFails
	mu       sync.Mutex    // orders the changes of health and their reports (Changed)
	trigger  chan struct{} // buffered, capacity 1: asks the prober to start
	stop     chan struct{}
	started  sync.Once
	stopped  sync.Once
	wg       sync.WaitGroup
}

// New returns an upstream; Start starts it.
func New(cfg Config) *Upstream {
	if cfg.ProbeName == "" {
		cfg.ProbeName = "."
	}
	u := &Upstream{cfg: cfg, trigger: make(chan struct{}, 1), stop: make(chan struct{})}
	u.pool = dot.New(u.poolConfig())
	return u
}

// poolConfig returns the configuration of the upstream's pool: cfg.Pool, with
// the failures to authenticate told apart (IsAuth, unless set) and every
// verified handshake recorded (see Verified) before cfg.Pool's own Dialed
// hears of it.
func (u *Upstream) poolConfig() dot.Config {
	pc := u.cfg.Pool
	if pc.IsAuth == nil {
		pc.IsAuth = IsAuth
	}
	dialed := pc.Events.Dialed
	pc.Events.Dialed = func(err error, st *tls.ConnectionState) {
		if err == nil {
			u.verified.Store(true)
		}
		if dialed != nil {
			dialed(err, st)
		}
	}
	return pc
}

// Verified reports whether a connection to the upstream has passed every
// check (chain, name, pins) since it was created.
func (u *Upstream) Verified() bool { return u.verified.Load() }

// Stats returns the figures of the upstream's pool.
func (u *Upstream) Stats() dot.Stats { return u.pool.Stats() }

// Name returns the upstream as configured.
func (u *Upstream) Name() string { return u.cfg.Name }

// Config returns the upstream's configuration.
func (u *Upstream) Config() Config { return u.cfg }

// Start warms the pool and starts the prober, if HealthCheck is set. Calling
// it again does nothing.
func (u *Upstream) Start() {
	u.started.Do(func() {
		u.pool.Start()
		if u.cfg.HealthCheck > 0 {
			u.wg.Add(1)
			go u.prober()
		}
	})
}

// Stop closes the pool, which ends a probe in flight at once (with no
// verdict on the upstream), and stops the prober. It is safe to call more
// than once.
func (u *Upstream) Stop() {
	u.stopped.Do(func() { close(u.stop) })
	u.pool.Close()
	u.wg.Wait()
}

// Down reports whether the upstream has failed MaxFails times in a row.
func (u *Upstream) Down() bool {
	return u.cfg.MaxFails > 0 && u.fails.Load() >= u.cfg.MaxFails
}

// Exchange sends q over the upstream's pool and records the outcome. It
// gives up when ctx is done or the deadline passes (see dot.Pool.Exchange).
// Short says that the deadline gives the upstream less than its patience (a
// share of the query's time, or read_timeout): running out of it then says
// nothing against the upstream.
func (u *Upstream) Exchange(ctx context.Context, q *dot.Query, deadline time.Time, short bool) (*dns.Msg, error) {
	start := time.Now()
	a, err := u.pool.Exchange(ctx, q, deadline)
	took := time.Since(start)
	switch {
	case err == nil:
		u.lat.add(took)
		u.ok()
	case errors.Is(err, dot.ErrClosed):
		// Shut down: no verdict.
	case errors.Is(err, context.Canceled) && took < u.Patience(),
		errors.Is(err, context.DeadlineExceeded) && short:
		// Given up by the caller before the upstream's patience ran out
		// (another upstream answered, or the query's share of the
		// deadline was shorter): no verdict.
	default:
		// A failure weighs at least twice the patience in the smoothed
		// answer time, so that an upstream that fails fast does not look
		// fast.
		u.lat.add(max(took, 2*u.Patience()))
		u.fail(err)
	}
	return a, err
}

// Patience is how long a query should wait for this upstream before another
// is tried: its smoothed answer time plus four times their mean deviation, as
// TCP's retransmission timer, and at least 250ms; 500ms until it has answered
// or failed once.
func (u *Upstream) Patience() time.Duration {
	if p := u.lat.patience.Load(); p > 0 {
		return time.Duration(p)
	}
	return initialPatience
}

// Smoothed returns the upstream's smoothed answer time; zero until it has
// answered or failed once.
func (u *Upstream) Smoothed() time.Duration { return time.Duration(u.lat.srtt.Load()) }

// P95 returns the 95th percentile of the upstream's recent answer times; zero
// until it has answered 128 queries.
func (u *Upstream) P95() time.Duration { return time.Duration(u.lat.p95.Load()) }

func (u *Upstream) ok() {
	if u.fails.Load() == 0 { // the common case: no write to share between cores
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if n := u.fails.Swap(0); u.cfg.MaxFails > 0 && n >= u.cfg.MaxFails && u.cfg.Changed != nil {
		u.cfg.Changed(false, nil)
	}
}

func (u *Upstream) fail(err error) {
	u.mu.Lock()
	if n := u.fails.Add(1); n == u.cfg.MaxFails && u.cfg.Changed != nil {
		u.cfg.Changed(true, err)
	}
	u.mu.Unlock()
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

// Probe sends one health-check query and records its outcome. It dials at
// once if need be, even while the pool backs off after a network failure, so
// that an upstream that comes back is found by the next probe. An upstream
// that was down and answers the probe starts afresh: its answer times from
// before are forgotten.
func (u *Upstream) Probe() error {
	m := new(dns.Msg)
	m.SetQuestion(u.cfg.ProbeName, dns.TypeNS)
	m.RecursionDesired = !u.cfg.ProbeNoRec
	q, err := dot.NewQuery(m, u.cfg.Privacy)
	if err != nil {
		return err
	}
	defer q.Release()
	ctx, cancel := context.WithTimeout(context.Background(), cmp.Or(u.cfg.HealthCheck, dot.DefaultTimeout))
	defer cancel()
	u.pool.Retry()
	start := time.Now()
	_, err = u.pool.Exchange(ctx, q, time.Time{}) // ctx's deadline
	switch {
	case errors.Is(err, dot.ErrClosed):
		return err // shut down: no verdict, and nothing to report
	case err == nil:
		if u.Down() {
			u.lat.reset(time.Since(start))
		}
		u.ok()
	default:
		u.fail(err)
	}
	if u.cfg.Probed != nil {
		u.cfg.Probed(err)
	}
	return err
}
