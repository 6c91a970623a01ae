package dot

import (
	"bytes"
	"net"
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
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := packed(t, tc.in)
			out, added, err := protect(bytes.Clone(in), tc.p)
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
		if out, _, err := protect(bytes.Clone(in), Privacy{PadBlock: 128}); err == nil || !bytes.Equal(out, in) {
			t.Errorf("err %v; want the query left as it was", err)
		}
	})
	t.Run("nothing asked: left as packed", func(t *testing.T) {
		in := packed(t, plain)
		if out, added, err := protect(bytes.Clone(in), Privacy{}); err != nil || added || !bytes.Equal(out, in) {
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
		q, err := NewQuery(m, Privacy{PadBlock: DefaultPadBlock})
		if err != nil {
			t.Fatal(err)
		}
		a, err := p.Exchange(t.Context(), q)
		q.Release()
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
// what it returns without error unpacks, padded to the block.
func FuzzProtect(f *testing.F) {
	plain := new(dns.Msg)
	plain.SetQuestion("www.example.org.", dns.TypeA)
	f.Add(packed(f, plain), true)
	f.Add(packed(f, withEDNS(true, subnet())), false)
	f.Add(packed(f, withEDNS(false, &dns.EDNS0_PADDING{Padding: make([]byte, 7)})), true)
	f.Fuzz(func(t *testing.T, msg []byte, strip bool) {
		valid := new(dns.Msg).Unpack(msg) == nil
		out, _, err := protect(bytes.Clone(msg), Privacy{PadBlock: 128, StripSubnet: strip})
		if err != nil {
			if !bytes.Equal(out, msg) {
				t.Fatal("a query protect could not edit was changed")
			}
			return
		}
		if len(out)%128 != 0 {
			t.Fatalf("%d bytes", len(out))
		}
		if valid {
			if err := new(dns.Msg).Unpack(out); err != nil {
				t.Fatalf("a valid query no longer unpacks after protect: %v", err)
			}
		}
	})
}
