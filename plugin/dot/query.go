package dot

import (
	"encoding/binary"
	"errors"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// maxQueryLen bounds a query we send: larger ones cannot be a client's query.
const maxQueryLen = dns.MaxMsgSize

// Query is a client query packed once, ready to be sent on any connection of
// any pool, any number of times. Each send copies the frame and writes its own
// ID into the copy, so one Query can be in flight on several upstreams at
// once. A Query is not changed by Exchange and can be used concurrently.
type Query struct {
	msg   *dns.Msg
	frame []byte  // two-byte length, then the packed message
	bp    *[]byte // frame's pooled buffer; nil when frame was allocated

	addedOPT bool // the frame has an OPT record that msg has not
	padAt    int  // where in frame the EDNS(0) Padding option starts, the last bytes; 0 if none
}

var (
	framePool = sync.Pool{New: func() any { b := make([]byte, 0, 2+1232); return &b }}
	queryPool = sync.Pool{New: func() any { return new(Query) }}
)

// ErrInvalidQuery reports a query that cannot be forwarded: it does not pack,
// or it does not hold exactly one question.
var ErrInvalidQuery = errors.New("dot: invalid query")

// NewQuery packs m and changes the packed copy as p says (m itself is never
// changed). The message must not change while the Query is in use. Call
// Release when done.
func NewQuery(m *dns.Msg, p Privacy) (*Query, error) {
	if len(m.Question) != 1 {
		return nil, ErrInvalidQuery
	}
	bp := framePool.Get().(*[]byte)
	buf := (*bp)[:cap(*bp)]
	packed, err := m.PackBuffer(buf[2:])
	if err != nil || len(packed) > maxQueryLen {
		framePool.Put(bp)
		return nil, ErrInvalidQuery
	}
	q := queryPool.Get().(*Query)
	q.msg = m
	if &packed[0] == &buf[2] {
		q.frame, q.bp = buf[:2+len(packed)], bp
	} else { // did not fit: PackBuffer allocated
		framePool.Put(bp)
		q.frame, q.bp = append(make([]byte, 2, 2+len(packed)+p.PadBlock+15), packed...), nil
	}
	if out, added, padAt, err := protect(q.frame[2:], p, maxQueryLen); err == nil {
		if &out[0] != &q.frame[2] { // grew past the buffer
			q.frame = append(q.frame[:2], out...)
		} else {
			q.frame = q.frame[:2+len(out)]
		}
		q.addedOPT = added
		if padAt > 0 {
			q.padAt = 2 + padAt
		}
	}
	binary.BigEndian.PutUint16(q.frame, uint16(len(q.frame)-2))
	return q, nil
}

// Release returns the query and its buffer for reuse. The Query must not be
// used after.
func (q *Query) Release() {
	if q.bp != nil {
		framePool.Put(q.bp)
	}
	*q = Query{}
	queryPool.Put(q)
}

// finish makes a, an answer to q's question (see match), the client's: it
// gets q's ID, and loses what the pool put into the query and the client did
// not ask for (see unprotect).
func (q *Query) finish(a *dns.Msg, keepalive bool) {
	a.Id = q.msg.Id
	q.unprotect(a, keepalive)
}

// unprotect takes out of a what protect put into the query and a client did
// not ask for: the OPT record added for padding, padding, and, when the
// query asked for it, the server's edns-tcp-keepalive. It looks at every OPT
// record: an answer should hold at most one (RFC 6891 section 6.1.1), but one
// that holds two must not slip either through.
func (q *Query) unprotect(a *dns.Msg, keepalive bool) {
	if q.padAt == 0 && !keepalive {
		return
	}
	extra := a.Extra[:0]
	for _, rr := range a.Extra {
		opt, ok := rr.(*dns.OPT)
		switch {
		case !ok:
		case q.addedOPT:
			continue
		default:
			opts := opt.Option[:0]
			for _, o := range opt.Option {
				if c := o.Option(); c != dns.EDNS0PADDING && !(keepalive && c == dns.EDNS0TCPKEEPALIVE) {
					opts = append(opts, o)
				}
			}
			opt.Option = opts
		}
		extra = append(extra, rr)
	}
	a.Extra = extra
	if q.addedOPT && a.Rcode > 0xf { // an extended RCODE has no place without OPT
		a.Rcode = dns.RcodeServerFailure
	}
}

// match reports whether a is a response to q's question.
func (q *Query) match(a *dns.Msg) bool {
	if !a.Response || a.Opcode != q.msg.Opcode || len(a.Question) != 1 {
		return false
	}
	aq, qq := a.Question[0], q.msg.Question[0]
	return aq.Qtype == qq.Qtype && aq.Qclass == qq.Qclass && strings.EqualFold(aq.Name, qq.Name)
}
