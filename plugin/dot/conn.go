package dot

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// conn is one TLS connection to an upstream carrying many queries at once
// (RFC 7766 section 6.2.1.1). One reader goroutine owns every read and routes
// answers to their callers by ID. Writes are grouped: a query that finds
// another caller writing leaves its frame in the pending buffer, and the
// writer sends all that has piled up in one Write, so queries that arrive
// together share a TLS record and a system call. The call table and state
// live under the pool's mutex.
type conn struct {
	pool *Pool
	raw  net.Conn // the TCP socket under tc, closed directly to stop the reader
	tc   *tls.Conn

	wmu     sync.Mutex // guards the fields below
	pending []byte     // frames waiting for the writer
	spare   []byte     // the buffer of the last write, for reuse
	writing bool       // a caller is writing; it will send pending too

	born     time.Time    // when the handshake completed
	lastRead atomic.Int64 // unix nanoseconds of the last answer read

	// Guarded by pool.mu.
	calls    map[uint16]*call // in-flight queries by upstream ID
	nextID   uint16
	closed   bool
	lastUsed time.Time // when the last call completed or started
	sent     int       // queries sent over the connection's life
	answered int       // answers received over the connection's life
}

// call is one query in flight on a conn.
//
// Ownership rule: whoever removes a call from conn.calls completes it, exactly
// once, by sending on ch: the reader when the answer arrives, the connection's
// closer when the connection dies. A caller that gives up removes its own call
// when it is still there; when it is gone, someone else holds it and its
// result is coming on ch, which the caller must drain before reusing the call.
type call struct {
	ch   chan result // buffered, capacity 1
	wbuf []byte      // the frame as sent, with this call's ID
	sent int64       // unix nanoseconds when written
}

type result struct {
	buf []byte
	err error
}

var callPool = sync.Pool{New: func() any { return &call{ch: make(chan result, 1)} }}

// readLoop reads answers until the connection fails, then hands the failure to
// the pool, which completes every call still in flight.
func (c *conn) readLoop() {
	defer c.pool.wg.Done()
	br := bufio.NewReaderSize(c.tc, 16<<10)
	for {
		buf, err := ReadFrame(br)
		if err != nil {
			c.pool.connFailed(c, err)
			return
		}
		c.lastRead.Store(time.Now().UnixNano())
		id := binary.BigEndian.Uint16(buf)
		if cl := c.pool.complete(c, id); cl != nil {
			cl.ch <- result{buf: buf}
		}
		// An answer to no call in flight is late (its caller gave up) or
		// unsolicited; either way it is dropped.
	}
}

// write queues cl's frame and, unless another caller is writing already,
// writes everything queued until nothing is left. A write that fails or takes
// longer than the pool's timeout fails the connection, which completes every
// call on it, cl included.
func (c *conn) write(cl *call) {
	cl.sent = time.Now().UnixNano()
	c.wmu.Lock()
	c.pending = append(c.pending, cl.wbuf...)
	if c.writing {
		c.wmu.Unlock()
		return
	}
	c.writing = true
	for len(c.pending) > 0 {
		buf := c.pending
		c.pending = c.spare[:0]
		c.wmu.Unlock()
		c.tc.SetWriteDeadline(time.Now().Add(c.pool.cfg.Timeout))
		_, err := c.tc.Write(buf)
		c.wmu.Lock()
		c.spare = buf[:0]
		if err != nil {
			c.writing = false
			c.pending = c.pending[:0]
			c.wmu.Unlock()
			c.pool.connFailed(c, err)
			return
		}
	}
	c.writing = false
	c.wmu.Unlock()
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
