package dotstub

import (
	"fmt"
	"net"
	"testing"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// TestPaddingAndSubnet sends queries through the plugin and looks at what the
// upstream received and what the client got back.
func TestPaddingAndSubnet(t *testing.T) {
	type seen struct {
		len    int
		subnet bool
	}
	got := make(chan seen, 1)
	srv := dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		s := seen{len: q.Len()}
		if opt := q.IsEdns0(); opt != nil {
			for _, o := range opt.Option {
				s.subnet = s.subnet || o.Option() == dns.EDNS0SUBNET
			}
		}
		got <- s
		return dottest.Answer(q)
	}})
	query := func(edns, ecs bool) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion("www.example.org.", dns.TypeA)
		if edns {
			m.SetEdns0(1232, false)
		}
		if ecs {
			m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(198, 51, 100, 0).To4()})
		}
		return m
	}
	for _, tc := range []struct {
		name       string
		opts       string
		edns, ecs  bool
		wantPadded bool
		wantSubnet bool
	}{
		{name: "padded by default, client without EDNS", wantPadded: true},
		{name: "padded by default, client with EDNS", edns: true, wantPadded: true},
		{name: "padding off", opts: "padding off", edns: true},
		{name: "client subnet passes by default", edns: true, ecs: true, wantPadded: true, wantSubnet: true},
		{name: "strip_client_subnet", opts: "strip_client_subnet", edns: true, ecs: true, wantPadded: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n %s\n}", upstreamFor(srv), caFile(t, srv), tc.opts))
			m := query(tc.edns, tc.ecs)
			before := m.String()
			rcode, a, err := serve(t, d, false, m)
			if err != nil || rcode != dns.RcodeSuccess || a == nil {
				t.Fatalf("ServeDNS = %d, %v, %v", rcode, a, err)
			}
			s := <-got
			if padded := s.len%128 == 0; padded != tc.wantPadded {
				t.Errorf("upstream got %d bytes: padded %v, want %v", s.len, padded, tc.wantPadded)
			}
			if s.subnet != tc.wantSubnet {
				t.Errorf("upstream saw a client subnet %v, want %v", s.subnet, tc.wantSubnet)
			}
			opt := a.IsEdns0()
			if (opt != nil) != tc.edns {
				t.Errorf("answer OPT %v to a client that sent EDNS %v", opt, tc.edns)
			}
			if opt != nil {
				for _, o := range opt.Option {
					if o.Option() == dns.EDNS0PADDING {
						t.Error("padding reached the client")
					}
				}
			}
			if m.String() != before {
				t.Errorf("the client's message was changed:\n%s\nwant\n%s", m, before)
			}
		})
	}
}
