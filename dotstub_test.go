package dotstub

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/dotstub/dotstub/plugin/dottest"
	"github.com/dotstub/dotstub/plugin/upstream"
)

// caFile writes srv's CA to a file and returns its path.
func caFile(t *testing.T, srv *dottest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, srv.CA.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// newDotstub parses corefile, starts the first stanza and stops it when t ends.
func newDotstub(t *testing.T, corefile string) *Dotstub {
	t.Helper()
	d, _ := watchedDotstub(t, corefile)
	return d
}

// watchedDotstub is newDotstub, and returns as well a channel for each
// upstream that receives its health changes (true: marked down), from its
// Changed hook.
func watchedDotstub(t *testing.T, corefile string) (*Dotstub, []chan bool) {
	t.Helper()
	ds, err := parse(caddy.NewTestController("dns", corefile))
	if err != nil {
		t.Fatalf("parse %q: %v", corefile, err)
	}
	d := ds[0]
	d.Next = test.NextHandler(dns.RcodeNotZone, nil)
	changes := make([]chan bool, len(d.upstreams))
	for i, u := range d.upstreams {
		ch := make(chan bool, 1024)
		cfg := u.Config()
		logged := cfg.Changed
		cfg.Changed = func(down bool, cause error) {
			logged(down, cause)
			select {
			case ch <- down:
			default: // the test reads only the changes it waits for
			}
		}
		w := upstream.New(cfg)
		d.upstreams[i], d.series[w], changes[i] = w, d.series[u], ch
		delete(d.series, u)
	}
	if err := d.OnStartup(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.OnShutdown() })
	return d, changes
}

// upstreamFor returns a TO for srv with the default server name.
func upstreamFor(srv *dottest.Server) string {
	host, port, _ := net.SplitHostPort(srv.Addr)
	return fmt.Sprintf("tls://%s%%%s:%s", host, dottest.DefaultName, port)
}

// serve runs one query through d as the CoreDNS server would: with the
// ScrubWriter that fits answers to the client's buffer.
func serve(t *testing.T, d plugin.Handler, tcp bool, m *dns.Msg) (int, *dns.Msg, error) {
	t.Helper()
	rec := dnstest.NewRecorder(&test.ResponseWriter{TCP: tcp})
	rcode, err := d.ServeDNS(context.Background(), request.NewScrubWriter(m, rec), m)
	return rcode, rec.Msg, err
}

func TestServeDNS(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n pin_sha256 %s\n}", upstreamFor(srv), caFile(t, srv), srv.Leaf.Pin()))

	tests := []struct {
		name     string
		qname    string
		qtype    uint16
		tcp      bool
		bufsize  uint16 // EDNS0 buffer size; 0 sends no OPT
		do       bool
		rcode    int
		answers  int // records in the answer section
		tc       bool
		hasRRSIG bool
	}{
		{name: "A over UDP", qname: "www.example.org.", qtype: dns.TypeA, answers: 1},
		{name: "A over TCP", qname: "www.example.org.", qtype: dns.TypeA, tcp: true, answers: 1},
		{name: "AAAA", qname: "www.example.org.", qtype: dns.TypeAAAA, answers: 1},
		{name: "NXDOMAIN", qname: "nx.example.org.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "NODATA", qname: "www.example.org.", qtype: dns.TypeMX},
		{name: "large TXT over TCP", qname: "big.example.org.", qtype: dns.TypeTXT, tcp: true, answers: 40},
		{name: "large TXT over UDP is truncated", qname: "big.example.org.", qtype: dns.TypeTXT, tc: true, answers: 4},
		{name: "large TXT over UDP with EDNS0 is truncated to fit", qname: "big.example.org.", qtype: dns.TypeTXT, bufsize: 1232, tc: true, answers: 10},
		{name: "DO bit brings RRSIG", qname: "www.example.org.", qtype: dns.TypeA, bufsize: 1232, do: true, answers: 2, hasRRSIG: true},
		{name: "EDNS0 without DO", qname: "www.example.org.", qtype: dns.TypeA, bufsize: 1232, answers: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := new(dns.Msg)
			m.SetQuestion(tc.qname, tc.qtype)
			m.Id = 777
			if tc.bufsize > 0 {
				m.SetEdns0(tc.bufsize, tc.do)
			}
			rcode, a, err := serve(t, d, tc.tcp, m)
			if err != nil || rcode != dns.RcodeSuccess || a == nil {
				t.Fatalf("ServeDNS = %d, %v, %v", rcode, a, err)
			}
			if a.Id != 777 || a.Rcode != tc.rcode || a.Truncated != tc.tc || len(a.Answer) != tc.answers {
				t.Errorf("answer id %d rcode %d tc %v with %d answers; want 777, %d, %v, %d\n%s",
					a.Id, a.Rcode, a.Truncated, len(a.Answer), tc.rcode, tc.tc, tc.answers, a)
			}
			if opt := a.IsEdns0(); (opt != nil) != (tc.bufsize > 0) || opt != nil && opt.Do() != tc.do {
				t.Errorf("answer OPT %v, want EDNS0 %v with DO %v", opt, tc.bufsize > 0, tc.do)
			}
			gotRRSIG := false
			for _, rr := range a.Answer {
				gotRRSIG = gotRRSIG || rr.Header().Rrtype == dns.TypeRRSIG
			}
			if gotRRSIG != tc.hasRRSIG {
				t.Errorf("RRSIG in answer: %v, want %v", gotRRSIG, tc.hasRRSIG)
			}
			if !(&request.Request{Req: m}).Match(a) {
				t.Errorf("answer does not match the query: %s", a)
			}
		})
	}
	if n := srv.Accepted(); n != 1 {
		t.Errorf("%d upstream connections for %d queries, want 1", n, len(tests))
	}
}

