// Package dot keeps long-lived, pipelined DNS-over-TLS connections to one
// upstream (RFC 7858, RFC 7766) and exchanges queries over them.
//
// A Pool carries many queries in flight on each connection and matches the
// answers by ID, in any order. It opens another connection only when every open
// one holds MaxInflight queries, up to MaxConns; a query that finds the pool
// full waits within its deadline. Dials are single-flight, so a burst of
// queries never opens a storm of handshakes, and back off after a failure, so a
// server that fails validation is not hammered. A TLS session cache makes
// reconnects cheap. A connection that dies takes its queries with it; Exchange
// sends each of them once more on another connection.
package dot

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Defaults for the zero fields of Config.
const (
	DefaultMaxConns    = 4
	DefaultMaxInflight = 256
	DefaultTimeout     = 2 * time.Second
	DefaultExpire      = 10 * time.Second

	minBackoff     = 250 * time.Millisecond
	maxBackoff     = 5 * time.Second
	maxAuthBackoff = time.Minute
	maxResends     = 2
	maxStall       = 500 * time.Millisecond
)

// Config configures a Pool.
type Config struct {
	Addr string      // upstream host:port
	TLS  *tls.Config // used as is; must verify the server (see package pin)

	MaxConns    int           // connections at most; default DefaultMaxConns
	MaxInflight int           // queries in flight per connection; default DefaultMaxInflight
	Timeout     time.Duration // dial and handshake, and an Exchange whose context has no deadline; default DefaultTimeout
	Expire      time.Duration // close a connection idle this long; default DefaultExpire, negative never

	// IsAuth reports whether a failed dial failed to authenticate the
	// server (its chain, name or pin) rather than to reach it. Such failures
	// back off up to a minute instead of 5s: a server that presents the
	// wrong key will not present the right one a second later.
	IsAuth func(error) bool

	Events Events
}

// Events receives what happens to the pool's connections. Nil funcs are
// skipped. They are called without locks held, from the pool's goroutines.
type Events struct {
	// Dialed reports the outcome of a dial and TLS handshake, with the
	// connection's state when it succeeded.
	Dialed func(err error, st *tls.ConnectionState)
	// Closed reports that a connection Dialed reported as open has closed,
	// and how many answers it carried.
	Closed func(err error, answered int)
	// Resent reports a query sent again after its connection died.
	Resent func()
	// Serial reports that the upstream seems not to handle pipelined
	// queries, so the pool now sends one query per connection, or (false)
	// that it tries pipelining again.
	Serial func(on bool)
}

// Errors an Exchange can return besides its context's.
var (
	ErrClosed          = errors.New("dot: pool closed")
	errConnLost        = errors.New("connection lost before the answer")
	errStalled   error = stallError{}
	errBadAnswer       = errors.New("bad answer")
	errAbandoned       = errors.New("too many queries unanswered on the connection")
	errExpired         = errors.New("idle connection expired")
)

// stallError is errStalled. It is a timeout (net.Error), so that metrics and
// logs file the queries it takes down under timeouts, where they belong.
type stallError struct{}

func (stallError) Error() string   { return "upstream stopped answering on the connection" }
func (stallError) Timeout() bool   { return true }
func (stallError) Temporary() bool { return false }

// Pool is a set of connections to one upstream. Its methods are safe for
// concurrent use.
type Pool struct {
	cfg    Config
	ctx    context.Context // cancelled by Close, to abort a dial
	cancel context.CancelFunc
	wg     sync.WaitGroup // dials, readers and the janitor

	// dialTCP opens the connection TLS runs over: TCP to cfg.Addr, or in
	// tests one end of a net.Pipe.
	dialTCP func(ctx context.Context, network, addr string) (net.Conn, error)

	mu      sync.Mutex // guards the fields below and every conn's call table
	conns   []*conn    // open connections, oldest first
	dialing bool
	dialErr error     // the last dial's failure; nil after a success
	retryAt time.Time // no dial before this, after a failure
	backoff time.Duration
	wake    chan struct{} // closed to wake queries waiting for a slot; nil if none wait
	started bool
	closed  bool

	strikes     int       // connections in a row that died of pipelining
	serialUntil time.Time // one query per connection until then
}

