package dot

import (
	"errors"
	"io"
	"syscall"
	"time"
)

// Some upstreams do not handle pipelined queries (RFC 7766 section 6.2.1.1),
// in one of three ways, and the pool notices each:
//   - it closes the connection as soon as a second query arrives: judged as
//     connections die, by judgeCloseLocked;
//   - it reads one query, works on it, answers, and only then reads the next:
//     answers come strictly in the order of the queries, with long gaps, and a
//     query that waits behind others takes far longer than the connection's
//     fastest answer. Judged as answers arrive, by order.judge;
//   - it sends answers under the wrong IDs, or answers that name no query:
//     judged by misrouted.
//
// Such an upstream is sent one query per connection, over up to MaxConns
// connections (serialMaxConns when MaxConns is not set), for serialFor; then
// pipelining is tried again. With one query per connection, every answer can
// be told for what query it is.
//
// Many more upstreams handle pipelining but work on each connection's queries
// one at a time, fast (CoreDNS and every miekg/dns server, for one): the
// answers come in order with short gaps, and a query's latency grows with the
// number queued before it on its connection, though each answer takes
// microseconds. order.judge notices this too; the pool then spreads its
// queries over up to MaxConns connections, so that the upstream works on
// several at once, for spreadFor after the last sign of it. An upstream that
// works on a connection's queries concurrently answers some out of order; it
// is sent them on as few connections as their number needs (see Pool.pick),
// and is not spread for spreadFor after the last answer that overtook.
const (
	serialStrikes  = 2
	serialMaxConns = 32
	serialFor      = 5 * time.Minute
	spreadFor      = 5 * time.Minute

	// orderWindow answers that waited behind an earlier one, all in order,
	// with a mean latency of at least 1.5 times the fastest answer's, make
	// an upstream that works on a connection's queries one at a time; with a
	// mean gap between them of at least longGap, one that should be sent one
	// query per connection. An upstream that answers from memory leaves gaps
	// of microseconds between answers: pipelining is still the faster way
	// to it, over several connections.
	orderWindow = 32
	longGap     = 5 * time.Millisecond

	// confusedStrikes misrouted answers on one connection, at least one in
	// confusedRate of its answers, make an upstream that mixes up
	// pipelined queries.
	confusedStrikes = 3
	confusedRate    = 1000
)

// Why the pool sends one query per connection.
const (
	WhyCloses    = "it closes connections that carry several queries"
	WhyInOrder   = "it works on one query at a time"
	WhyMisroutes = "it sends answers under the wrong IDs"
)

// order follows the answers on one connection for signs of an upstream that
// works on one query at a time. It is guarded by its connection's mutex.
type order struct {
	lastSeq  uint64 // sequence number of the query answered last
	lastAt   int64  // when that answer arrived, unix nanoseconds
	fastest  int64  // the shortest time to an answer on the connection
	n        int    // answers in the window
	overtook bool   // an answer in the window came before an older query's
	gaps     int64  // sum over the window of the time since the previous answer
	lats     int64  // sum over the window of the time to the answer
}

// verdict is what order.judge makes of a window of answers.
type verdict uint8

const (
	noVerdict verdict = iota
	// concurrent: an answer overtook an earlier query's; the upstream works
	// on several of a connection's queries at once.
	concurrent
	// queued: every answer came in order, each having waited behind the one
	// before; the upstream works on a connection's queries one at a time.
	queued
	// slow: queued, with long gaps between the answers.
	slow
)

// judge takes in the answer to cl, which arrived at now, and returns the
// verdict on the window it completes, if it completes one.
func (o *order) judge(cl *call, now int64) verdict {
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
		return noVerdict
	}
	o.n++
	o.gaps += now - prevAt
	o.lats += lat
	if o.n < orderWindow {
		return noVerdict
	}
	v := noVerdict
	switch {
	case o.overtook:
		v = concurrent
	case 2*o.lats < 3*orderWindow*o.fastest: // no query waited long
	case o.gaps >= orderWindow*int64(longGap):
		v = slow
	default:
		v = queued
	}
	o.n, o.overtook, o.gaps, o.lats = 0, false, 0, 0
	return v
}

// serial reports whether the pool sends one query per connection.
func (p *Pool) serial() bool {
	u := p.serialUntil.Load()
	return u != 0 && time.Now().UnixNano() < u
}

func (p *Pool) maxInflight() int {
	if p.serial() {
		return 1
	}
	return p.cfg.MaxInflight
}

