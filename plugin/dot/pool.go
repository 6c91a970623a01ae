// Package dot keeps long-lived, pipelined DNS-over-TLS connections to one
// upstream (RFC 7858, RFC 7766) and exchanges queries over them.
//
// A Pool carries many queries in flight on each connection and matches the
// answers by ID, in any order. It opens another connection only when every open
// one is busy, up to MaxConns; a query that finds the pool full waits within
// its deadline. Dials are single-flight, so a burst of queries never opens a
// storm of handshakes, and back off after a failure, so a server that fails
// validation is not hammered (dial.go). A TLS session cache makes reconnects
// cheap.
//
// Faults cost the queries they hit and no more. A connection (conn.go) checks
// every answer against the question of the query it answers (route.go); a bad
// one sends that query again, and the connection stays up while its framing
// holds. A
// connection the upstream closes takes its queries with it; Exchange sends
// them again on another one, within their deadline. Upstreams that mishandle
// pipelining, or allow a fixed number of queries per connection, are noticed
// and served the way they can be (pipelining.go).
package dot

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Defaults for the zero fields of Config.
const (
	DefaultMaxConns    = 4
	DefaultMaxInflight = 256
	DefaultTimeout     = 2 * time.Second
	DefaultExpire      = 10 * time.Second

	// MaxInflight is the most queries in flight one connection can carry:
	// half the IDs, so that IDs given up on can stay taken until their late
	// answers come.
	MaxInflight = 1 << 15

	// maxBadAnswers is how many bad answers one query may meet before
	// Exchange gives up on it: the upstream is then answering garbage, and
	// the caller is better served by an error now than by the deadline.
	maxBadAnswers = 3
	// maxBarren is how many times a query is sent again after connections
	// that died without a single answer: a connection that carried answers
	// died of a limit or a restart, and its queries are sent again until
	// their deadline; one that never answered may be all the upstream does.
	maxBarren = 2

	maxStall = 500 * time.Millisecond
)

// Config configures a Pool.
type Config struct {
	Addr string      // upstream host:port
	TLS  *tls.Config // used as is; must verify the server (see package pin)

	// MaxConns is the most connections the pool holds. Default
	// DefaultMaxConns, and 32 while the upstream is sent one query per
	// connection (see pipelining.go).
	MaxConns    int
	MaxInflight int           // queries in flight per connection; default DefaultMaxInflight, at most MaxInflight
	Timeout     time.Duration // dial and handshake, and an Exchange whose context has no deadline; default DefaultTimeout
	Expire      time.Duration // close a connection idle this long; default DefaultExpire, negative never

	// MaxAge retires a connection this long after its handshake: it takes no
	// new query and closes once its queries are answered. Zero never.
	MaxAge time.Duration
	// MaxIdleConns is the most connections kept open with no query in
	// flight; the janitor closes the others. Zero is no limit.
	MaxIdleConns int
	// LocalAddr is the source address of every connection; nil lets the
	// system choose.
	LocalAddr net.IP

	// IsAuth reports whether a failed dial failed to authenticate the
	// server (its chain, name or pin) rather than to reach it. Such failures
	// back off up to a minute instead of 5s: a server that presents the
	// wrong key will not present the right one a second later.
	IsAuth func(error) bool

	Events Events
}

// Events receives what happens to the pool's connections. Nil funcs are
// skipped. They are called without locks held, from the pool's goroutines or
// its callers'.
type Events struct {
	// Dialed reports the outcome of a dial and TLS handshake, with the
	// connection's state when it succeeded.
	Dialed func(err error, st *tls.ConnectionState)
	// Closed reports that a connection Dialed reported as open has closed,
	// and how many answers it carried.
	Closed func(err error, answered int)
	// Resent reports a query sent again after its connection died or
	// brought a bad answer.
	Resent func()
	// Bad reports an answer dropped, and why.
	Bad func(reason BadReason)
	// Untrusted reports a connection closed because most of its answers
	// were bad.
	Untrusted func()
	// Serial reports that the upstream seems not to handle pipelined
	// queries, and why (one of the Why constants), so the pool now sends one
	// query per connection; or (false) that it tries pipelining again.
	Serial func(on bool, why string)
	// Limit reports that the upstream closes its connections after n
	// queries, so that the pool now writes at most n on each.
	Limit func(n int)
	// Spread reports that the upstream works on each connection's queries
	// one at a time, so that the pool now spreads its queries over up to
	// conns connections (see pipelining.go). It comes again only after the
	// pool had gone back to filling one connection before the next.
	Spread func(conns int)
}

// ErrClosed is the error of an Exchange on a closed pool.
var ErrClosed = errors.New("dot: pool closed")

