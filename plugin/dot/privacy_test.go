package dot

import (
	"bytes"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

func packed(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func withEDNS(do bool, opts ...dns.EDNS0) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	m.SetEdns0(4096, do)
	m.IsEdns0().Option = opts
	return m
}

func subnet() *dns.EDNS0_SUBNET {
	return &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(198, 51, 100, 0).To4()}
}

func TestProtect(t *testing.T) {
	plain := new(dns.Msg)
	plain.SetQuestion("www.example.org.", dns.TypeA)
	cookie := &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}
	tsig := withEDNS(false)
	tsig.SetTsig("key.", dns.HmacSHA256, 300, 0)
	tsig.Extra = append(tsig.Extra, &dns.TSIG{Hdr: dns.RR_Header{Name: "key.", Rrtype: dns.TypeTSIG, Class: dns.ClassANY}, Algorithm: dns.HmacSHA256, MAC: "00", OrigId: 1})

	tests := []struct {
		name      string
		in        *dns.Msg
		p         Privacy
		wantAdded bool
		wantOpts  []uint16 // option codes left, padding last when padded
		wantDO    bool
	}{
		{name: "no EDNS: an OPT for the padding", in: plain, p: Privacy{PadBlock: 128}, wantAdded: true, wantOpts: []uint16{dns.EDNS0PADDING}},
		{name: "EDNS with DO: padding added, DO kept", in: withEDNS(true), p: Privacy{PadBlock: 128}, wantOpts: []uint16{dns.EDNS0PADDING}, wantDO: true},
		{name: "client subnet kept by default", in: withEDNS(false, subnet(), cookie), p: Privacy{PadBlock: 128}, wantOpts: []uint16{dns.EDNS0SUBNET, dns.EDNS0COOKIE, dns.EDNS0PADDING}},
		{name: "client subnet stripped", in: withEDNS(false, subnet(), cookie), p: Privacy{PadBlock: 128, StripSubnet: true}, wantOpts: []uint16{dns.EDNS0COOKIE, dns.EDNS0PADDING}},
		{name: "stripped, not padded", in: withEDNS(false, cookie, subnet()), p: Privacy{StripSubnet: true}, wantOpts: []uint16{dns.EDNS0COOKIE}},
		{name: "the client's padding replaced", in: withEDNS(false, &dns.EDNS0_PADDING{Padding: make([]byte, 300)}), p: Privacy{PadBlock: 128}, wantOpts: []uint16{dns.EDNS0PADDING}},
		{name: "other block size", in: withEDNS(false), p: Privacy{PadBlock: 468}, wantOpts: []uint16{dns.EDNS0PADDING}},
		{name: "the client's edns-tcp-keepalive dropped: hop by hop", in: withEDNS(false, &dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE}, cookie),
			p: Privacy{PadBlock: 128}, wantOpts: []uint16{dns.EDNS0COOKIE, dns.EDNS0PADDING}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := packed(t, tc.in)
			out, added, _, err := protect(bytes.Clone(in), tc.p, maxQueryLen)
			if err != nil {
				t.Fatal(err)
			}
			if added != tc.wantAdded {
				t.Errorf("added OPT %v, want %v", added, tc.wantAdded)
			}
			if tc.p.PadBlock > 0 && len(out)%tc.p.PadBlock != 0 {
				t.Errorf("%d bytes, not a multiple of %d", len(out), tc.p.PadBlock)
			}
			m := new(dns.Msg)
			if err := m.Unpack(out); err != nil {
				t.Fatalf("edited query does not unpack: %v", err)
			}
			opt := m.IsEdns0()
			if opt == nil {
				t.Fatal("no OPT")
			}
			var codes []uint16
			for _, o := range opt.Option {
				codes = append(codes, o.Option())
			}
			if !bytes.Equal(u16s(codes), u16s(tc.wantOpts)) {
				t.Errorf("options %v, want %v", codes, tc.wantOpts)
			}
			if opt.Do() != tc.wantDO || opt.UDPSize() == 0 {
				t.Errorf("DO %v size %d, want DO %v", opt.Do(), opt.UDPSize(), tc.wantDO)
			}
			if m.Question[0] != tc.in.Question[0] || m.Id != tc.in.Id {
				t.Errorf("question or ID changed: %v", m)
			}
		})
	}

	t.Run("TSIG last: left as packed", func(t *testing.T) {
		in := packed(t, tsig)
		if out, _, _, err := protect(bytes.Clone(in), Privacy{PadBlock: 128}, maxQueryLen); err == nil || !bytes.Equal(out, in) {
			t.Errorf("err %v; want the query left as it was", err)
		}
	})
	t.Run("nothing asked: left as packed", func(t *testing.T) {
		in := packed(t, plain)
		if out, added, _, err := protect(bytes.Clone(in), Privacy{}, maxQueryLen); err != nil || added || !bytes.Equal(out, in) {
			t.Errorf("changed: %v, %v", added, err)
		}
	})
}

