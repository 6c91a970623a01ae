package dot

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// conn is one TLS connection to an upstream carrying many queries at once
// (RFC 7766 section 6.2.1.1). It owns its call table: it hands out IDs,
// routes each answer to the query it answers, and keeps the account of the
// faults it sees, so that a bad answer costs the query it hit and nothing
// more. One reader goroutine owns every read. One writer goroutine owns every
// write: callers append their frame to the pending buffer and wake it, never
// block on the socket, and queries that arrive while a write is in progress
// go out together in the next one, sharing a TLS record and a system call.
//
// The pool decides which connection a query goes to and what a connection may
// carry (tryAdd's arguments); the connection tells the pool what happened
// through owner (see connOwner), never under its own lock.
type conn struct {
	owner        connOwner
	raw          net.Conn // the TCP socket under tc, closed directly to stop the reader
	tc           *tls.Conn
	born         time.Time     // when the handshake completed
	writeTimeout time.Duration // a write that takes longer fails the connection
	maxAge       time.Duration // retire this long after born; zero never

	wmu     sync.Mutex    // guards pending and seq
	pending []byte        // frames waiting for the writer
	seq     uint64        // frames queued over the connection's life
	wake    chan struct{} // capacity 1: there is something to write
	done    chan struct{} // closed when the connection closes

	lastRead atomic.Int64 // unix nanoseconds of the last answer read
	load     atomic.Int32 // len(calls), for the pool to compare connections without mu
	usable   atomic.Bool  // takes new queries: open and not draining

	mu       sync.Mutex       // guards the fields below; taken after the pool's
	calls    map[uint16]*call // in flight by upstream ID; abandoned for IDs given up on
	gaveUp   int              // entries of calls that are abandoned
	nextID   uint16
	state    connState
	written  int           // queries entered over the connection's life
	answered int           // answers received over the connection's life, bad ones included
	peak     int           // most calls in flight at once
	lastUsed time.Time     // when the last call completed
	order    order         // see pipelining.go
	recent   uint32        // one bit per recent answer, newest lowest: 1 for a bad one
	good     int           // good answers over the connection's life
	lost     int           // answers that went astray (see lostLocked), since draining
	confused int           // answers that named the wrong query, over the connection's life
	idleMax  time.Duration // retire when idle this long: 3/4 of the server's stated idle timeout; zero if none
	asked    bool          // the first query asked for the server's idle timeout (RFC 7828)
}

// connState is where a connection is in its life: open takes queries;
// draining takes none and closes once its calls are done; closed is gone.
type connState uint8

const (
	stateOpen connState = iota
	stateDraining
	stateClosed
)

// connOwner is what a connection tells its pool. Calls come from the
// connection's goroutines and its callers, never under the connection's lock.
type connOwner interface {
	// released reports that a slot came free.
	released()
	// connClosed reports that c has closed for cause; every call in flight
	// on it has been completed. stats is what it carried.
	connClosed(c *conn, cause error, stats connStats)
	// misrouted reports an answer that named the wrong query, or none;
	// confused is how many the connection has had, answered its answers.
	misrouted(confused, answered int)
	// judged reports the verdict on a window of the connection's answers
	// (see order.judge).
	judged(v verdict)
	// bad reports an answer dropped for reason.
	bad(reason BadReason)
}

// connStats is what a connection had carried when it closed.
type connStats struct {
	answered int // answers read
	peak     int // most calls in flight at once
	active   int // calls in flight, not given up, when it closed
}

// Errors of a connection, as its calls and the pool see them.
var (
	errConnLost    = errors.New("connection lost before the answer")
	errStalled     = error(stallError{})
	errAbandoned   = errors.New("too many queries unanswered on the connection")
	errExpired     = errors.New("idle connection expired")
	errDrained     = errors.New("connection retired")
	errUntrustable = errors.New("most of the connection's answers were bad")
)

// stallError is errStalled. It is a timeout (net.Error), so that metrics and
// logs file the queries it takes down under timeouts, where they belong.
type stallError struct{}

func (stallError) Error() string   { return "upstream stopped answering on the connection" }
func (stallError) Timeout() bool   { return true }
func (stallError) Temporary() bool { return false }

// abandoned marks, in conn.calls, the ID of a query whose caller gave up: the
// ID stays taken until its late answer arrives, so that answer can never be
// taken for the answer to a later query that reuses the ID.
var abandoned = new(call)