// ErrBadAnswer is the error of an exchange whose answers, however often the
// query was sent again, were all bad: malformed, or for another ID or
// question (see BadReason).
var ErrBadAnswer = errors.New("dot: bad answer")

// Pool is a set of connections to one upstream. Its methods are safe for
// concurrent use.
//
// A query finds its connection without the pool's lock: it reads the list of
// open connections, replaced whole whenever it changes, and enters itself
// under the chosen connection's lock. The pool's lock is taken only to dial,
// to wait for a slot, and when a connection opens or closes.
type Pool struct {
	cfg    Config
	ctx    context.Context // cancelled by Close, to abort a dial
	cancel context.CancelFunc
	wg     sync.WaitGroup // dials, readers, writers and the janitor

	// dialTCP opens the connection TLS runs over: TCP to cfg.Addr, or in
	// tests one end of a net.Pipe.
	dialTCP func(ctx context.Context, network, addr string) (net.Conn, error)

	conns           atomic.Pointer[[]*conn] // open connections, oldest first
	waiting         atomic.Int32            // queries waiting for a slot
	dialing         atomic.Bool             // a dial is under way; written under mu
	serialUntil     atomic.Int64            // unix nanoseconds: one query per connection until then; written under mu
	spreadUntil     atomic.Int64            // unix nanoseconds: spread queries over connections until then
	concurrentUntil atomic.Int64            // unix nanoseconds: do not spread until then
	limit           atomic.Int32            // queries per connection the upstream allows, as learned; zero for none

	mu       sync.Mutex // guards the fields below and writes of conns; taken before any conn's
	dialErr  error      // the last dial's failure; nil after a success
	retryAt  time.Time  // no dial before this, after a failure
	backoff  time.Duration
	wake     chan struct{} // closed to wake queries waiting for a slot; nil if none wait
	started  bool
	closed   bool
	strikes  int               // connections in a row that died of pipelining
	closedAt [limitSamples]int // answers of the last connections the upstream closed under queries
}

// New returns a pool for cfg. It dials nothing until Start or Exchange.
func New(cfg Config) *Pool {
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = DefaultMaxInflight
	}
	cfg.MaxInflight = min(cfg.MaxInflight, MaxInflight)
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Expire == 0 {
		cfg.Expire = DefaultExpire
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &net.Dialer{KeepAlive: 15 * time.Second}
	if cfg.LocalAddr != nil {
		d.LocalAddr = &net.TCPAddr{IP: cfg.LocalAddr}
	}
	p := &Pool{cfg: cfg, ctx: ctx, cancel: cancel, dialTCP: d.DialContext}
	p.conns.Store(new([]*conn))
	return p
}

// Start opens the first connection in the background, so the first query does
// not wait for a handshake, and starts closing idle connections. Calling it
// again does nothing.
func (p *Pool) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started || p.closed {
		return
	}
	p.started = true
	if len(*p.conns.Load()) == 0 && !p.dialing.Load() {
		p.startDialLocked()
	}
	if p.cfg.Expire > 0 || p.cfg.MaxAge > 0 || p.cfg.MaxIdleConns > 0 {
		p.wg.Add(1)
		go p.janitor()
	}
}

// Close closes every connection, fails the queries in flight with ErrClosed,
// and returns once every goroutine of the pool has ended. Calling it again does
// nothing.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	conns := *p.conns.Load()
	p.conns.Store(new([]*conn))
	p.wakeLocked()
	p.mu.Unlock()

	p.cancel()
	for _, c := range conns {
		c.fail(ErrClosed)
	}
	p.wg.Wait()
}

// Stats is a snapshot of a pool.
type Stats struct {
	Conns      int // open connections
	Inflight   int // queries in flight
	QueryLimit int // queries per connection the upstream allows, as learned; zero if none
}

// Stats returns the pool's current figures.
func (p *Pool) Stats() Stats {
	conns := *p.conns.Load()
	s := Stats{Conns: len(conns), QueryLimit: int(p.limit.Load())}
	for _, c := range conns {
		s.Inflight += int(c.load.Load())
	}
	return s
}

