package dot

import (
	"bytes"
	"encoding/binary"

	"github.com/miekg/dns"
)

// Unpacking answers. miekg/dns allocates once for the message, once for each
// section's slice, once for each name and each record, and once more for each
// address: seven allocations for an answer with one A record, most of an
// exchange's, and six more for an OPT record with a padding option, as DoT
// servers send (RFC 8467). unpackFast builds the same message from the
// answers most queries get with three or four: the message with its
// question, a few record slots and its OPT record; every name in one
// string; the records of each other type in one array; and the padding.
// Anything else it leaves to miekg/dns, and FuzzUnpackFast holds it to
// building what miekg/dns builds, field for field, from any bytes.

// unpackAnswer returns the message in buf, or nil if it does not unpack.
func unpackAnswer(buf []byte) *dns.Msg {
	if a, ok := unpackFast(buf); ok {
		return a
	}
	a := new(dns.Msg)
	if a.Unpack(buf) != nil {
		return nil
	}
	return a
}

const (
	// fastRRs is the most records unpackFast takes; fastInline of them
	// live in the message's own allocation.
	fastRRs    = 16
	fastInline = 4
	// fastWire bounds a name's wire length for unpackFast, below the 255
	// octets past which miekg/dns refuses a name; fastHops bounds the
	// compression pointers it follows for one name.
	fastWire = 250
	fastHops = 8
)

// fastRR is one record as unpackFast reads it: names are indexes into
// fastUnpacker.names, rdata is where its data starts in the message.
type fastRR struct {
	hdr          dns.RR_Header // without its name
	name, n1, n2 uint8         // owner; the name in CNAME, NS or PTR data, or SOA's ns; SOA's mbox
	rdata        int
}

// fastUnpacker holds what unpackFast has read, on its caller's stack.
// Every distinct name it reads is appended, in presentation format, to a text
// its methods take and return, so that the text can start in a buffer on
// the stack.
type fastUnpacker struct {
	buf   []byte
	names [1 + 3*fastRRs][2]uint16 // each name's span in the text
	n     int                      // names
	rrs   [fastRRs]fastRR
	count [len(fastTypes)]int // records of each type in fastTypes' order
}

// fastTypes are the types unpackFast takes; an index into it is a kind.
var fastTypes = [...]uint16{dns.TypeA, dns.TypeAAAA, dns.TypeCNAME, dns.TypeNS, dns.TypePTR, dns.TypeSOA, dns.TypeOPT}

const (
	kindA = iota
	kindAAAA
	kindCNAME
	kindNS
	kindPTR
	kindSOA
	kindOPT
)

type (
	fastA struct {
		dns.A
		ip [4]byte
	}
	fastAAAA struct {
		dns.AAAA
		ip [16]byte
	}
)

