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
	"slices"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metadata"
	"github.com/coredns/coredns/plugin/metrics"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dot"
	"github.com/dotstub/dotstub/plugin/upstream"
)

const defaultTimeout = 2 * time.Second

// metadataUpstream is the metadata label naming the upstream that answered,
// as forward's forward/upstream does: its address, IP:PORT.
const metadataUpstream = pluginName + "/upstream"

// Errors ServeDNS returns with its SERVFAIL or REFUSED, for the errors plugin.
var (
	ErrNoUpstream    = errors.New("no upstream answered")
	ErrNoHealthy     = errors.New("every upstream is down (failfast_all_unhealthy_upstreams)")
	ErrLimitExceeded = errors.New("too many queries in flight (max_concurrent)")
)

// Dotstub is the plugin: one dotstub stanza of a server block.
type Dotstub struct {
	Next plugin.Handler

	from      string   // zone this stanza answers for
	ignored   []string // zones under from sent to Next instead (except)
	private   bool     // answer private names here (private.go); private_names off, or a FROM within one, clears it
	upstreams []*upstream.Upstream
	series    map[*upstream.Upstream]*series // what each upstream reports in this block
	cfg       *dnsserver.Config              // the block, named in every series (see block)
	keys      []string                       // its keys, for the zones
	policy    *upstream.Policy

	timeout        time.Duration // for one client query, all attempts included; default 2s
	readTimeout    time.Duration // the longest one upstream is waited for; zero: its patience, or all the time left for the last
	attempts       int           // upstreams asked per query at most (max_connect_attempts); default every one
	failfast       bool          // SERVFAIL at once when every upstream is down
	failoverRcodes []int         // answers with these codes are asked of the next upstream too
	nextRcodes     []int         // answers with these codes go to the next dotstub or forward (next)
	nextOnNodata   bool          // so do NOERROR answers with no records (next_on_nodata)
	hedge          hedge
	privacy        dot.Privacy // padding and client subnet

	maxConcurrent int64 // queries in flight before REFUSED; zero is no limit
	concurrent    atomic.Int64

	opts options // what the stanza says of its upstreams, read before they are built (setup.go)
}

// New returns a Dotstub with every default and no upstream. The pool's own
// defaults (connections, queries per connection, expire) are package dot's.
func New() *Dotstub {
	return &Dotstub{
		from:     ".",
		private:  true,
		policy:   new(upstream.Policy), // fastest
		timeout:  defaultTimeout,
		attempts: maxUpstreams,
		privacy:  dot.Privacy{PadBlock: dot.DefaultPadBlock},
		opts:     options{maxFails: upstream.DefaultMaxFails, healthCheck: upstream.DefaultHealthCheck},
	}
}

// Name implements plugin.Handler.
func (d *Dotstub) Name() string { return pluginName }

// OnStartup starts the upstreams: their pools dial in the background.
func (d *Dotstub) OnStartup() error {
	b := blockOf(d.cfg, d.keys)
	for _, u := range d.upstreams {
		d.series[u].start(b)
		u.Start()
	}
	liveUpstreams.add(d)
	return nil
}

// OnShutdown stops the upstreams and returns when their connections and
// goroutines are gone.
func (d *Dotstub) OnShutdown() error {
	for _, u := range d.upstreams { // first, so that no probe or query reports on them after
		u.Stop()
	}
	liveUpstreams.remove(d)
	return nil
}

// Ready implements ready.Readiness: ready once some upstream has passed every
// check of a handshake (chain, name, pins), so that a pod whose upstreams
// all fail validation never takes traffic. It stays ready after: connections
// that close when idle or upstreams that fail later are what failover and
// health checks are for, and a whole fleet turning unready at once would
// only move the outage.
func (d *Dotstub) Ready() bool {
	for _, u := range d.upstreams {
		if u.Verified() {
			return true
		}
	}
	return false
}

// ServeDNS implements plugin.Handler.
//
// The path of a query to its upstream is kept shallow on purpose: CoreDNS
// serves each UDP query on a goroutine of its own, whose stack starts small
// (2 or 4 KiB) and is copied whole each time it must grow. Work that most
// queries skip (names for the next plugin, private names, the metadata
// plugin) lives in functions of its own, off that path, and so do their
// locals. See docs/performance.md.
func (d *Dotstub) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	switch d.route(r) {
	case toNext:
		return plugin.NextOrFailure(d.Name(), d.Next, ctx, w, r)
	case toPrivate:
		return d.servePrivate(ctx, w, r)
	}
	if d.maxConcurrent > 0 {
		n := d.concurrent.Add(1)
		defer d.concurrent.Add(-1)
		if n > d.maxConcurrent {
			maxConcurrentRejects.Inc()
			return dns.RcodeRefused, ErrLimitExceeded
		}
	}
	return d.serveUpstream(ctx, w, r)
}

// Where a query is answered: see route.
const (
	toUpstream = iota
	toNext
	toPrivate
)

// route says where r is answered: by the next plugin (a name outside from, or
// under except), here (a private name, see private.go), or upstream.
func (d *Dotstub) route(r *dns.Msg) int {
	if (d.from != "." || len(d.ignored) > 0) && !d.match(request.Request{Req: r}) { // "." with no except takes every name
		return toNext
	}
	if d.private && len(r.Question) > 0 && privateZone(r.Question[0].Name) != "" { // it folds case itself
		return toPrivate
	}
	return toUpstream
}

