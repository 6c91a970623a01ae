package dot

// How a connection routes each answer to the query it answers, and keeps the
// account of the bad ones: see route.

import (
	"math/bits"
	"time"

	"github.com/miekg/dns"
)

// Thresholds of the fault account.
const (
	// badWindow answers are remembered per connection; more than badLimit
	// bad ones among them condemn a connection that has answered well
	// before: its stream has gone out of step (a proxy that lost track of
	// which answer is whose, say), and a fresh connection may not be. One
	// that never answered well is kept: a fresh one would fare no better,
	// and each query meeting its answers gets an error after maxBadAnswers.
	badWindow = 32
	badLimit  = badWindow / 2
)

// BadReason says why an answer was dropped.
type BadReason string

// The reasons an answer is dropped.
const (
	// BadMalformed: the answer does not unpack as a DNS message.
	BadMalformed BadReason = "malformed"
	// BadWrongID: the answer names a query that is not in flight, or
	// another than the one it answers.
	BadWrongID BadReason = "wrong_id"
	// BadWrongQuestion: the answer carries the ID of a query in flight but
	// answers a question that no query in flight asked.
	BadWrongQuestion BadReason = "wrong_question"
)

// route hands a, the answer read with ID id (nil if it did not unpack), to the
// query it answers. An answer goes to the query its ID names only if it
// answers that query's question. When it does not, its question decides:
//   - it answers another query in flight: its ID was wrong, and that query
//     lost its answer; that query is sent again, while the one the ID named
//     keeps waiting for its own;
//   - it answers no query in flight: it is the garbled answer of the query
//     its ID names, which is sent again.
//
// An answer that does not unpack is charged to the query its ID names. One
// that can be charged to no query means some query's answer went astray: see
// lostLocked.
//
// The caller of each failed query sends it again on a fresh ID, so a bad
// answer costs one resend of the query it hit. Each is counted; when more
// than badLimit of the last badWindow answers were bad on a connection that
// had answered well, it is closed (see badWindow).
func (c *conn) route(id uint16, a *dns.Msg, now int64) {
	var (
		deliver *call
		failed  []*call
		reason  BadReason
		v       verdict
		cause   error
	)
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	c.answered++
	c.lastUsed = time.Unix(0, now)
	confusedBefore := c.confused
	cl := c.calls[id]
	switch {
	case cl == abandoned: // late: its caller gave up; whatever it holds is dropped
		c.removeLocked(id)
	case cl != nil && a != nil && cl.q.match(a):
		deliver = cl
		c.good++
		c.removeLocked(id)
		v = c.order.judge(cl, now)
		if cl.keepalive {
			c.keepaliveLocked(a)
		}
	case cl != nil && a == nil:
		reason, failed = BadMalformed, append(failed, cl)
		c.removeLocked(id)
	case a != nil:
		if xid, x := c.askedLocked(a); x != nil { // x's answer, under another ID
			reason, failed = BadWrongID, append(failed, x)
			c.removeLocked(xid)
			c.confused++
		} else if cl != nil {
			reason, failed = BadWrongQuestion, append(failed, cl)
			c.removeLocked(id)
		} else {
			reason, failed = BadWrongID, c.lostLocked(failed)
		}
	default:
		reason, failed = BadMalformed, c.lostLocked(failed)
	}
	c.recent <<= 1
	if reason != "" {
		c.recent |= 1
		if c.good > 0 && bits.OnesCount32(c.recent) > badLimit {
			cause = errUntrustable
		}
	}
	confused, answered := c.confused, c.answered
	misrouted := confused > confusedBefore
	failed, done := c.settleLocked(failed)
	c.mu.Unlock()

	if deliver != nil {
		deliver.q.finish(a, deliver.keepalive)
		deliver.ch <- result{msg: a}
	}
	if reason != "" {
		c.owner.bad(reason)
	}
	if misrouted {
		c.owner.misrouted(confused, answered)
	}
	if v != noVerdict {
		c.owner.judged(v)
	}
	c.finish(failed, done, cause)
}

// askedLocked returns the oldest call in flight whose question a answers, and
// its ID; nil if none.
func (c *conn) askedLocked(a *dns.Msg) (uint16, *call) {
	var (
		id  uint16
		old *call
	)
	for i, x := range c.calls {
		if x != abandoned && x.q.match(a) && (old == nil || x.sent < old.sent) {
			id, old = i, x
		}
	}
	return id, old
}

// lostLocked takes in an answer that no query in flight can be charged with:
// some query's answer went astray, or it is noise, and which cannot be told.
// With one query in flight, it is charged to that one, which it returns in
// failed. Otherwise the connection drains: it takes no new queries, and once
// no more queries are in flight than answers went astray, those left are the
// ones whose answers will not come (settleLocked). It counts as a misrouted
// answer.
func (c *conn) lostLocked(failed []*call) []*call {
	c.confused++
	if c.activeLocked() == 1 {
		for id, x := range c.calls {
			if x != abandoned {
				c.removeLocked(id)
				return append(failed, x)
			}
		}
	}
	c.lost++
	c.drainLocked()
	return failed
}

// settleLocked appends to failed the calls of a draining connection whose
// answers will not come: all those in flight, once they are no more than the
// answers that went astray. It reports whether the connection is done: it
// drains and has no query in flight left.
func (c *conn) settleLocked(failed []*call) ([]*call, bool) {
	if c.state != stateDraining {
		return failed, false
	}
	if c.lost > 0 && c.activeLocked() <= c.lost {
		for id, x := range c.calls {
			if x != abandoned {
				c.removeLocked(id)
				failed = append(failed, x)
			}
		}
	}
	return failed, c.activeLocked() == 0
}