// unpackFast unpacks buf as dns.Msg.Unpack does, when buf is of the shape
// most answers have: one question; at most fastRRs records, each A, AAAA,
// CNAME, NS, PTR, SOA, or OPT (one at most, with no option or one padding
// option),
// whose data is exactly what the type holds; names of letters, digits, '-',
// '_' and '*' (nothing miekg/dns escapes), compressed by pointers to earlier
// bytes only; nothing after the last record. It reports false for anything
// else.
func unpackFast(buf []byte) (*dns.Msg, bool) {
	if len(buf) < headerLen || binary.BigEndian.Uint16(buf[4:]) != 1 {
		return nil, false
	}
	an, ns, ar := int(binary.BigEndian.Uint16(buf[6:])), int(binary.BigEndian.Uint16(buf[8:])), int(binary.BigEndian.Uint16(buf[10:]))
	total := an + ns + ar
	if total > fastRRs {
		return nil, false
	}
	var textBuf [512]byte
	u := fastUnpacker{buf: buf}
	t, qname, off, ok := u.name(textBuf[:0], headerLen, len(buf))
	if !ok || off+4 > len(buf) {
		return nil, false
	}
	qtype, qclass := binary.BigEndian.Uint16(buf[off:]), binary.BigEndian.Uint16(buf[off+2:])
	off += 4
	for i := range total {
		if t, off, ok = u.record(t, &u.rrs[i], off); !ok {
			return nil, false
		}
	}
	if off != len(buf) || u.count[kindOPT] > 1 {
		return nil, false
	}

	text := string(t)
	name := func(i uint8) string { return text[u.names[i][0]:u.names[i][1]] }
	m := new(struct {
		dns.Msg
		q   [1]dns.Question
		rr  [fastInline]dns.RR
		opt dns.OPT
		eo  [1]dns.EDNS0
		pad dns.EDNS0_PADDING
	})
	if m.Msg.Unpack(buf[:headerLen]) != nil { // the header alone, as miekg/dns reads it
		return nil, false
	}
	m.q[0] = dns.Question{Name: name(qname), Qtype: qtype, Qclass: qclass}
	m.Question = m.q[:]
	rrs := m.rr[:min(total, fastInline)]
	if total > fastInline {
		rrs = make([]dns.RR, total)
	}
	as, aaaas := slots[fastA](u.count[kindA]), slots[fastAAAA](u.count[kindAAAA])
	cnames, nss, ptrs := slots[dns.CNAME](u.count[kindCNAME]), slots[dns.NS](u.count[kindNS]), slots[dns.PTR](u.count[kindPTR])
	soas := slots[dns.SOA](u.count[kindSOA])
	for i := range total {
		r := &u.rrs[i]
		h := r.hdr
		h.Name = name(r.name)
		switch rd := buf[r.rdata : r.rdata+int(h.Rdlength)]; h.Rrtype {
		case dns.TypeA:
			as = append(as, fastA{A: dns.A{Hdr: h}})
			a := &as[len(as)-1]
			copy(a.ip[:], rd)
			a.A.A = a.ip[:]
			rrs[i] = &a.A
		case dns.TypeAAAA:
			aaaas = append(aaaas, fastAAAA{AAAA: dns.AAAA{Hdr: h}})
			a := &aaaas[len(aaaas)-1]
			copy(a.ip[:], rd)
			a.AAAA.AAAA = a.ip[:]
			rrs[i] = &a.AAAA
		case dns.TypeCNAME:
			cnames = append(cnames, dns.CNAME{Hdr: h, Target: name(r.n1)})
			rrs[i] = &cnames[len(cnames)-1]
		case dns.TypeNS:
			nss = append(nss, dns.NS{Hdr: h, Ns: name(r.n1)})
			rrs[i] = &nss[len(nss)-1]
		case dns.TypePTR:
			ptrs = append(ptrs, dns.PTR{Hdr: h, Ptr: name(r.n1)})
			rrs[i] = &ptrs[len(ptrs)-1]
		case dns.TypeSOA:
			e := binary.BigEndian
			soas = append(soas, dns.SOA{Hdr: h, Ns: name(r.n1), Mbox: name(r.n2),
				Serial: e.Uint32(rd[len(rd)-20:]), Refresh: e.Uint32(rd[len(rd)-16:]), Retry: e.Uint32(rd[len(rd)-12:]),
				Expire: e.Uint32(rd[len(rd)-8:]), Minttl: e.Uint32(rd[len(rd)-4:])})
			rrs[i] = &soas[len(soas)-1]
		default: // dns.TypeOPT, without options or with one padding option
			m.opt.Hdr = h
			if len(rd) > 0 {
				if len(rd) > 4 { // as miekg/dns: no padding is nil
					m.pad.Padding = append([]byte(nil), rd[4:]...)
				}
				m.eo[0] = &m.pad
				m.opt.Option = m.eo[:]
			}
			rrs[i] = &m.opt
		}
	}
	section := func(from, n int) []dns.RR {
		if n == 0 {
			return nil
		}
		return rrs[from : from+n : from+n]
	}
	m.Answer, m.Ns, m.Extra = section(0, an), section(an, ns), section(an+ns, ar)
	if opt := m.IsEdns0(); opt != nil {
		m.Rcode |= opt.ExtendedRcode()
	}
	return &m.Msg, true
}

// slots returns room for n records of one type, in one allocation; nil for
// none.
func slots[T any](n int) []T {
	if n == 0 {
		return nil
	}
	return make([]T, 0, n)
}