// servePrivate answers r, a query for a private name.
func (d *Dotstub) servePrivate(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	state := request.Request{W: w, Req: r}
	zone := privateZone(state.Name())
	privateAnswers.WithLabelValues(metrics.WithServer(ctx), zone).Inc()
	w.WriteMsg(privateAnswer(state, zone))
	return dns.RcodeSuccess, nil
}

// serveUpstream answers r from the upstreams.
func (d *Dotstub) serveUpstream(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	var buf [maxUpstreams]*upstream.Upstream
	tries := d.candidates(buf[:0])
	var failed failures
	if len(tries) == 0 {
		return servfail(w, r, &failed, ErrNoHealthy)
	}
	tries = tries[:min(len(tries), d.attempts)]
	q, err := dot.NewQuery(r, d.privacy)
	if err != nil {
		return dns.RcodeFormatError, err
	}
	defer q.Release()

	// The query's deadline goes down as a time, not a context: the pool waits
	// on a timer it keeps, sparing each query a context's five allocations.
	deadline := time.Now().Add(d.timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	a, u, err := d.resolve(ctx, deadline, q, tries, &failed)
	if metadata.ValueFuncs(ctx) != nil { // the metadata plugin is on
		d.setMetadata(ctx, u)
	}
	if a == nil {
		return servfail(w, r, &failed, err)
	}
	if d.passOn(a) { // with the client's context: the next stanza has its own timeout
		return plugin.NextOrFailure(d.Name(), d.Next, ctx, w, r)
	}
	w.WriteMsg(a)
	return dns.RcodeSuccess, nil
}

// setMetadata names u, the upstream that answered or was asked last, for the
// metadata plugin.
func (d *Dotstub) setMetadata(ctx context.Context, u *upstream.Upstream) {
	metadata.SetValueFunc(ctx, metadataUpstream, d.series[u].address)
}

// passOn reports whether a goes to the next plugin instead of the client, as
// next and next_on_nodata say: as with forward, only when that plugin is
// another dotstub or forward stanza.
func (d *Dotstub) passOn(a *dns.Msg) bool {
	if !slices.Contains(d.nextRcodes, a.Rcode) && !(d.nextOnNodata && a.Rcode == dns.RcodeSuccess && len(a.Answer) == 0) {
		return false
	}
	if _, ok := d.Next.(*Dotstub); ok {
		return true
	}
	return d.Next != nil && d.Next.Name() == "forward"
}

// candidates appends to dst the upstreams to try, in policy order: the
// healthy ones; when every one is down, all of them anyway (the health record
// may be stale), or none with failfast_all_unhealthy_upstreams.
func (d *Dotstub) candidates(dst []*upstream.Upstream) []*upstream.Upstream {
	list := d.policy.List(dst, d.upstreams)
	healthy := list[:0]
	for _, u := range list {
		if !u.Down() {
			healthy = append(healthy, u)
		}
	}
	if len(healthy) > 0 || d.failfast {
		return healthy
	}
	return d.policy.List(dst[:0], d.upstreams)
}

// resolve asks the upstreams in turn until one answers, ctx is done or the
// deadline passes. Each but the last gets its patience (see
// upstream.Patience), and never more than an equal share of the time left,
// so that one that hangs does not take it all.
// An answer whose RCODE is listed by failover is kept, and returned only when
// no later upstream does better. It returns the upstream whose answer it
// returns, or the last one asked, and adds to failed why each one failed.
func (d *Dotstub) resolve(ctx context.Context, deadline time.Time, q *dot.Query, tries []*upstream.Upstream, failed *failures) (*dns.Msg, *upstream.Upstream, error) {
	var (
		kept  *dns.Msg // an answer with a failover RCODE
		keptU *upstream.Upstream
		u     *upstream.Upstream
	)
	err := ErrNoUpstream
	for i := 0; i < len(tries); i++ {
		left := len(tries) - i
		u = tries[i]
		var a *dns.Msg
		var uerr error
		if d.hedge.on() && left > 1 {
			var second bool
			a, u, second, uerr = d.hedged(ctx, deadline, q, u, tries[i+1], left)
			if second {
				i++
			}
		} else {
			a, uerr = d.attempt(ctx, deadline, u, q, left)
		}
		if uerr == nil && i < len(tries)-1 && slices.Contains(d.failoverRcodes, a.Rcode) {
			kept, keptU = a, u
			d.series[u].failover()
			continue
		}
		if uerr == nil {
			return a, u, nil
		}
		err = uerr
		failed.add(uerr)
		if ctx.Err() != nil || !time.Now().Before(deadline) {
			break
		}
		if i < len(tries)-1 {
			d.series[u].failover()
		}
	}
	if kept != nil {
		return kept, keptU, nil
	}
	return nil, u, err
}

// attempt asks u, for its patience or an equal share of the time left until
// deadline when left upstreams remain to be tried, whichever is shorter, and
// never longer than read_timeout.
func (d *Dotstub) attempt(ctx context.Context, deadline time.Time, u *upstream.Upstream, q *dot.Query, left int) (*dns.Msg, error) {
	start := time.Now()
	short := false // the budget is less than the upstream's patience
	if left > 1 || d.readTimeout > 0 {
		budget := deadline.Sub(start)
		if left > 1 {
			budget = min(budget/time.Duration(left), u.Patience())
		}
		if d.readTimeout > 0 {
			budget = min(budget, d.readTimeout)
		}
		short = budget < u.Patience()
		deadline = start.Add(budget)
	}
	a, err := u.Exchange(ctx, q, deadline, short)
	switch {
	case err == nil:
		d.series[u].answered(a.Rcode, time.Since(start))
	case !errors.Is(err, context.Canceled): // cancelled: another upstream answered first
		d.series[u].failed(err)
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
