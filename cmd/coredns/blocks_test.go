//go:build linux

package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// TestBlocksKeepTheirOwnSeries: two server blocks on one port ask one
// upstream; the second pins a key the upstream does not have. Each block's
// series say what that block saw: the first healthy, connected and
// answering, the second marked down after pin mismatches, and nothing of one
// shows in the other's.
func TestBlocksKeepTheirOwnSeries(t *testing.T) {
	bin := buildCoreDNS(t)
	f := newPinFixture(t)
	srv, foreign, dir, ca, to := f.srv, f.foreign, f.dir, f.ca, f.to
	port, mport := freePort(t), freePort(t)
	cd := startCoreDNS(t, bin, dir, fmt.Sprintf(`.:%[1]s {
    bind 127.0.0.1
    prometheus 127.0.0.1:%[2]s
    dotstub . %[3]s {
        tls %[4]s
        pin_sha256 %[5]s
    }
}
corp.example:%[1]s {
    bind 127.0.0.1
    dotstub . %[3]s {
        tls %[4]s
        pin_sha256 %[6]s
    }
}
`, port, mport, to, ca, srv.Leaf.Pin(), foreign.Leaf.Pin()))
	addr := "127.0.0.1:" + port

	ask := func(name string) int {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		a, err := dns.Exchange(m, addr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return a.Rcode
	}
	for range 3 {
		if rc := ask("www.example.org."); rc != dns.RcodeSuccess {
			t.Fatalf("block .: %s, want NOERROR", dns.RcodeToString[rc])
		}
		if rc := ask("www.corp.example."); rc != dns.RcodeServerFailure {
			t.Fatalf("block corp.example.: %s, want SERVFAIL (pinned to another key)", dns.RcodeToString[rc])
		}
	}
	if _, ok := cd.waitLog("marked down", 10*time.Second); !ok {
		t.Fatalf("the upstream was not marked down in corp.example.:\n%s", cd.logText())
	}

	s := &scraper{metrics: "http://127.0.0.1:" + mport + "/metrics"}
	page, err := s.get(s.metrics)
	if err != nil {
		t.Fatal(err)
	}
	server := `server="dns://` + addr + `"`
	if metricSum(page, "coredns_dns_requests_total", server) == 0 {
		t.Fatalf("no coredns_dns_requests_total with %s: dotstub's server label must be CoreDNS's", server)
	}
	root, corp := []string{server, `zones="."`, `to="` + to + `"`}, []string{server, `zones="corp.example."`, `to="` + to + `"`}
	for _, c := range []struct {
		name       string
		match      []string
		root, corp float64 // the value in each block; -1: more than zero
	}{
		{"coredns_dotstub_upstream_healthy", nil, 1, 0},
		{"coredns_dotstub_conns", nil, -1, 0},
		{"coredns_dotstub_dials_total", []string{`result="ok"`}, -1, 0},
		{"coredns_dotstub_dials_total", []string{`result="pin_mismatch"`}, 0, -1},
		{"coredns_dotstub_request_duration_seconds_count", nil, 3, 0},
		{"coredns_dotstub_upstream_errors_total", nil, 0, -1},
	} {
		for _, b := range []struct {
			labels []string
			want   float64
		}{{root, c.root}, {corp, c.corp}} {
			got := metricSum(page, c.name, append(b.labels, c.match...)...)
			if c.name == "coredns_dotstub_upstream_healthy" || c.name == "coredns_dotstub_conns" {
				if !hasSeries(page, c.name, b.labels...) {
					t.Errorf("no series %s{%s}", c.name, strings.Join(b.labels, ","))
					continue
				}
			}
			if b.want < 0 && got <= 0 || b.want >= 0 && got != b.want {
				t.Errorf("%s{%s} = %v, want %v (-1: more than zero)", c.name, strings.Join(append(b.labels, c.match...), ","), got, b.want)
			}
		}
	}
	if n := srv.Queries(); n != 3 {
		t.Errorf("the upstream received %d queries, want the 3 of block .: none from the block that refuses its key", n)
	}
}

// pinFixture is a DoT upstream, another server with the same CA and another
// key (a key to pin that the upstream does not have), a directory holding the
// CA's certificate, and the upstream as a TO.
type pinFixture struct {
	srv, foreign *dottest.Server
	dir, ca, to  string
}

func newPinFixture(t *testing.T) pinFixture {
	t.Helper()
	f := pinFixture{srv: dottest.New(t, dottest.Options{}), dir: t.TempDir()}
	f.foreign = dottest.New(t, dottest.Options{CA: f.srv.CA})
	f.ca = filepath.Join(f.dir, "ca.pem")
	if err := os.WriteFile(f.ca, f.srv.CA.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(f.srv.Addr)
	f.to = fmt.Sprintf("tls://%s%%%s:%s", host, dottest.DefaultName, port)
	return f
}

// hasSeries reports whether page holds a series of name whose labels hold
// each of match.
func hasSeries(page, name string, match ...string) bool {
	for _, line := range strings.Split(page, "\n") {
		labels, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		all := true
		for _, m := range match {
			all = all && strings.Contains(labels, m)
		}
		if all {
			return true
		}
	}
	return false
}