// call is one query in flight on a conn.
//
// Ownership rule: whoever takes a call out of conn.calls completes it, exactly
// once, by sending on ch: the reader when its answer (or a bad one) arrives,
// the connection's closer when the connection dies. A caller that gives up
// takes its own call out when it is still there (leaving abandoned in its
// place); when it is gone, someone else holds it and its result is coming on
// ch, which the caller must drain before reusing the call.
type call struct {
	q         *Query        // the query, to check its answer
	ch        chan result   // buffered, capacity 1
	wbuf      []byte        // the frame as sent, with this call's ID
	sent      int64         // unix nanoseconds when entered
	seq       atomic.Uint64 // its place in the order of writing on the connection
	keepalive bool          // the frame asks for edns-tcp-keepalive (RFC 7828)
	bad       int           // bad answers this query has met, over every try
	timer     *time.Timer   // fires at the query's deadline; stopped between queries
}

type result struct {
	msg *dns.Msg
	err error
}

var callPool = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &call{ch: make(chan result, 1), timer: t}
}}

func newConn(owner connOwner, raw net.Conn, tc *tls.Conn, writeTimeout, maxAge time.Duration) *conn {
	now := time.Now()
	c := &conn{owner: owner, raw: raw, tc: tc, born: now, writeTimeout: writeTimeout, maxAge: maxAge, lastUsed: now,
		calls: make(map[uint16]*call), wake: make(chan struct{}, 1), done: make(chan struct{})}
	c.usable.Store(true)
	return c
}

// tryAdd enters cl in the call table under a fresh ID, unless the connection
// holds maxInflight calls or has taken limit queries over its life (zero: no
// limit), or does not take queries. It returns how many more queries the
// connection may take over its life (-1: no limit). A connection past its
// maxAge, or idle past the server's stated idle timeout, takes no query: it
// drains, and closes once its queries are answered (if it has none, the
// janitor or the server closes it).
func (c *conn) tryAdd(cl *call, maxInflight, limit int) (ok bool, left int) {
	c.mu.Lock()
	if c.state != stateOpen || len(c.calls) >= maxInflight || limit > 0 && c.written >= limit {
		c.mu.Unlock()
		return false, 0
	}
	now := time.Now()
	if c.maxAge > 0 && now.Sub(c.born) >= c.maxAge || c.idleMax > 0 && len(c.calls) == 0 && now.Sub(c.lastUsed) >= c.idleMax {
		c.drainLocked()
		c.mu.Unlock()
		return false, 0
	}
	id := c.allocIDLocked()
	binary.BigEndian.PutUint16(cl.wbuf[2:], id)
	cl.sent = now.UnixNano()
	cl.keepalive = !c.asked && cl.askKeepalive()
	c.asked = true
	c.calls[id] = cl
	c.written++
	c.peak = max(c.peak, len(c.calls)-c.gaveUp)
	c.load.Store(int32(len(c.calls)))
	left = -1
	if limit > 0 {
		left = limit - c.written
		if left == 0 {
			c.drainLocked() // its last query: it closes once answered
		}
	}
	c.mu.Unlock()
	return true, left
}

// allocIDLocked picks an ID not used by a call in flight on c.
func (c *conn) allocIDLocked() uint16 {
	for {
		c.nextID++
		if _, busy := c.calls[c.nextID]; !busy {
			return c.nextID
		}
	}
}

func (c *conn) activeLocked() int { return len(c.calls) - c.gaveUp }

// removeLocked takes the entry for id out of the call table.
func (c *conn) removeLocked(id uint16) {
	if c.calls[id] == abandoned {
		c.gaveUp--
	}
	delete(c.calls, id)
	c.load.Store(int32(len(c.calls)))
}

// drainLocked stops c from taking queries; it closes once those in flight
// are done (see settleLocked).
func (c *conn) drainLocked() {
	if c.state == stateOpen {
		c.state = stateDraining
		c.usable.Store(false)
	}
}

// roundTrip writes cl, entered by tryAdd, and waits for its answer until ctx
// ends or cl's timer fires (context.DeadlineExceeded). A caller that gives
// up leaves its ID taken (see abandoned); if the connection has been silent
// for stallAfter since cl left, or more than maxGaveUp of its queries have
// been given up on, it is replaced.
func (c *conn) roundTrip(ctx context.Context, cl *call, stallAfter time.Duration, maxGaveUp int) (*dns.Msg, error) {
	c.write(cl) // a failed write fails c, which completes cl
	var err error
	select {
	case r := <-cl.ch:
		return r.msg, r.err
	case <-ctx.Done():
		err = ctx.Err()
	case <-cl.timer.C:
		err = context.DeadlineExceeded
	}
	id := binary.BigEndian.Uint16(cl.wbuf[2:])
	c.mu.Lock()
	if c.calls[id] != cl { // completed meanwhile: the result is on its way
		c.mu.Unlock()
		if r := <-cl.ch; r.err == nil {
			return r.msg, nil // answered as we gave up: take it
		}
		return nil, err // failed too: the caller is gone all the same
	}
	c.calls[id] = abandoned
	c.gaveUp++
	cause := error(nil)
	switch waited := time.Now().UnixNano() - cl.sent; {
	case c.lastRead.Load() < cl.sent && waited >= int64(stallAfter):
		// Nothing came back on c since this query left, for a long while:
		// the upstream has stopped answering there. Replace the connection
		// rather than wait for TCP to notice.
		cause = errStalled
	case c.gaveUp > maxGaveUp:
		cause = errAbandoned
	}
	failed, done := c.settleLocked(nil)
	c.mu.Unlock()
	c.finish(failed, done, cause)
	return nil, err
}

