package dotstub

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coredns/coredns/plugin"
	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// ednsQuery returns a query for www.example.org. A whose client sent EDNS.
func ednsQuery() *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	m.SetEdns0(1232, true)
	return m
}

// edeOf returns the Extended DNS Errors of a.
func edeOf(a *dns.Msg) []*dns.EDNS0_EDE {
	var out []*dns.EDNS0_EDE
	if opt := a.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok {
				out = append(out, e)
			}
		}
	}
	return out
}

// TestServfailSaysWhy: a SERVFAIL that dotstub makes itself carries an
// Extended DNS Error that says why, written once by dotstub; CoreDNS, told
// by the rcode that an answer was written, writes none.
func TestServfailSaysWhy(t *testing.T) {
	other, err := dottest.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		stanza func(t *testing.T) string
		code   uint16
		text   string
	}{
		{"pin mismatch", func(t *testing.T) string {
			srv := dottest.New(t, dottest.Options{})
			return fmt.Sprintf("dotstub . %s {\n tls %s\n pin_sha256 %s\n}", upstreamFor(srv), caFile(t, srv), other.Pin())
		}, dns.ExtendedErrorCodeNoReachableAuthority, "pin mismatch"},
		{"certificate", func(t *testing.T) string {
			srv := dottest.New(t, dottest.Options{})
			path := filepath.Join(t.TempDir(), "other.pem")
			if err := os.WriteFile(path, other.PEM, 0o600); err != nil {
				t.Fatal(err)
			}
			return fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(srv), path)
		}, dns.ExtendedErrorCodeNoReachableAuthority, "certificate"},
		{"pin mismatch and certificate", func(t *testing.T) string {
			a, b := dottest.New(t, dottest.Options{}), dottest.New(t, dottest.Options{})
			return fmt.Sprintf("dotstub . %s %s {\n tls %s\n pin_sha256 %s\n policy sequential\n}",
				upstreamFor(a), upstreamFor(b), caFile(t, a), other.Pin())
		}, dns.ExtendedErrorCodeNoReachableAuthority, "pin mismatch or certificate"},
		{"timeout", func(t *testing.T) string {
			release := make(chan struct{})
			srv := dottest.New(t, dottest.Options{Handler: stalling(release)})
			t.Cleanup(func() { close(release) }) // before srv closes: cleanups run last first
			return fmt.Sprintf("dotstub . %s {\n tls %s\n timeout 200ms\n}", upstreamFor(srv), caFile(t, srv))
		}, dns.ExtendedErrorCodeNoReachableAuthority, "timeout"},
		{"refused", func(t *testing.T) string {
			srv := dottest.New(t, dottest.Options{})
			srv.Close()
			return fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(srv), caFile(t, srv))
		}, dns.ExtendedErrorCodeNetworkError, "no upstream could be reached"},
		{"bad answers", func(t *testing.T) string {
			srv := dottest.New(t, dottest.Options{Wire: unparseable})
			return fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(srv), caFile(t, srv))
		}, dns.ExtendedErrorCodeOther, "malformed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newDotstub(t, tc.stanza(t))
			m := ednsQuery()
			rcode, a, err := serve(t, d, false, m)
			if !plugin.ClientWrite(rcode) || err == nil {
				t.Fatalf("ServeDNS = %d, %v: want an rcode that tells CoreDNS the answer is written, and the error", rcode, err)
			}
			if a == nil || a.Rcode != dns.RcodeServerFailure || a.Id != m.Id || a.IsEdns0() == nil || !a.IsEdns0().Do() {
				t.Fatalf("written: %v; want SERVFAIL with the query's ID and EDNS, DO as the query", a)
			}
			ede := edeOf(a)
			if len(ede) != 1 || ede[0].InfoCode != tc.code || !strings.Contains(ede[0].ExtraText, tc.text) {
				t.Errorf("EDE %v; want one, code %d, its text holding %q", ede, tc.code, tc.text)
			}
			if !strings.HasPrefix(err.Error(), "SERVFAIL") {
				t.Errorf("error %q: the errors plugin logs it with rcode 0, so it must say SERVFAIL", err)
			}
		})
	}
}

func TestServfailMarkedDownSaysWhy(t *testing.T) {
	rcode, ans, err := serve(t, allDown(t), false, ednsQuery())
	if !plugin.ClientWrite(rcode) || !errors.Is(err, ErrNoHealthy) || ans == nil {
		t.Fatalf("ServeDNS = %d, %v, %v; want the answer written and %v", rcode, ans, err, ErrNoHealthy)
	}
	if ede := edeOf(ans); len(ede) != 1 || ede[0].InfoCode != dns.ExtendedErrorCodeNoReachableAuthority || !strings.Contains(ede[0].ExtraText, "marked down") {
		t.Errorf("EDE %v; want No Reachable Authority, every upstream marked down", ede)
	}
}

// TestServfailWithoutEDNS: a client that sent no EDNS cannot take an EDE:
// SERVFAIL is returned for CoreDNS to write, as forward does.
func TestServfailWithoutEDNS(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	srv.Close()
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(srv), caFile(t, srv)))
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	if rcode, a, err := serve(t, d, false, m); rcode != dns.RcodeServerFailure || a != nil || err == nil {
		t.Errorf("ServeDNS = %d, %v, %v; want SERVFAIL for CoreDNS to write, and the error", rcode, a, err)
	}
}

// TestUpstreamEDEPassesThrough: an upstream's own SERVFAIL and its EDE reach
// the client unchanged.
func TestUpstreamEDEPassesThrough(t *testing.T) {
	srv := dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		a := new(dns.Msg)
		a.SetRcode(q, dns.RcodeServerFailure)
		a.SetEdns0(1232, true)
		opt := a.IsEdns0()
		opt.Option = append(opt.Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeDNSBogus, ExtraText: "signature expired"})
		return a
	}})
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(srv), caFile(t, srv)))
	rcode, a, err := serve(t, d, false, ednsQuery())
	if rcode != dns.RcodeSuccess || err != nil || a == nil || a.Rcode != dns.RcodeServerFailure {
		t.Fatalf("ServeDNS = %d, %v, %v; want the upstream's SERVFAIL written", rcode, a, err)
	}
	if ede := edeOf(a); len(ede) != 1 || ede[0].InfoCode != dns.ExtendedErrorCodeDNSBogus || ede[0].ExtraText != "signature expired" {
		t.Errorf("EDE %v; want the upstream's: DNSSEC Bogus, signature expired", ede)
	}
}