// record reads the record at off into r, and returns the offset after it.
func (u *fastUnpacker) record(t []byte, r *fastRR, off int) (_ []byte, next int, ok bool) {
	buf := u.buf
	if t, r.name, off, ok = u.name(t, off, len(buf)); !ok || off+10 > len(buf) {
		return t, 0, false
	}
	e := binary.BigEndian
	r.hdr = dns.RR_Header{Rrtype: e.Uint16(buf[off:]), Class: e.Uint16(buf[off+2:]), Ttl: e.Uint32(buf[off+4:]), Rdlength: e.Uint16(buf[off+8:])}
	r.rdata = off + 10
	end := r.rdata + int(r.hdr.Rdlength)
	if end > len(buf) {
		return t, 0, false
	}
	kind := -1
	for k, t := range fastTypes {
		if t == r.hdr.Rrtype {
			kind = k
		}
	}
	switch kind {
	case kindA:
		ok = r.hdr.Rdlength == 4
	case kindAAAA:
		ok = r.hdr.Rdlength == 16
	case kindCNAME, kindNS, kindPTR: // names in rdata end where it does, as miekg/dns reads them
		t, r.n1, next, ok = u.name(t, r.rdata, end)
		ok = ok && r.hdr.Rdlength > 0 && next == end
	case kindSOA:
		t, r.n1, next, ok = u.name(t, r.rdata, end)
		if ok {
			t, r.n2, next, ok = u.name(t, next, end)
		}
		ok = ok && r.hdr.Rdlength > 0 && next+20 == end
	case kindOPT:
		rd := buf[r.rdata:end]
		ok = len(rd) == 0 || len(rd) >= 4 && e.Uint16(rd) == dns.EDNS0PADDING && int(e.Uint16(rd[2:])) == len(rd)-4
	default:
		ok = false
	}
	if !ok {
		return t, 0, false
	}
	u.count[kind]++
	return t, end, true
}

// name reads the name at off, whose bytes must lie before limit, appends it
// to t unless it equals one read before, and returns its index in u.names
// and the offset after it.
func (u *fastUnpacker) name(t []byte, off, limit int) (_ []byte, idx uint8, next int, ok bool) {
	buf, from := u.buf, len(t)
	next = -1
	wire, hops := 0, 0
	for {
		if off >= limit {
			return t, 0, 0, false
		}
		c := int(buf[off])
		if c == 0 {
			if next < 0 {
				next = off + 1
			}
			break
		}
		switch c & 0xC0 {
		case 0xC0:
			if off+1 >= limit {
				return t, 0, 0, false
			}
			ptr := (c&0x3F)<<8 | int(buf[off+1])
			if hops++; ptr >= off || hops > fastHops {
				return t, 0, 0, false
			}
			if next < 0 {
				next = off + 2
			}
			off = ptr
			continue
		case 0:
		default: // 0x40 and 0x80 are reserved
			return t, 0, 0, false
		}
		label := buf[min(off+1, limit):min(off+1+c, limit)]
		if wire += c + 1; len(label) < c || wire > fastWire {
			return t, 0, 0, false
		}
		for _, b := range label {
			if !plainByte[b] {
				return t, 0, 0, false
			}
		}
		t = append(append(t, label...), '.')
		off += 1 + c
	}
	if len(t) == from {
		t = append(t, '.')
	}
	text := t[from:]
	for i := range u.n {
		if s := u.names[i]; bytes.Equal(t[s[0]:s[1]], text) {
			t = t[:from]
			return t, uint8(i), next, true
		}
	}
	if len(t) > 1<<16-1 {
		return t, 0, 0, false
	}
	u.names[u.n] = [2]uint16{uint16(from), uint16(len(t))}
	u.n++
	return t, uint8(u.n - 1), next, true
}

// plainByte holds the bytes a label may have for unpackFast: those that
// miekg/dns writes as they are.
var plainByte = func() (t [256]bool) {
	for b := '0'; b <= '9'; b++ {
		t[b] = true
	}
	for b := 'a'; b <= 'z'; b++ {
		t[b], t[b-'a'+'A'] = true, true
	}
	t['-'], t['_'], t['*'] = true, true, true
	return t
}()