// write queues cl's frame for the writer.
func (c *conn) write(cl *call) {
	c.wmu.Lock()
	c.seq++
	cl.seq.Store(c.seq) // atomic: the reader reads it with no lock in common
	c.pending = append(c.pending, cl.wbuf...)
	c.wmu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default: // already woken
	}
}

// writeLoop writes what callers queue, all that has piled up in one Write,
// until the connection closes. A write that fails or takes longer than writeTimeout
// fails the connection, which completes every call on it.
func (c *conn) writeLoop() {
	var buf []byte
	for {
		select {
		case <-c.wake:
		case <-c.done:
			return
		}
		// With other queries in flight here, callers that are runnable now
		// queue theirs first, so that they go out in this write: under load,
		// fewer TLS records and system calls per query (a sixth less CPU
		// per query in the side-by-side benchmark). A lone query (light
		// load, or one query per connection) is written at once: there is
		// nothing to gather, and yielding for it too cost answers in
		// TestFaultsAtVolume's wrong-ID case (98.9% answered against 99.3%).
		if c.load.Load() > 1 {
			runtime.Gosched()
		}
		c.wmu.Lock()
		buf, c.pending = c.pending, buf[:0]
		c.wmu.Unlock()
		if len(buf) == 0 {
			continue
		}
		c.tc.SetWriteDeadline(time.Now().Add(c.writeTimeout))
		if _, err := c.tc.Write(buf); err != nil {
			c.fail(err)
			return
		}
	}
}

// readLoop reads answers until the connection fails or closes. Each answer is
// unpacked here, on a goroutine whose stack has grown once and for all
// (sparing each caller's fresh goroutine a stack copy), then routed. Only
// what breaks the stream fails the connection: a read error or a frame too
// short to be a message.
func (c *conn) readLoop() {
	br := bufio.NewReaderSize(c.tc, 16<<10)
	var buf []byte
	for {
		var err error
		buf, err = readFrameInto(br, buf)
		if err != nil {
			c.fail(err)
			return
		}
		now := time.Now().UnixNano()
		c.lastRead.Store(now)
		c.route(binary.BigEndian.Uint16(buf), unpackAnswer(buf), now)
	}
}

// finish completes failed with ErrBadAnswer, then closes c for cause, or
// because it is done draining, or else tells the owner a slot came free.
func (c *conn) finish(failed []*call, done bool, cause error) {
	for _, x := range failed {
		x.ch <- result{err: ErrBadAnswer}
	}
	switch {
	case cause != nil:
		c.fail(cause)
	case done:
		c.fail(errDrained)
	default:
		c.owner.released()
	}
}

// fail closes c, if still open, completes every call in flight on it with an
// error wrapping errConnLost and cause, and tells the owner.
func (c *conn) fail(cause error) {
	c.mu.Lock()
	if c.state == stateClosed || cause == errExpired && c.activeLocked() > 0 { // taken since it was found idle
		c.mu.Unlock()
		return
	}
	st := connStats{answered: c.answered, peak: c.peak, active: c.activeLocked()}
	c.state = stateClosed
	c.usable.Store(false)
	calls := c.calls
	c.calls = nil
	c.load.Store(0)
	close(c.done)
	c.mu.Unlock()

	c.raw.Close() // unblocks the reader; skips close_notify, which could block
	err := fmt.Errorf("%w: %w", errConnLost, cause)
	for _, cl := range calls {
		if cl != abandoned {
			cl.ch <- result{err: err}
		}
	}
	c.owner.connClosed(c, cause, st)
}

// idle reports whether c has no query in flight and is done: it has had none
// for expire (when positive) or for the idle timeout the server stated, or it
// drains, or it is maxAge old (when positive); and whether it is quiet: no
// query in flight for quiet.
func (c *conn) idle(now time.Time, expire, maxAge, quiet time.Duration) (done, isQuiet bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.activeLocked() > 0 {
		return false, false
	}
	since := now.Sub(c.lastUsed)
	done = expire > 0 && since >= expire || c.idleMax > 0 && since >= c.idleMax ||
		c.state == stateDraining || maxAge > 0 && now.Sub(c.born) >= maxAge
	return done, since >= quiet
}

// answeredAny reports whether c has read an answer.
func (c *conn) answeredAny() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.answered > 0
}
