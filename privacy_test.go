package dotstub

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/coredns/caddy"
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

func TestParsePrivacyOptions(t *testing.T) {
	for _, tc := range []struct {
		input   string
		pad     int
		strip   bool
		wantErr string
	}{
		{input: "max_fails 2", pad: 128},
		{input: "padding off"},
		{input: "padding 468", pad: 468},
		{input: "padding", wantErr: "padding: wrong argument count"},
		{input: "padding 8", wantErr: `padding: "8" is neither off nor a block size from 16 to 1024 bytes`},
		{input: "padding on", wantErr: `padding: "on" is neither off nor a block size from 16 to 1024 bytes`},
		{input: "strip_client_subnet", pad: 128, strip: true},
		{input: "strip_client_subnet yes", wantErr: "strip_client_subnet: wrong argument count"},
	} {
		t.Run(tc.input, func(t *testing.T) {
			ds, err := parse(caddy.NewTestController("dns", "dotstub . 192.0.2.1 {\n"+tc.input+"\n}"))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), "Testfile:2 - Error during parsing: "+tc.wantErr) {
					t.Fatalf("error %v, want %q on line 2", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p := ds[0].privacy; p.PadBlock != tc.pad || p.StripSubnet != tc.strip {
				t.Errorf("privacy %+v, want padding %d, strip %v", p, tc.pad, tc.strip)
			}
		})
	}
}