func u16s(v []uint16) []byte {
	var b []byte
	for _, x := range v {
		b = append(b, byte(x>>8), byte(x))
	}
	return b
}

func TestPaddedOnTheWire(t *testing.T) {
	seen := make(chan int, 4)
	srv := dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		seen <- q.Len()
		return dottest.Answer(q)
	}})
	p := newPool(t, srv, nil)
	for _, m := range []*dns.Msg{withEDNS(false), func() *dns.Msg { m := new(dns.Msg); m.SetQuestion("a.example.org.", dns.TypeA); return m }()} {
		hadOPT := m.IsEdns0() != nil
		a, err := exchangePadded(t, p, m)
		if err != nil {
			t.Fatal(err)
		}
		if n := <-seen; n%DefaultPadBlock != 0 {
			t.Errorf("upstream got a %d-byte query, want a multiple of %d", n, DefaultPadBlock)
		}
		if opt := a.IsEdns0(); (opt != nil) != hadOPT {
			t.Errorf("answer OPT %v to a query with OPT %v", opt, hadOPT)
		} else if opt != nil {
			for _, o := range opt.Option {
				if o.Option() == dns.EDNS0PADDING {
					t.Error("padding in the answer to a client that sent none")
				}
			}
		}
	}
	if srv.BytesRead()%(DefaultPadBlock) != 2*2 { // two frames, each with its 2-byte length
		t.Errorf("%d bytes on the wire for two padded queries", srv.BytesRead())
	}
}

// FuzzProtect: whatever a packed query holds, protect does not panic, and
// leaves a query it cannot edit as it was. A valid query it edits still
// unpacks into the same message but for its OPT record: the same header,
// sections and OPT fields, the same options in the same order less padding
// (and the client subnet when stripped), then zero padding to the block; and
// it reports an added OPT exactly when the query had none.
func FuzzProtect(f *testing.F) {
	plain := new(dns.Msg)
	plain.SetQuestion("www.example.org.", dns.TypeA)
	f.Add(packed(f, plain), true, uint8(128))
	f.Add(packed(f, withEDNS(true, subnet())), false, uint8(128))
	f.Add(packed(f, withEDNS(false, &dns.EDNS0_PADDING{Padding: make([]byte, 7)})), true, uint8(128))
	f.Add(packed(f, withEDNS(false, subnet(), &dns.EDNS0_PADDING{Padding: make([]byte, 7)})), true, uint8(0))
	f.Add(packed(f, withEDNS(false, &dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE, Timeout: 10})), false, uint8(128))
	f.Fuzz(func(t *testing.T, msg []byte, strip bool, block uint8) {
		p := Privacy{PadBlock: int(block), StripSubnet: strip}
		in := new(dns.Msg)
		valid := in.Unpack(msg) == nil
		maxLen := maxQueryLen
		if len(msg) > 0 {
			maxLen = len(msg) + int(msg[0])%300 // at times too short for the edit
		}
		out, added, padAt, err := protect(bytes.Clone(msg), p, maxLen)
		if err != nil {
			if !bytes.Equal(out, msg) {
				t.Fatal("a query protect could not edit was changed")
			}
			return
		}
		if p == (Privacy{}) {
			if added || !bytes.Equal(out, msg) {
				t.Fatal("a query was changed with nothing asked")
			}
			return
		}
		if len(out) > maxLen {
			t.Fatalf("%d bytes, past the %d allowed", len(out), maxLen)
		}
		if p.PadBlock > 0 && len(out)%p.PadBlock != 0 {
			t.Fatalf("%d bytes, not a multiple of %d", len(out), p.PadBlock)
		}
		if p.PadBlock > 0 && (padAt < headerLen || padAt+4 > len(out) || out[padAt] != 0 || out[padAt+1] != optCodePadding ||
			padAt+4+int(out[padAt+2])<<8+int(out[padAt+3]) != len(out)) {
			t.Fatalf("padAt %d does not start the padding option, the last bytes of %d", padAt, len(out))
		}
		if !valid {
			return
		}
		o := new(dns.Msg)
		if err := o.Unpack(out); err != nil {
			t.Fatalf("a valid query no longer unpacks after protect: %v", err)
		}
		if fault := protectFault(in, o, p, added); fault != "" {
			t.Fatalf("%s\nin:\n%v\nout:\n%v", fault, in, o)
		}
	})
}

