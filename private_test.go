package dotstub

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

func TestPrivateNamesStayHome(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	ca := caFile(t, srv)
	stanza := func(from, opts string) string {
		return fmt.Sprintf("dotstub %s %s {\n tls %s\n %s\n}", from, upstreamFor(srv), ca, opts)
	}
	const fwd = "forwarded"
	tests := []struct {
		name   string
		qtype  uint16
		want   string // fwd, an RCODE, or the record answered
		zone   string // the SOA's owner when answered here with none
		stanza string
	}{
		{name: "localhost.", qtype: dns.TypeA, want: "127.0.0.1"},
		{name: "LocalHost.", qtype: dns.TypeA, want: "127.0.0.1"},
		{name: "db.localhost.", qtype: dns.TypeAAAA, want: "::1"},
		{name: "localhost.", qtype: dns.TypeMX, want: "NOERROR", zone: "localhost."},
		{name: "1.0.0.127.in-addr.arpa.", qtype: dns.TypePTR, want: "localhost."},
		{name: "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.", qtype: dns.TypePTR, want: "localhost."},
		{name: "printer.local.", qtype: dns.TypeA, want: "NXDOMAIN", zone: "local."},
		{name: "nas.home.arpa.", qtype: dns.TypeA, want: "NXDOMAIN", zone: "home.arpa."},
		{name: "home.arpa.", qtype: dns.TypeSOA, want: "NOERROR", zone: "home.arpa."},
		{name: "git.corp.internal.", qtype: dns.TypeA, want: "NXDOMAIN", zone: "internal."},
		{name: "example.onion.", qtype: dns.TypeA, want: "NXDOMAIN", zone: "onion."},
		{name: "a.invalid.", qtype: dns.TypeA, want: "NXDOMAIN", zone: "invalid."},
		{name: "5.1.168.192.in-addr.arpa.", qtype: dns.TypePTR, want: "NXDOMAIN", zone: "168.192.in-addr.arpa."},
		{name: "1.0.0.10.in-addr.arpa.", qtype: dns.TypePTR, want: "NXDOMAIN", zone: "10.in-addr.arpa."},
		{name: "1.1.31.172.in-addr.arpa.", qtype: dns.TypePTR, want: "NXDOMAIN", zone: "31.172.in-addr.arpa."},
		{name: "1.1.64.100.in-addr.arpa.", qtype: dns.TypePTR, want: "NXDOMAIN", zone: "64.100.in-addr.arpa."},
		{name: "1.1.254.169.in-addr.arpa.", qtype: dns.TypePTR, want: "NXDOMAIN", zone: "254.169.in-addr.arpa."},
		{name: reverse(t, "fd00::1"), qtype: dns.TypePTR, want: "NXDOMAIN", zone: "d.f.ip6.arpa."},
		{name: reverse(t, "fe80::1"), qtype: dns.TypePTR, want: "NXDOMAIN", zone: "8.e.f.ip6.arpa."},

		// Not private: forwarded.
		{name: "1.1.32.172.in-addr.arpa.", qtype: dns.TypePTR, want: fwd},
		{name: "1.2.0.192.in-addr.arpa.", qtype: dns.TypePTR, want: fwd},
		{name: "www.example.org.", qtype: dns.TypeA, want: fwd},
		{name: "svc.test.", qtype: dns.TypeA, want: fwd},
		{name: "local.example.org.", qtype: dns.TypeA, want: fwd},
		{name: "arpa.", qtype: dns.TypeNS, want: fwd},

		// Turned off, or asked for.
		{name: "printer.local.", qtype: dns.TypeA, want: fwd, stanza: stanza(".", "private_names off")},
		{name: "nas.home.arpa.", qtype: dns.TypeA, want: fwd, stanza: stanza("home.arpa", "")},
		{name: "nas.home.arpa.", qtype: dns.TypeA, want: "NXDOMAIN", zone: "home.arpa.", stanza: stanza("arpa", "")},
	}
	plain := newDotstub(t, stanza(".", ""))
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s %s %s", tc.name, dns.TypeToString[tc.qtype], tc.stanza), func(t *testing.T) {
			d := plain
			if tc.stanza != "" {
				d = newDotstub(t, tc.stanza)
			}
			m := new(dns.Msg)
			m.SetQuestion(tc.name, tc.qtype)
			m.SetEdns0(1232, false)
			before := srv.Queries()
			_, a, err := serve(t, d, false, m)
			if err != nil || a == nil {
				t.Fatalf("no answer: %v", err)
			}
			forwarded := srv.Queries() > before
			if tc.want == fwd {
				if !forwarded {
					t.Errorf("answered here, not forwarded:\n%v", a)
				}
				return
			}
			if forwarded {
				t.Fatalf("forwarded to the upstream")
			}
			got := dns.RcodeToString[a.Rcode]
			if len(a.Answer) == 1 {
				switch rr := a.Answer[0].(type) {
				case *dns.A:
					got = rr.A.String()
				case *dns.AAAA:
					got = rr.AAAA.String()
				case *dns.PTR:
					got = rr.Ptr
				}
			}
			if got != tc.want {
				t.Errorf("got %s, want %s:\n%v", got, tc.want, a)
			}
			if tc.zone != "" && (len(a.Ns) != 1 || a.Ns[0].Header().Name != tc.zone || a.Ns[0].Header().Rrtype != dns.TypeSOA) {
				t.Errorf("authority %v, want the SOA of %s", a.Ns, tc.zone)
			}
			if a.IsEdns0() == nil {
				t.Error("no OPT record in the answer to a query with EDNS(0)")
			}
		})
	}
}

// TestPrivateNameExcepted: a private zone that has an internal server is
// excepted and goes to the next plugin, as README's split-horizon example
// does.
func TestPrivateNameExcepted(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n except corp.internal\n}", upstreamFor(srv), caFile(t, srv)))
	m := new(dns.Msg)
	m.SetQuestion("git.corp.internal.", dns.TypeA)
	rcode, _, _ := serve(t, d, false, m)
	if rcode != dns.RcodeNotZone { // newDotstub's next plugin answers NOTZONE
		t.Errorf("rcode %s; want the next plugin's", dns.RcodeToString[rcode])
	}
}

func reverse(t *testing.T, ip string) string {
	t.Helper()
	r, err := dns.ReverseAddr(net.ParseIP(ip).String())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// FuzzPrivateZone: whatever name a client asks, privateZone does not panic,
// and a zone it returns is a private zone that holds the name.
func FuzzPrivateZone(f *testing.F) {
	for _, s := range []string{"localhost.", "a.b.home.arpa.", "1.0.0.127.in-addr.arpa.", "x.", ".", "arpa.", "A..local."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		z := privateZone(name)
		if z != "" && (!privateZones[z] || !dns.IsSubDomain(z, strings.ToLower(dns.Fqdn(name)))) {
			t.Fatalf("privateZone(%q) = %q", name, z)
		}
	})
}
