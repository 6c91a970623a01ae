package dot

import (
	"encoding/binary"
	"errors"
)

// Privacy says how a query is changed on its way to an upstream.
type Privacy struct {
	// PadBlock pads each query with an EDNS(0) Padding option (RFC 7830)
	// to a multiple of this many bytes; RFC 8467 recommends 128. Zero pads
	// nothing. A query without EDNS(0) gets an OPT record for the padding,
	// removed again from the answer.
	PadBlock int
	// StripSubnet removes the EDNS Client Subnet option (RFC 7871), so the
	// upstream never learns the client's network.
	StripSubnet bool
}

// DefaultPadBlock is the block size RFC 8467 recommends for queries.
const DefaultPadBlock = 128

const (
	optCodeSubnet  = 8
	optCodePadding = 12
	typeOPT        = 41
	rrFixedLen     = 10   // type, class, TTL, RDLENGTH after an RR's owner name
	optUDPSize     = 1232 // the OPT we add: a payload size that never fragments
)

var (
	errNoEdit  = errors.New("query left as packed")
	errTooLong = errors.New("query too long to pad")
)

// protect edits msg, a packed query, as p says, in place within buf's
// capacity or in a new buffer, and returns the edited message, whether it
// added an OPT record, and where in it the padding option starts (zero when
// not padded: it is the last bytes). A message it cannot edit safely (an OPT
// record that is not last, as with TSIG, or a malformed one), or whose edited
// form would be longer than maxLen, is returned as is, unchanged, with an
// error.
func protect(msg []byte, p Privacy, maxLen int) (out []byte, addedOPT bool, padAt int, err error) {
	if p.PadBlock <= 0 && !p.StripSubnet {
		return msg, false, 0, nil
	}
	opt, optEnd, err := findOPT(msg)
	if err != nil {
		return msg, false, 0, err
	}
	if opt < 0 && p.PadBlock <= 0 { // no EDNS(0), nothing to strip
		return msg, false, 0, nil
	}
	if opt >= 0 && optEnd != len(msg) {
		return msg, false, 0, errNoEdit // TSIG or SIG(0) must stay last
	}
	// Measure first: check every option's length, and the edited length,
	// before the first change, so that a message left as is is left
	// exactly as it was.
	n := len(msg)
	if opt < 0 {
		n += 1 + rrFixedLen
	} else {
		r := opt + 1 + rrFixedLen
		for r+4 <= optEnd {
			code := binary.BigEndian.Uint16(msg[r:])
			l := 4 + int(binary.BigEndian.Uint16(msg[r+2:]))
			if r+l > optEnd {
				return msg, false, 0, errNoEdit
			}
			if dropped(code, p) {
				n -= l
			}
			r += l
		}
		n -= optEnd - r // bytes too few for an option are dropped
	}
	pad := 0
	if p.PadBlock > 0 {
		pad = (p.PadBlock - (n+4)%p.PadBlock) % p.PadBlock
		n += 4 + pad
	}
	if n > maxLen {
		return msg, false, 0, errTooLong
	}

	if opt < 0 {
		msg = append(msg, 0, 0, typeOPT, byte(optUDPSize>>8), byte(optUDPSize&0xff), 0, 0, 0, 0, 0, 0)
		binary.BigEndian.PutUint16(msg[10:], binary.BigEndian.Uint16(msg[10:])+1) // ARCOUNT
		opt, optEnd, addedOPT = len(msg)-rrFixedLen-1, len(msg), true
	}
	// Keep every option but those dropped.
	rdata := opt + 1 + rrFixedLen
	w := rdata
	for r := rdata; r+4 <= optEnd; {
		l := 4 + int(binary.BigEndian.Uint16(msg[r+2:]))
		if !dropped(binary.BigEndian.Uint16(msg[r:]), p) {
			w += copy(msg[w:], msg[r:r+l])
		}
		r += l
	}
	msg = msg[:w]
	if p.PadBlock > 0 {
		padAt = len(msg)
		msg = append(msg, 0, optCodePadding, byte(pad>>8), byte(pad))
		for range pad {
			msg = append(msg, 0)
		}
	}
	binary.BigEndian.PutUint16(msg[rdata-2:], uint16(len(msg)-rdata)) // RDLENGTH
	return msg, addedOPT, padAt, nil
}

// dropped reports whether protect takes out the option code: padding, which
// it pads anew; edns-tcp-keepalive, which is about the client's own
// connection (RFC 7828 section 3.1), not ours to the upstream; and the client
// subnet when asked.
func dropped(code uint16, p Privacy) bool {
	return code == optCodePadding || code == optCodeKeepalive || p.StripSubnet && code == optCodeSubnet
}

// findOPT returns where msg's OPT record starts and ends, or -1 if it has
// none.
func findOPT(msg []byte) (start, end int, err error) {
	if len(msg) < headerLen {
		return 0, 0, errNoEdit
	}
	qd := int(binary.BigEndian.Uint16(msg[4:]))
	rrs := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:]))
	ar := int(binary.BigEndian.Uint16(msg[10:]))
	off := headerLen
	for range qd {
		if off, err = skipName(msg, off); err != nil {
			return 0, 0, err
		}
		off += 4
	}
	start = -1
	for i := range rrs + ar {
		rr := off
		if off, err = skipName(msg, off); err != nil {
			return 0, 0, err
		}
		if off+rrFixedLen > len(msg) {
			return 0, 0, errNoEdit
		}
		typ := binary.BigEndian.Uint16(msg[off:])
		off += rrFixedLen + int(binary.BigEndian.Uint16(msg[off+8:]))
		if off > len(msg) {
			return 0, 0, errNoEdit
		}
		if typ == typeOPT && i >= rrs {
			if start >= 0 || msg[rr] != 0 { // two OPTs, or not owned by the root
				return 0, 0, errNoEdit
			}
			start, end = rr, off
		}
	}
	if off != len(msg) {
		return 0, 0, errNoEdit
	}
	return start, end, nil
}

// skipName returns the offset after the domain name at off.
func skipName(msg []byte, off int) (int, error) {
	for n := 0; n < 128; n++ {
		if off >= len(msg) {
			return 0, errNoEdit
		}
		switch l := int(msg[off]); {
		case l == 0:
			return off + 1, nil
		case l&0xc0 == 0xc0: // compression pointer: the name ends here
			if off+2 > len(msg) {
				return 0, errNoEdit
			}
			return off + 2, nil
		case l&0xc0 != 0:
			return 0, errNoEdit
		default:
			off += 1 + l
		}
	}
	return 0, errNoEdit
}
