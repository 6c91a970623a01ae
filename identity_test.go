package dotstub

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
	"github.com/dotstub/dotstub/plugin/upstream"
)

// TestPerUpstreamIdentity runs one stanza over two upstreams that have
// different CAs and keys, each given its own CA (tls_ca) and leaf pin
// (pin_sha256), one selected by server name and the other by address. Each
// must verify with its own identity, and with no other.
func TestPerUpstreamIdentity(t *testing.T) {
	const a, b = 0, 1
	tests := []struct {
		name   string
		first  int    // the upstream tried first (policy sequential)
		pins   [2]int // whose leaf pin upstream a, b is given
		cas    [2]int // whose CA file upstream a, b is given
		reason [2]string
	}{
		{name: "a first, each its own identity", first: a, pins: [2]int{a, b}, cas: [2]int{a, b}, reason: [2]string{"ok", "ok"}},
		{name: "b first, each its own identity", first: b, pins: [2]int{a, b}, cas: [2]int{a, b}, reason: [2]string{"ok", "ok"}},
		{name: "a given b's pin", first: a, pins: [2]int{b, b}, cas: [2]int{a, b}, reason: [2]string{"pin_mismatch", "ok"}},
		{name: "b given a's pin", first: b, pins: [2]int{a, a}, cas: [2]int{a, b}, reason: [2]string{"ok", "pin_mismatch"}},
		{name: "a given b's CA", first: a, pins: [2]int{a, b}, cas: [2]int{b, b}, reason: [2]string{"verify_failed", "ok"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Each server makes its own CA and leaf key.
			srv := [2]*dottest.Server{
				dottest.New(t, dottest.Options{Names: []string{"a.test"}}),
				dottest.New(t, dottest.Options{Names: []string{"b.test"}}),
			}
			to := [2]string{}
			for i, name := range []string{"a.test", "b.test"} {
				host, port, _ := net.SplitHostPort(srv[i].Addr)
				to[i] = fmt.Sprintf("tls://%s%%%s:%s", host, name, port)
			}
			order := [2]int{tc.first, 1 - tc.first}
			selA, selB := "a.test", srv[b].Addr // by name, by address
			d := newDotstub(t, fmt.Sprintf("dotstub . %s %s {\n policy sequential\n"+
				" tls_ca %s %s\n pin_sha256 %s %s\n tls_ca %s %s\n pin_sha256 %s %s\n}",
				to[order[0]], to[order[1]],
				selA, caFile(t, srv[tc.cas[a]]), selA, srv[tc.pins[a]].Leaf.Pin(),
				selB, caFile(t, srv[tc.cas[b]]), selB, srv[tc.pins[b]].Leaf.Pin()))

			// Each upstream's own TLS configuration, dialled directly.
			for i, u := range d.upstreams {
				up := order[i]
				conn, err := tls.Dial("tcp", srv[up].Addr, u.Config().Pool.TLS)
				if err == nil {
					conn.Close()
				}
				if got := upstream.Reason(err); got != tc.reason[up] {
					t.Errorf("dial %s: %s (%v), want %s", u.Name(), got, err, tc.reason[up])
				}
			}

			// A query goes to the first upstream that passes validation.
			want := tc.first
			if tc.reason[want] != "ok" {
				want = 1 - want
			}
			m := new(dns.Msg)
			m.SetQuestion("www.example.org.", dns.TypeA)
			if rcode, ans, err := serve(t, d, false, m); rcode != dns.RcodeSuccess || ans == nil || len(ans.Answer) != 1 {
				t.Fatalf("ServeDNS = %d, %v, %v", rcode, ans, err)
			}
			d.OnShutdown()
			if n := srv[want].Queries(); n != 1 {
				t.Errorf("upstream %s received %d queries, want 1", to[want], n)
			}
			other := 1 - want
			if n := srv[other].Queries(); n != 0 {
				t.Errorf("upstream %s received %d queries, want 0", to[other], n)
			}
			if tc.reason[other] != "ok" {
				srv[other].Close()
				if n := srv[other].BytesRead(); n != 0 {
					t.Errorf("upstream %s failed validation but received %d bytes", to[other], n)
				}
			}
		})
	}
}

// TestTLSCARelativePath checks that tls_ca resolves a relative path against
// the root plugin's directory, as tls does.
func TestTLSCARelativePath(t *testing.T) {
	ca, err := dottest.NewCA("relative.example")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	c := caddy.NewTestController("dns", "dotstub . 192.0.2.1 192.0.2.2 {\n tls_ca 192.0.2.2 ca.pem\n}")
	dnsserver.GetConfig(c).Root = dir
	ds, err := parse(c)
	if err != nil {
		t.Fatal(err)
	}
	if got := ds[0].upstreams[0].Config().Pool.TLS.RootCAs; got != nil {
		t.Error("192.0.2.1: RootCAs set, want the system roots")
	}
	if got := ds[0].upstreams[1].Config().Pool.TLS.RootCAs; !ca.Pool.Equal(got) {
		t.Error("192.0.2.2: RootCAs is not the CA in the root directory")
	}
}
