package dot

import (
	"encoding/binary"
	"time"

	"github.com/miekg/dns"
)

// The first query of each connection asks the server for its idle timeout
// (RFC 7828 edns-tcp-keepalive), so that the connection can retire before the
// server closes it under a query.

// optCodeKeepalive is edns-tcp-keepalive (RFC 7828).
const optCodeKeepalive = 11

// askKeepalive asks the server for its idle timeout (RFC 7828) in cl's frame,
// turning the first four bytes of its padding into an empty
// edns-tcp-keepalive option, so the frame keeps its length. It reports
// whether the frame had padding enough.
func (cl *call) askKeepalive() bool {
	at := cl.q.padAt
	if at == 0 {
		return false
	}
	l := int(binary.BigEndian.Uint16(cl.wbuf[at+2:]))
	if l < 4 {
		return false
	}
	copy(cl.wbuf[at:], []byte{0, optCodeKeepalive, 0, 0, 0, optCodePadding, byte((l - 4) >> 8), byte(l - 4)})
	return true
}

// keepaliveLocked takes in the idle timeout the server states in a, the
// answer to the query that asked for it: the connection retires idle after
// three quarters of it, before the server closes it under a query, or drains
// at once when the server asks the client to close (a timeout of zero).
func (c *conn) keepaliveLocked(a *dns.Msg) {
	opt := a.IsEdns0()
	if opt == nil {
		return
	}
	for _, o := range opt.Option {
		if k, ok := o.(*dns.EDNS0_TCP_KEEPALIVE); ok {
			if k.Timeout == 0 {
				c.drainLocked()
				return
			}
			c.idleMax = time.Duration(k.Timeout) * 100 * time.Millisecond * 3 / 4
			return
		}
	}
}
