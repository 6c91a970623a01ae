package dot

import (
	"errors"
	"io"
	"syscall"
	"time"
)

// Some upstreams do not handle pipelined queries (RFC 7766 section 6.2.1.1),
// in one of two ways, and the pool notices both:
//   - it closes the connection as soon as a second query arrives: judged as
//     connections die, by judgeCloseLocked;
//   - it reads one query, works on it, answers, and only then reads the next:
//     answers come strictly in the order of the queries, with long gaps, and a
//     query that waits behind others takes far longer than the connection's
//     fastest answer. Judged as answers arrive, by judgeOrderLocked.
//
// Such an upstream is sent one query per connection, over up to
// serialMaxConns connections, for serialFor; then pipelining is tried again.
const (
	serialStrikes  = 2
	serialMaxConns = 32
	serialFor      = 5 * time.Minute

	// orderWindow answers that waited behind an earlier one, all in order,
	// a mean gap between them of at least longGap, and a mean latency of at
	// least 1.5 times the fastest answer's make an upstream that works on
	// one query at a time. An upstream that answers from memory leaves gaps
	// of microseconds between answers: pipelining is still the faster way
	// to it.
	orderWindow = 32
	longGap     = 5 * time.Millisecond
)

// order follows the answers on one connection for signs of an upstream that
// works on one query at a time. It is guarded by the pool's mutex.
type order struct {
	lastSeq  uint64 // sequence number of the query answered last
	lastAt   int64  // when that answer arrived, unix nanoseconds
	fastest  int64  // the shortest time to an answer on the connection
	n        int    // answers in the window
	overtook bool   // an answer in the window came before an older query's
	gaps     int64  // sum over the window of the time since the previous answer
	lats     int64  // sum over the window of the time to the answer
}

func (p *Pool) serialLocked() bool { return time.Now().Before(p.serialUntil) }

func (p *Pool) maxInflightLocked() int {
	if p.serialLocked() {
		return 1
	}
	return p.cfg.MaxInflight
}

func (p *Pool) maxConnsLocked() int {
	if p.serialLocked() {
		return max(p.cfg.MaxConns, serialMaxConns)
	}
	return p.cfg.MaxConns
}

// judgeOrderLocked takes in the answer to cl, which arrived on c at now, and
// reports whether the pool has just switched to one query per connection.
func (p *Pool) judgeOrderLocked(c *conn, cl *call, now int64) bool {
	o := &c.order
	lat := now - cl.sent
	if o.fastest == 0 || lat < o.fastest {
		o.fastest = lat
	}
	prevAt := o.lastAt
	o.lastAt = now
	if seq := cl.seq.Load(); seq > o.lastSeq {
		o.lastSeq = seq
	} else {
		o.overtook = true
	}
	if prevAt < cl.sent { // the previous answer came before cl left: cl waited behind nothing
		return false
	}
	o.n++
	o.gaps += now - prevAt
	o.lats += lat
	if o.n < orderWindow {
		return false
	}
	oneAtATime := !o.overtook &&
		o.gaps >= orderWindow*int64(longGap) &&
		2*o.lats >= 3*orderWindow*o.fastest
	o.n, o.overtook, o.gaps, o.lats = 0, false, 0, 0
	if !oneAtATime || p.serialLocked() {
		return false
	}
	p.serialUntil = time.Now().Add(serialFor)
	return true
}

// judgeCloseLocked looks at how c died for signs of an upstream that does not
// handle pipelined queries: it closed the connection after answering at most
// one query while others were in flight. Two such connections in a row switch
// the pool to one query per connection for serialFor; a connection that
// answered several queries clears the count. It reports a change.
func (p *Pool) judgeCloseLocked(c *conn, cause error) (changed, on bool) {
	wasSerial := p.serialLocked()
	if !wasSerial && !p.serialUntil.IsZero() { // the serial period is over
		p.serialUntil, p.strikes = time.Time{}, 0
		changed = true
	}
	switch {
	case c.answered >= 2, c.answered > 0 && c.activeLocked() == 0:
		p.strikes = 0
	case c.activeLocked() > 0 && c.peak >= 2 && peerClosed(cause):
		p.strikes++
		if p.strikes >= serialStrikes && !wasSerial {
			p.serialUntil = time.Now().Add(serialFor)
			return true, true
		}
	}
	return changed, false
}

// peerClosed reports whether err says the upstream closed or reset the
// connection.
func peerClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}