// New returns a pool for cfg. It dials nothing until Start or Exchange.
func New(cfg Config) *Pool {
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = DefaultMaxInflight
	}
	cfg.MaxInflight = min(cfg.MaxInflight, 1<<15) // leaves IDs free for abandoned queries
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Expire == 0 {
		cfg.Expire = DefaultExpire
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &net.Dialer{KeepAlive: 15 * time.Second}
	return &Pool{cfg: cfg, ctx: ctx, cancel: cancel, dialTCP: d.DialContext}
}

// Addr returns the upstream's address.
func (p *Pool) Addr() string { return p.cfg.Addr }

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
	if len(p.conns) == 0 && !p.dialing {
		p.startDialLocked()
	}
	if p.cfg.Expire > 0 {
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
	conns := p.conns
	p.conns = nil
	p.wakeLocked()
	p.mu.Unlock()

	p.cancel()
	for _, c := range conns {
		p.connFailed(c, ErrClosed)
	}
	p.wg.Wait()
}

// Retry lets the next Exchange dial at once, even while the pool backs off
// after a failed dial, unless that dial failed to authenticate the server.
// It is for health probes, which are paced already: an upstream that comes
// back is found by the next probe, not after the backoff.
func (p *Pool) Retry() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dialErr != nil && (p.cfg.IsAuth == nil || !p.cfg.IsAuth(p.dialErr)) {
		p.retryAt = time.Time{}
	}
}

// Stats is a snapshot of a pool.
type Stats struct {
	Conns    int // open connections
	Inflight int // queries in flight
}

// Stats returns the pool's current figures.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Stats{Conns: len(p.conns)}
	for _, c := range p.conns {
		s.Inflight += len(c.calls)
	}
	return s
}

// Exchange sends q and returns the answer with the ID of q's message. The
// answer is checked: one that does not unpack or does not answer q's question
// is never returned. A query whose connection dies, or brings a bad answer, is
// sent again on a connection opened after the failure, within ctx's deadline,
// up to maxResends times: an upstream that closes a connection with queries
// unread resets it, and the reset can also discard answers already sent.
func (p *Pool) Exchange(ctx context.Context, q *Query) (*dns.Msg, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.Timeout)
		defer cancel()
	}
	cl := callPool.Get().(*call)
	cl.q = q
	cl.wbuf = append(cl.wbuf[:0], q.frame...)
	defer func() { // every path below leaves cl out of any table with ch drained
		cl.q = nil
		callPool.Put(cl)
	}()

	var failedAt time.Time // when the last try failed
	for resends := 0; ; resends++ {
		c, err := p.reserve(ctx, cl, failedAt)
		if err != nil {
			return nil, err
		}
		a, err := p.roundTrip(ctx, c, cl)
		if err == nil {
			return a, nil
		}
		retryable := errors.Is(err, errConnLost) || errors.Is(err, errBadAnswer)
		if resends == maxResends || !retryable || ctx.Err() != nil {
			return nil, err
		}
		failedAt = time.Now()
		if p.cfg.Events.Resent != nil {
			p.cfg.Events.Resent()
		}
	}
}

