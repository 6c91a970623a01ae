// Package dotstub is a CoreDNS plugin that forwards queries to upstream
// resolvers over DNS-over-TLS only (RFC 7858, RFC 8310).
//
// Every upstream is authenticated: its certificate chain and name are
// verified, and its public key can be pinned (RFC 7469 SPKI pins, with backup
// pins). A server that fails validation never receives a byte of a query. Each
// upstream has a pool of long-lived connections that carry many queries at
// once, answered in any order; upstreams that fail are probed until they
// recover while the others take the queries.
package dotstub

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metrics"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dot"
	"github.com/dotstub/dotstub/plugin/upstream"
)

const defaultTimeout = 2 * time.Second

// Errors ServeDNS returns with its SERVFAIL or REFUSED, for the errors plugin.
var (
	ErrNoUpstream    = errors.New("no upstream answered")
	ErrLimitExceeded = errors.New("too many queries in flight (max_concurrent)")
)

// Dotstub is the plugin: one dotstub stanza of a server block.
type Dotstub struct {
	Next plugin.Handler

	from      string   // zone this stanza answers for
	ignored   []string // zones under from sent to Next instead (except)
	upstreams []*upstream.Upstream
	policy    upstream.Policy

	timeout       time.Duration // for one client query, all attempts included; default 2s
	maxConcurrent int64         // queries in flight before REFUSED; zero is no limit
	concurrent    atomic.Int64
}

// New returns a Dotstub with every default and no upstream.
func New() *Dotstub {
	return &Dotstub{from: ".", policy: upstream.Random{}, timeout: defaultTimeout}
}

// Name implements plugin.Handler.
func (d *Dotstub) Name() string { return pluginName }

// OnStartup starts the upstreams: their pools dial in the background.
func (d *Dotstub) OnStartup() error {
	for _, u := range d.upstreams {
		u.Start()
	}
	return nil
}

// OnShutdown stops the upstreams and returns when their connections and
// goroutines are gone.
func (d *Dotstub) OnShutdown() error {
	for _, u := range d.upstreams {
		u.Stop()
	}
	return nil
}

// ServeDNS implements plugin.Handler.
func (d *Dotstub) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	state := request.Request{W: w, Req: r}
	if !d.match(state) {
		return plugin.NextOrFailure(d.Name(), d.Next, ctx, w, r)
	}
	if d.maxConcurrent > 0 {
		n := d.concurrent.Add(1)
		defer d.concurrent.Add(-1)
		if n > d.maxConcurrent {
			maxConcurrentRejects.Inc()
			return dns.RcodeRefused, ErrLimitExceeded
		}
	}
	q, err := dot.NewQuery(r)
	if err != nil {
		return dns.RcodeFormatError, err
	}
	defer q.Release()

	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	// Healthy upstreams, in policy order; when every one is down, all of
	// them anyway: the health record may be stale.
	list := d.policy.List(d.upstreams)
	var healthy [maxUpstreams]*upstream.Upstream
	tries := healthy[:0]
	for _, u := range list {
		if !u.Down() {
			tries = append(tries, u)
		}
	}
	if len(tries) == 0 {
		tries = list
	}
	left := len(tries)
	err = ErrNoUpstream
	for _, u := range tries {
		a, uerr := d.exchange(ctx, u, q, left)
		left--
		if uerr != nil {
			err = uerr
			upstreamErrors.WithLabelValues(u.Name(), upstream.Reason(uerr)).Inc()
			if ctx.Err() != nil {
				break
			}
			continue
		}
		w.WriteMsg(a)
		return dns.RcodeSuccess, nil
	}
	return dns.RcodeServerFailure, err
}

// exchange asks u, giving it an equal share of the time left when left
// upstreams remain to be tried, so that one that hangs does not take it all.
func (d *Dotstub) exchange(ctx context.Context, u *upstream.Upstream, q *dot.Query, left int) (*dns.Msg, error) {
	start := time.Now()
	if left > 1 {
		deadline, _ := ctx.Deadline()
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, start.Add(deadline.Sub(start)/time.Duration(left)))
		defer cancel()
	}
	a, err := u.Exchange(ctx, q)
	if err == nil {
		requestDuration.WithLabelValues(metrics.WithServer(ctx), u.Name(), dns.RcodeToString[a.Rcode]).Observe(time.Since(start).Seconds())
	}
	return a, err
}

func (d *Dotstub) match(state request.Request) bool {
	name := state.Name()
	if !plugin.Name(d.from).Matches(name) {
		return false
	}
	for _, ignore := range d.ignored {
		if plugin.Name(ignore).Matches(name) {
			return false
		}
	}
	return true
}