// Exchange sends q and returns the answer with the ID of q's message. The
// answer is checked: one that does not unpack or does not answer q's question
// is never returned. A query that meets a bad answer is sent again at once,
// on a fresh ID, up to maxBadAnswers times. A query whose connection dies is
// sent again on a connection opened after the failure, until the deadline:
// an upstream that closes a connection with queries unread resets it, and
// the reset can also discard answers already sent.
//
// Exchange gives up when ctx is done or the deadline passes, whichever comes
// first (context.DeadlineExceeded). A zero deadline is ctx's, or else the
// pool's Timeout from now. The deadline is a time rather than a context of
// its own so that a query waits on a timer kept with its call: a context
// with a deadline costs five allocations.
func (p *Pool) Exchange(ctx context.Context, q *Query, deadline time.Time) (*dns.Msg, error) {
	if deadline.IsZero() {
		var ok bool
		if deadline, ok = ctx.Deadline(); !ok {
			deadline = time.Now().Add(p.cfg.Timeout)
		}
	}
	left := time.Until(deadline)
	if left <= 0 { // never send a query nobody waits for
		return nil, context.DeadlineExceeded
	}
	cl := callPool.Get().(*call)
	cl.q, cl.bad = q, 0
	cl.wbuf = append(cl.wbuf[:0], q.frame...)
	cl.timer.Reset(left)
	defer func() { // every path below leaves cl out of any table with ch drained
		if !cl.timer.Stop() {
			select { // a fire not received: only with asynctimerchan=1 (go.mod before 1.23)
			case <-cl.timer.C:
			default:
			}
		}
		cl.q = nil
		callPool.Put(cl)
	}()

	var (
		failedAt time.Time // when the last try lost its connection
		barren   int
	)
	for {
		c, err := p.reserve(ctx, cl, failedAt)
		if err != nil {
			return nil, err
		}
		a, err := c.roundTrip(ctx, cl, p.stallAfter(), p.cfg.MaxInflight/2)
		switch {
		case err == nil:
			return a, nil
		case ctx.Err() != nil, !time.Now().Before(deadline):
			return nil, err
		case errors.Is(err, ErrBadAnswer):
			if cl.bad++; cl.bad > maxBadAnswers {
				return nil, err
			}
			failedAt = time.Time{} // any connection: this one is sound
		case errors.Is(err, errConnLost):
			if !c.answeredAny() {
				if barren++; barren > maxBarren {
					return nil, err
				}
			}
			failedAt = time.Now()
		default:
			return nil, err
		}
		if cl.keepalive { // the frame as the query has it, without the question for the next connection's server
			cl.wbuf = append(cl.wbuf[:0], q.frame...)
		}
		if p.cfg.Events.Resent != nil {
			p.cfg.Events.Resent()
		}
	}
}

// reserve finds a connection with a free slot, or waits for one, and enters
// cl in its call table under a fresh ID. A query being resent asks for a
// connection born after notBefore, the time its last try lost its
// connection: that one may have died of a per-connection query limit that
// its peers are close to as well. When the pool is full of older ones, any
// will do.
func (p *Pool) reserve(ctx context.Context, cl *call, notBefore time.Time) (*conn, error) {
	if c, more := p.pick(cl, notBefore); c != nil {
		if more {
			p.dialSoon()
		}
		return c, nil
	}
	return p.await(ctx, cl, notBefore)
}

// await is reserve when no connection has a free slot: it dials or waits for
// one, under the pool's lock.
func (p *Pool) await(ctx context.Context, cl *call, notBefore time.Time) (*conn, error) {
	p.waiting.Add(1) // before looking again: a slot freed after this look wakes us
	defer p.waiting.Add(-1)
	p.mu.Lock()
	for {
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		if err := ctx.Err(); err != nil {
			p.mu.Unlock()
			return nil, err
		}
		select { // the deadline passed while this waiter was being woken
		case <-cl.timer.C:
			p.mu.Unlock()
			return nil, context.DeadlineExceeded
		default:
		}
		if c, more := p.pick(cl, notBefore); c != nil {
			if more && p.canDialLocked() {
				p.startDialLocked()
			}
			p.mu.Unlock()
			return c, nil
		}
		n := len(*p.conns.Load())
		switch {
		case p.dialing.Load():
		case n < p.maxConns() && !time.Now().Before(p.retryAt):
			p.startDialLocked()
		case n < p.maxConns() && n == 0: // backing off, nothing open: fail now
			err := p.dialErr
			p.mu.Unlock()
			return nil, err
		case !notBefore.IsZero(): // no fresh one to be had for now
			notBefore = time.Time{}
			continue
		}
		if p.wake == nil {
			p.wake = make(chan struct{})
		}
		wake := p.wake
		p.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-cl.timer.C:
			return nil, context.DeadlineExceeded
		}
		p.mu.Lock()
	}
}