// reserve finds a connection with a free slot, or waits for one, and enters
// cl in its call table under a fresh ID. A query being resent asks for a
// connection born after notBefore, the time its first try failed: the
// connection it died with may have died of a per-connection query limit that
// its peers are close to as well. When the pool is full of older ones, any
// will do.
func (p *Pool) reserve(ctx context.Context, cl *call, notBefore time.Time) (*conn, error) {
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
		if c := p.pickLocked(notBefore); c != nil {
			if len(c.calls) >= p.spreadAt() && p.canDialLocked() {
				p.startDialLocked() // busy: open another for the next queries
			}
			id := c.allocIDLocked()
			binary.BigEndian.PutUint16(cl.wbuf[2:], id)
			cl.sent = time.Now().UnixNano()
			c.calls[id] = cl
			c.peak = max(c.peak, c.activeLocked())
			p.mu.Unlock()
			return c, nil
		}
		if !p.dialing && len(p.conns) < p.maxConnsLocked() {
			if time.Now().Before(p.retryAt) {
				if len(p.conns) == 0 { // backing off, nothing open: fail now
					err := p.dialErr
					p.mu.Unlock()
					return nil, err
				}
				if !notBefore.IsZero() { // no fresh one to be had for now
					notBefore = time.Time{}
					continue
				}
			} else {
				p.startDialLocked()
			}
		} else if !p.dialing {
			notBefore = time.Time{}
			if p.pickLocked(notBefore) != nil {
				continue
			}
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
		}
		p.mu.Lock()
	}
}

// pickLocked returns a connection born after notBefore with a free slot: the
// oldest one that is not busy, or else the least loaded. Filling the oldest
// first keeps the number of connections low when the load is light, so the
// others expire; spreading a heavy load lets an upstream that serves each
// connection on one thread (as many do) use several.
func (p *Pool) pickLocked(notBefore time.Time) *conn {
	var least *conn
	for _, c := range p.conns {
		n := len(c.calls)
		if n >= p.maxInflightLocked() || c.born.Before(notBefore) {
			continue
		}
		if n < p.spreadAt() {
			return c
		}
		if least == nil || n < len(least.calls) {
			least = c
		}
	}
	return least
}

// stallAfter is how long a connection may stay silent with a query
// unanswered before it counts as stalled: half the pool's timeout, so that a
// query with a short deadline of its own does not condemn a healthy one, and
// at most maxStall, so that health probes with their own short deadlines
// still condemn a connection that went silent (a NAT that forgot it, an
// upstream that lost it) instead of probing over it forever.
func (p *Pool) stallAfter() time.Duration { return min(p.cfg.Timeout/2, maxStall) }

// spreadAt is the number of queries in flight that makes a connection busy:
// when every connection is busy, the pool opens another, up to MaxConns.
func (p *Pool) spreadAt() int { return max(1, p.maxInflightLocked()/8) }

// canDialLocked reports whether the pool may start a dial now.
func (p *Pool) canDialLocked() bool {
	return !p.dialing && len(p.conns) < p.maxConnsLocked() && !time.Now().Before(p.retryAt)
}

// roundTrip writes cl on c and waits for its answer.
func (p *Pool) roundTrip(ctx context.Context, c *conn, cl *call) (*dns.Msg, error) {
	c.write(cl) // a failed write fails c, which completes cl
	select {
	case r := <-cl.ch:
		return r.msg, r.err
	case <-ctx.Done():
	}
	id := binary.BigEndian.Uint16(cl.wbuf[2:])
	p.mu.Lock()
	owned := c.calls[id] == cl
	tooMany := false
	if owned {
		c.calls[id] = abandoned
		c.gaveUp++
		tooMany = c.gaveUp > p.cfg.MaxInflight/2
		p.wakeLocked()
	}
	p.mu.Unlock()
	if !owned { // completed meanwhile: the result is on its way
		r := <-cl.ch
		return r.msg, r.err
	}
	switch waited := time.Now().UnixNano() - cl.sent; {
	case c.lastRead.Load() < cl.sent && waited >= int64(p.stallAfter()):
		// Nothing came back on c since this query left, for a long while:
		// the upstream has stopped answering there. Replace the connection
		// rather than wait for TCP to notice.
		p.connFailed(c, errStalled)
	case tooMany:
		p.connFailed(c, errAbandoned)
	}
	return nil, ctx.Err()
}

// complete removes and returns the call for id on c, or nil, given that its
// answer arrived at now. It reports whether the pool has just switched to one
// query per connection.
func (p *Pool) complete(c *conn, id uint16, now int64) (*call, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cl, ok := c.calls[id]
	if !ok {
		return nil, false
	}
	delete(c.calls, id)
	c.answered++
	c.lastUsed = time.Unix(0, now)
	if cl == abandoned {
		c.gaveUp--
		return nil, false
	}
	p.wakeLocked()
	return cl, p.judgeOrderLocked(c, cl, now)
}