// protectFault says how out, a query as protect edited it with p, differs
// from in, the query as the client sent it, beyond what p asks for; added is
// what protect reported.
func protectFault(in, out *dns.Msg, p Privacy, added bool) string {
	inOpt, outOpt := in.IsEdns0(), out.IsEdns0()
	switch {
	case in.MsgHdr != out.MsgHdr:
		return "header changed"
	case !slices.Equal(in.Question, out.Question):
		return "question changed"
	case !sameRRs(in.Answer, out.Answer) || !sameRRs(in.Ns, out.Ns):
		return "answer or authority section changed"
	case !sameRRs(withoutOPT(in.Extra), withoutOPT(out.Extra)):
		return "additional records changed"
	case len(out.Extra)-len(withoutOPT(out.Extra)) > 1:
		return "more than one OPT record"
	case added != (inOpt == nil && p.PadBlock > 0):
		return fmt.Sprintf("added OPT %t with PadBlock %d and an OPT in the query %t", added, p.PadBlock, inOpt != nil)
	case inOpt == nil && outOpt == nil:
		return ""
	case outOpt == nil:
		return "OPT record lost"
	}
	if inOpt != nil {
		ih, oh := inOpt.Hdr, outOpt.Hdr
		ih.Rdlength, oh.Rdlength = 0, 0
		if ih != oh {
			return fmt.Sprintf("OPT header %v, was %v", oh, ih)
		}
	}
	var want []dns.EDNS0
	if inOpt != nil {
		for _, o := range inOpt.Option {
			if c := o.Option(); c != dns.EDNS0PADDING && c != dns.EDNS0TCPKEEPALIVE && !(p.StripSubnet && c == dns.EDNS0SUBNET) {
				want = append(want, o)
			}
		}
	}
	got := outOpt.Option
	if p.PadBlock > 0 {
		if len(got) == 0 || got[len(got)-1].Option() != dns.EDNS0PADDING {
			return "no padding option last"
		}
		if pad := got[len(got)-1].(*dns.EDNS0_PADDING).Padding; bytes.ContainsFunc(pad, func(r rune) bool { return r != 0 }) {
			return "padding not zero"
		}
		got = got[:len(got)-1]
	}
	if len(got) != len(want) {
		return fmt.Sprintf("options %v, want %v", got, want)
	}
	for i := range got {
		if got[i].Option() != want[i].Option() || got[i].String() != want[i].String() {
			return fmt.Sprintf("option %d is %v, want %v", i, got[i], want[i])
		}
	}
	return ""
}

func withoutOPT(rrs []dns.RR) []dns.RR {
	var out []dns.RR
	for _, rr := range rrs {
		if _, ok := rr.(*dns.OPT); !ok {
			out = append(out, rr)
		}
	}
	return out
}

func sameRRs(a, b []dns.RR) bool {
	return slices.EqualFunc(a, b, func(x, y dns.RR) bool { return x.String() == y.String() })
}

// TestQueryTooLongToPadIsSentAsPacked: a query that padding would take past
// 65,535 bytes is sent as the client packed it, untouched by a half-done
// edit.
func TestQueryTooLongToPadIsSentAsPacked(t *testing.T) {
	m := new(dns.Msg)
	m.SetQuestion("big.example.org.", dns.TypeTXT)
	for m.Len() < maxQueryLen-300 {
		m.Extra = append(m.Extra, &dns.TXT{Hdr: dns.RR_Header{Name: "big.example.org.", Rrtype: dns.TypeTXT, Class: dns.ClassINET},
			Txt: []string{strings.Repeat("x", 250)}})
	}
	for m.Len() < maxQueryLen-20 { // short of the limit by less than the OPT record padding needs
		m.Extra = append(m.Extra, &dns.A{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IPv4(192, 0, 2, 1)})
	}
	want := packed(t, m)
	q, err := NewQuery(m, Privacy{PadBlock: DefaultPadBlock, StripSubnet: true})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Release()
	if got := q.frame[2:]; !bytes.Equal(got, want) {
		o := new(dns.Msg)
		t.Fatalf("a %d-byte query went out as %d bytes that are not the client's (unpack: %v)", len(want), len(got), o.Unpack(got))
	}
	if q.addedOPT || q.padAt != 0 {
		t.Errorf("addedOPT %v, padAt %d for a query left as packed", q.addedOPT, q.padAt)
	}
}