// maxConns is the most connections the pool may hold: MaxConns when set,
// else DefaultMaxConns, or serialMaxConns while it sends one query per
// connection.
func (p *Pool) maxConns() int {
	switch {
	case p.cfg.MaxConns > 0:
		return p.cfg.MaxConns
	case p.serial():
		return serialMaxConns
	}
	return DefaultMaxConns
}

// goSerial sends one query per connection for serialFor from now, and reports
// why, unless the pool does so already.
func (p *Pool) goSerial(why string) {
	p.mu.Lock()
	if p.serial() || p.closed {
		p.mu.Unlock()
		return
	}
	p.serialUntil.Store(time.Now().Add(serialFor).UnixNano())
	p.mu.Unlock()
	if p.cfg.Events.Serial != nil {
		p.cfg.Events.Serial(true, why)
	}
}

// judged implements connOwner. An upstream seen to answer out of order is not
// spread over connections for spreadFor: more connections would not make it
// work on more queries at once.
func (p *Pool) judged(v verdict) {
	now := time.Now().UnixNano()
	switch v {
	case slow:
		p.goSerial(WhyInOrder)
	case concurrent:
		if p.concurrentUntil.Load() < now+int64(spreadFor)/2 { // now and then, not on every window
			p.concurrentUntil.Store(now + int64(spreadFor))
			p.spreadUntil.Store(0)
		}
	case queued:
		if p.concurrentUntil.Load() < now && p.spreadUntil.Swap(now+int64(spreadFor)) < now && p.cfg.Events.Spread != nil {
			p.cfg.Events.Spread(p.maxConns())
		}
	}
}

// spreading reports whether the pool spreads its queries over connections
// because the upstream works on each connection's queries one at a time.
func (p *Pool) spreading() bool {
	u := p.spreadUntil.Load()
	return u != 0 && time.Now().UnixNano() < u
}

// misrouted implements connOwner.
func (p *Pool) misrouted(confused, answered int) {
	if confused >= confusedStrikes && confused*confusedRate >= answered {
		p.goSerial(WhyMisroutes)
	}
}

// judgeCloseLocked looks at how a connection died, given what it carried, for
// signs of an upstream that does not handle pipelined queries: it closed the
// connection after answering at most one query while others were in flight.
// Two such connections in a row switch the pool to one query per connection
// for serialFor; a connection that answered several queries clears the
// count. It reports a change, and whether the pool is now serial.
func (p *Pool) judgeCloseLocked(st connStats, cause error) (changed, on bool) {
	wasSerial := p.serial()
	if !wasSerial && p.serialUntil.Load() != 0 { // the serial period is over
		p.serialUntil.Store(0)
		p.strikes = 0
		changed = true
	}
	switch {
	case st.answered >= 2, st.answered > 0 && st.active == 0:
		p.strikes = 0
	case st.active > 0 && st.peak >= 2 && peerClosed(cause):
		p.strikes++
		if p.strikes >= serialStrikes && !wasSerial {
			p.serialUntil.Store(time.Now().Add(serialFor).UnixNano())
			return true, true
		}
	}
	return changed, false
}

// limitSamples connections in a row that the upstream closed with queries in
// flight after answering within a quarter of the same number of queries, K
// at most, make an upstream with a limit of K queries per connection (as
// miekg/dns servers, with 128 by default; dnsdist, PowerDNS Recursor). The
// pool then writes at most K queries on a connection and lets it drain, so
// that no query is written to a connection that will not answer it.
const limitSamples = 3

// learnLimitLocked takes in a connection that closed for cause, given what it
// carried, and returns the per-connection query limit it has just learned,
// or zero. A limit once learned only ever comes down.
func (p *Pool) learnLimitLocked(st connStats, cause error) int {
	if !peerClosed(cause) || st.active == 0 || st.answered < 2 {
		return 0
	}
	copy(p.closedAt[1:], p.closedAt[:limitSamples-1])
	p.closedAt[0] = st.answered
	lo, hi := p.closedAt[0], p.closedAt[0]
	for _, n := range p.closedAt[1:] {
		lo, hi = min(lo, n), max(hi, n)
	}
	if cur := int(p.limit.Load()); lo == 0 || 4*lo < 3*hi || cur > 0 && hi >= cur {
		return 0
	}
	p.limit.Store(int32(hi))
	return hi
}

// peerClosed reports whether err says the upstream closed or reset the
// connection.
func peerClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}