// connFailed closes c, if still open, and completes every call in flight on it
// with an error wrapping errConnLost and cause.
func (p *Pool) connFailed(c *conn, cause error) {
	p.mu.Lock()
	if c.closed || cause == errExpired && c.activeLocked() > 0 { // taken since it was found idle
		p.mu.Unlock()
		return
	}
	c.closed = true
	close(c.done)
	changed, serial := p.judgeCloseLocked(c, cause)
	for i, x := range p.conns {
		if x == c {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			break
		}
	}
	calls, answered := c.calls, c.answered
	c.calls = nil
	p.wakeLocked()
	p.mu.Unlock()

	c.raw.Close() // unblocks the reader; skips close_notify, which could block
	err := fmt.Errorf("%w: %w", errConnLost, cause)
	for _, cl := range calls {
		if cl != abandoned {
			cl.ch <- result{err: err}
		}
	}
	if p.cfg.Events.Closed != nil {
		p.cfg.Events.Closed(cause, answered)
	}
	if changed && p.cfg.Events.Serial != nil {
		p.cfg.Events.Serial(serial)
	}
}

// wakeLocked wakes every query waiting for a slot or a dial.
func (p *Pool) wakeLocked() {
	if p.wake != nil {
		close(p.wake)
		p.wake = nil
	}
}

func (p *Pool) startDialLocked() {
	p.dialing = true
	p.wg.Add(1)
	go p.dial()
}

// dial opens one connection and adds it to the pool.
func (p *Pool) dial() {
	defer p.wg.Done()
	c, err := p.dialConn()
	var st *tls.ConnectionState
	if err == nil {
		cs := c.tc.ConnectionState()
		st = &cs
	}

	p.mu.Lock()
	p.dialing = false
	switch {
	case p.closed:
		if c != nil {
			c.raw.Close()
		}
		err = ErrClosed
	case err != nil:
		p.dialErr = err
		ceiling := maxBackoff
		if p.cfg.IsAuth != nil && p.cfg.IsAuth(err) {
			ceiling = maxAuthBackoff
		}
		p.backoff = min(max(2*p.backoff, minBackoff), ceiling)
		p.retryAt = time.Now().Add(p.backoff)
	default:
		p.dialErr, p.backoff, p.retryAt = nil, 0, time.Time{}
		p.conns = append(p.conns, c)
		p.wg.Add(2) // before Close can wait; started below
	}
	p.wakeLocked()
	p.mu.Unlock()

	if p.cfg.Events.Dialed != nil && !errors.Is(err, ErrClosed) {
		p.cfg.Events.Dialed(err, st)
	}
	if err == nil { // after Dialed, so that Closed cannot come first
		go c.readLoop()
		go c.writeLoop()
	}
}

// dialConn connects and completes the TLS handshake, so that nothing is ever
// written to a server that has not been verified.
func (p *Pool) dialConn() (*conn, error) {
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.Timeout)
	defer cancel()
	raw, err := p.dialTCP(ctx, "tcp", p.cfg.Addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, p.cfg.TLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	now := time.Now()
	return &conn{pool: p, raw: raw, tc: tc, calls: make(map[uint16]*call), born: now, lastUsed: now,
		wake: make(chan struct{}, 1), done: make(chan struct{})}, nil
}

// janitor closes idle connections until the pool closes.
func (p *Pool) janitor() {
	defer p.wg.Done()
	t := time.NewTicker(max(p.cfg.Expire/4, 10*time.Millisecond))
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
// Expire before now.
func (p *Pool) expireIdle(now time.Time) {
	var idle []*conn
	p.mu.Lock()
	for _, c := range p.conns {
		if c.activeLocked() == 0 && now.Sub(c.lastUsed) >= p.cfg.Expire {
			idle = append(idle, c)
		}
	}
	p.mu.Unlock()
	for _, c := range idle {
		p.connFailed(c, errExpired)
	}
}