// pick enters cl on a connection born after notBefore with a free slot: the
// oldest one that is not busy, or else the least loaded. Filling the oldest
// first keeps the number of connections low when the load is light, so the
// others expire; spreading a heavy load lets an upstream that serves each
// connection on one thread (as many do) use several. When every connection
// is busy, or the one picked nears the upstream's limit of queries per
// connection, it asks for another for the next queries (more). It returns nil
// if no connection has a slot.
func (p *Pool) pick(cl *call, notBefore time.Time) (c *conn, more bool) {
	conns := *p.conns.Load()
	maxIn, limit, spread := p.maxInflight(), int(p.limit.Load()), p.spreadAt()
	for pass := 0; pass < 2; pass++ {
		var least *conn
		leastN := maxIn
		for _, c := range conns {
			if !c.usable.Load() || c.born.Before(notBefore) {
				continue
			}
			n := int(c.load.Load())
			if n < spread && pass == 0 {
				if ok, left := c.tryAdd(cl, maxIn, limit); ok {
					return c, left >= 0 && left < max(1, limit/4)
				}
				continue
			}
			if n < leastN {
				least, leastN = c, n
			}
		}
		if least == nil {
			return nil, false
		}
		if ok, _ := least.tryAdd(cl, maxIn, limit); ok {
			return least, true // busy: another for the next queries
		}
		// Filled or closed since we looked: look once more.
	}
	return nil, false
}

// stallAfter is how long a connection may stay silent with a query
// unanswered before it counts as stalled: half the pool's timeout, so that a
// query with a short deadline of its own does not condemn a healthy one, and
// at most maxStall, so that health probes with their own short deadlines
// still condemn a connection that went silent (a NAT that forgot it, an
// upstream that lost it) instead of probing over it forever.
func (p *Pool) stallAfter() time.Duration { return min(p.cfg.Timeout/2, maxStall) }

// spreadAt is the number of queries in flight that makes a connection busy:
// when every connection is busy, the pool opens another, up to maxConns. A
// connection to an upstream that works on its queries one at a time is busy
// with one.
func (p *Pool) spreadAt() int {
	if p.spreading() {
		return 1
	}
	return max(1, p.maxInflight()/8)
}

// released implements connOwner: it wakes the queries waiting for a slot.
func (p *Pool) released() {
	if p.waiting.Load() > 0 {
		p.mu.Lock()
		p.wakeLocked()
		p.mu.Unlock()
	}
}

// bad implements connOwner.
func (p *Pool) bad(reason BadReason) {
	if p.cfg.Events.Bad != nil {
		p.cfg.Events.Bad(reason)
	}
}

// connClosed implements connOwner: it takes c out of the pool and judges how it
// died.
func (p *Pool) connClosed(c *conn, cause error, st connStats) {
	p.mu.Lock()
	if conns := *p.conns.Load(); slices.Contains(conns, c) {
		p.conns.Store(new(slices.DeleteFunc(slices.Clone(conns), func(x *conn) bool { return x == c })))
	}
	changed, serial := p.judgeCloseLocked(st, cause)
	limit := p.learnLimitLocked(st, cause)
	p.wakeLocked()
	p.mu.Unlock()

	ev := p.cfg.Events
	if ev.Closed != nil {
		ev.Closed(cause, st.answered)
	}
	if cause == errUntrustable && ev.Untrusted != nil {
		ev.Untrusted()
	}
	if changed && ev.Serial != nil {
		ev.Serial(serial, WhyCloses)
	}
	if limit > 0 && ev.Limit != nil {
		ev.Limit(limit)
	}
}

// wakeLocked wakes every query waiting for a slot or a dial.
func (p *Pool) wakeLocked() {
	if p.wake != nil {
		close(p.wake)
		p.wake = nil
	}
}

// janitorEvery is how often the janitor looks at the connections: a quarter
// of Expire or MaxAge, whichever is shorter, and DefaultExpire/4 when neither
// is set.
func (p *Pool) janitorEvery() time.Duration {
	every := DefaultExpire
	for _, d := range []time.Duration{p.cfg.Expire, p.cfg.MaxAge} {
		if d > 0 {
			every = min(every, d)
		}
	}
	return max(every/4, 10*time.Millisecond)
}

// janitor closes idle connections until the pool closes.
func (p *Pool) janitor() {
	defer p.wg.Done()
	t := time.NewTicker(p.janitorEvery())
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case now := <-t.C:
			p.expireIdle(now)
		}
	}
}

// expireIdle closes the connections that have had no query in flight since
// Expire before now (or since the idle timeout their server stated), those
// past MaxAge with no query in flight, and the quiet ones (no query for one
// round of the janitor) past MaxIdleConns, keeping the oldest: the pool fills
// the oldest connections first.
func (p *Pool) expireIdle(now time.Time) {
	idle := 0
	for _, c := range *p.conns.Load() {
		switch done, quiet := c.idle(now, p.cfg.Expire, p.cfg.MaxAge, p.janitorEvery()); {
		case done:
			c.fail(errExpired)
		case quiet && p.cfg.MaxIdleConns > 0:
			if idle++; idle > p.cfg.MaxIdleConns {
				c.fail(errExpired)
			}
		}
	}
}