func TestFromAndExcept(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	d := newDotstub(t, fmt.Sprintf("dotstub example.org %s {\n tls %s\n except private.example.org\n}", upstreamFor(srv), caFile(t, srv)))
	tests := []struct {
		qname string
		next  bool
	}{
		{"www.example.org.", false},
		{"example.org.", false},
		{"www.example.net.", true},
		{"host.private.example.org.", true},
		{"private.example.org.", true},
	}
	for _, tc := range tests {
		m := new(dns.Msg)
		m.SetQuestion(tc.qname, dns.TypeA)
		rcode, _, _ := serve(t, d, false, m)
		if gotNext := rcode == dns.RcodeNotZone; gotNext != tc.next {
			t.Errorf("%s: went to the next plugin: %v, want %v", tc.qname, gotNext, tc.next)
		}
	}
	if n := srv.Queries(); n != 2 {
		t.Errorf("upstream received %d queries, want 2", n)
	}
}

func TestValidationFailureServfails(t *testing.T) {
	other, err := dottest.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	otherPin := other.Pin()
	tests := []struct {
		name   string
		stanza func(srv *dottest.Server, ca string) string
	}{
		{"pin mismatch", func(srv *dottest.Server, ca string) string {
			return fmt.Sprintf("dotstub . %s {\n tls %s\n pin_sha256 %s\n}", upstreamFor(srv), ca, otherPin)
		}},
		{"untrusted CA", func(srv *dottest.Server, _ string) string {
			path := filepath.Join(t.TempDir(), "other.pem")
			os.WriteFile(path, other.PEM, 0o600)
			return fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(srv), path)
		}},
		{"wrong name", func(srv *dottest.Server, ca string) string {
			return fmt.Sprintf("dotstub . %s {\n tls %s\n tls_servername wrong.test\n}", srv.Addr, ca)
		}},
		{"no name: IP not in the certificate", func(srv *dottest.Server, ca string) string {
			return fmt.Sprintf("dotstub . %s {\n tls %s\n}", srv.Addr, ca)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := dottest.New(t, dottest.Options{})
			d := newDotstub(t, tc.stanza(srv, caFile(t, srv)))
			for range 3 {
				m := new(dns.Msg)
				m.SetQuestion("www.example.org.", dns.TypeA)
				if rcode, a, err := serve(t, d, false, m); rcode != dns.RcodeServerFailure || a != nil || err == nil {
					t.Errorf("ServeDNS = %d, %v, %v; want SERVFAIL for CoreDNS to write, and the error", rcode, a, err)
				}
			}
			d.OnShutdown()
			srv.Close()
			if srv.BytesRead() != 0 || srv.Queries() != 0 {
				t.Errorf("server that failed validation received %d bytes, %d queries", srv.BytesRead(), srv.Queries())
			}
		})
	}
}

func TestFailoverToNextUpstream(t *testing.T) {
	good := dottest.New(t, dottest.Options{})
	down := dottest.New(t, dottest.Options{CA: good.CA})
	down.Close() // refuses connections
	d := newDotstub(t, fmt.Sprintf("dotstub . %s %s {\n tls %s\n policy sequential\n}", upstreamFor(down), upstreamFor(good), caFile(t, good)))
	for i := range 5 {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("q%d.example.org.", i), dns.TypeA)
		if rcode, a, err := serve(t, d, false, m); rcode != dns.RcodeSuccess || a == nil || len(a.Answer) != 1 {
			t.Fatalf("query %d: ServeDNS = %d, %v, %v", i, rcode, a, err)
		}
	}
	if good.Queries() != 5 {
		t.Errorf("good upstream answered %d of 5", good.Queries())
	}
}

func TestBadAnswerServfails(t *testing.T) {
	srv := dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		q = q.Copy()
		q.Question[0].Name = "evil.example.net."
		return dottest.Answer(q)
	}})
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(srv), caFile(t, srv)))
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	if rcode, a, _ := serve(t, d, false, m); rcode != dns.RcodeServerFailure || a != nil {
		t.Errorf("ServeDNS = %d, %v; want SERVFAIL and no answer written", rcode, a)
	}
}

func TestMaxConcurrent(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	srv := dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		if strings.HasPrefix(q.Question[0].Name, "hold.") {
			arrived <- struct{}{}
			<-release
		}
		return dottest.Answer(q)
	}})
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n max_concurrent 1\n}", upstreamFor(srv), caFile(t, srv)))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		m := new(dns.Msg)
		m.SetQuestion("hold.example.org.", dns.TypeA)
		if rcode, _, err := serve(t, d, false, m); rcode != dns.RcodeSuccess {
			t.Errorf("held query: %d, %v", rcode, err)
		}
	}()
	<-arrived
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	if rcode, _, err := serve(t, d, false, m); rcode != dns.RcodeRefused || err != ErrLimitExceeded {
		t.Errorf("query over max_concurrent: %d, %v; want REFUSED", rcode, err)
	}
	close(release)
	wg.Wait()
}

func TestShutdownLeavesNothing(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	leaks := goleak.IgnoreCurrent() // srv's listener, which runs until the test ends
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(srv), caFile(t, srv)))
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	if rcode, _, err := serve(t, d, false, m); rcode != dns.RcodeSuccess {
		t.Fatal(rcode, err)
	}
	d.OnShutdown()
	d.OnShutdown()
	// The upstream's goroutines for dotstub's connections end once those
	// close: none is ignored.
	goleak.VerifyNone(t, leaks)
}
