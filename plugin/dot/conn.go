package dot

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// conn is one TLS connection to an upstream carrying many queries at once
// (RFC 7766 section 6.2.1.1). One reader goroutine owns every read and routes
// answers to their callers by ID. One writer goroutine owns every write:
// callers append their frame to the pending buffer and wake it, never block on
// the socket, and queries that arrive while a write is in progress go out
// together in the next one, sharing a TLS record and a system call. The call
// table and state live under the pool's mutex.
type conn struct {
	pool *Pool
	raw  net.Conn // the TCP socket under tc, closed directly to stop the reader
	tc   *tls.Conn

	wmu     sync.Mutex    // guards pending and seq
	pending []byte        // frames waiting for the writer
	seq     uint64        // frames queued over the connection's life
	wake    chan struct{} // capacity 1: there is something to write
	done    chan struct{} // closed when the connection fails

	born     time.Time    // when the handshake completed
	lastRead atomic.Int64 // unix nanoseconds of the last answer read

	// Guarded by pool.mu.
	calls    map[uint16]*call // in-flight queries by upstream ID; gaveUp for abandoned ones
	gaveUp   int              // entries of calls that are gaveUp
	nextID   uint16
	order    order
	closed   bool
	lastUsed time.Time // when the last call completed
	answered int       // answers received over the connection's life
	peak     int       // most calls in flight at once
}

// abandoned marks, in conn.calls, the ID of a query whose caller gave up: the
// ID stays taken until its late answer arrives, so that answer can never be
// taken for the answer to a later query that reuses the ID.
var abandoned = new(call)

// activeLocked is the number of calls in flight whose caller still waits.
func (c *conn) activeLocked() int { return len(c.calls) - c.gaveUp }

// call is one query in flight on a conn.
//
// Ownership rule: whoever takes a call out of conn.calls completes it, exactly
// once, by sending on ch: the reader when the answer arrives, the connection's
// closer when the connection dies. A caller that gives up takes its own call
// out when it is still there (leaving abandoned in its place); when it is
// gone, someone else holds it and its result is coming on ch, which the
// caller must drain before reusing the call.
type call struct {
	q    *Query        // the query, to check its answer
	ch   chan result   // buffered, capacity 1
	wbuf []byte        // the frame as sent, with this call's ID
	sent int64         // unix nanoseconds when queued for writing
	seq  atomic.Uint64 // its place in the order of writing on the connection
}

type result struct {
	msg *dns.Msg
	err error
}

var callPool = sync.Pool{New: func() any { return &call{ch: make(chan result, 1)} }}

// readLoop reads answers until the connection fails, then hands the failure to
// the pool, which completes every call still in flight. It unpacks and checks
// each answer before handing it to its caller: a bad one fails the connection,
// since the other answers on it cannot be trusted either. (Unpacking here, on
// a goroutine whose stack has grown once and for all, also spares each
// caller's fresh goroutine a stack copy.)
func (c *conn) readLoop() {
	defer c.pool.wg.Done()
	br := bufio.NewReaderSize(c.tc, 16<<10)
	for {
		buf, err := ReadFrame(br)
		if err != nil {
			c.pool.connFailed(c, err)
			return
		}
		now := time.Now().UnixNano()
		c.lastRead.Store(now)
		cl, serial := c.pool.complete(c, binary.BigEndian.Uint16(buf), now)
		if serial && c.pool.cfg.Events.Serial != nil {
			c.pool.cfg.Events.Serial(true)
		}
		if cl == nil {
			// An answer to no call in flight is late (its caller gave up)
			// or unsolicited; either way it is dropped.
			continue
		}
		a, err := cl.q.answer(buf)
		cl.ch <- result{msg: a, err: err}
		if err != nil {
			c.pool.connFailed(c, err)
			return
		}
	}
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
// until the connection fails. A write that fails or takes longer than the
// pool's timeout fails the connection, which completes every call on it.
func (c *conn) writeLoop() {
	defer c.pool.wg.Done()
	var buf []byte
	for {
		select {
		case <-c.wake:
		case <-c.done:
			return
		}
		c.wmu.Lock()
		buf, c.pending = c.pending, buf[:0]
		c.wmu.Unlock()
		if len(buf) == 0 {
			continue
		}
		c.tc.SetWriteDeadline(time.Now().Add(c.pool.cfg.Timeout))
		if _, err := c.tc.Write(buf); err != nil {
			c.pool.connFailed(c, err)
			return
		}
	}
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
