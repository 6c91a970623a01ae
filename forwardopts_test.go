package dotstub

import (
	"cmp"
	"fmt"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// The tests here show what each option dotstub takes from forward does, not
// only that it parses (setup_test.go has the parsing).

func TestMaxConnectAttempts(t *testing.T) {
	// a fails validation (a CA the stanza does not trust), so a query moves
	// on to b at once, unless one attempt is all it may make.
	a := dottest.New(t, dottest.Options{})
	b := dottest.New(t, dottest.Options{Handler: answering("192.0.2.2")})
	stanza := func(opt string) string {
		return fmt.Sprintf("dotstub . %s %s {\n tls %s\n policy sequential\n %s\n}",
			upstreamFor(a), upstreamFor(b), caFile(t, b), opt)
	}
	for _, tc := range []struct {
		opt  string
		want string // the answer, or "" for SERVFAIL
	}{
		{opt: "", want: "192.0.2.2"},
		{opt: "max_connect_attempts 0", want: "192.0.2.2"},
		{opt: "max_connect_attempts 2", want: "192.0.2.2"},
		{opt: "max_connect_attempts 1", want: ""},
	} {
		t.Run(cmp.Or(tc.opt, "default"), func(t *testing.T) {
			d := newDotstub(t, stanza(tc.opt))
			before := b.Queries()
			got, err := ask(t, d, "www.example.org")
			switch {
			case tc.want == "" && err == nil:
				t.Errorf("answered %s; want SERVFAIL after one attempt", got)
			case tc.want != "" && got != tc.want:
				t.Errorf("got %q, %v; want %s from the second upstream", got, err, tc.want)
			case tc.want == "" && b.Queries() != before:
				t.Error("the second upstream was asked")
			}
		})
	}
}

func TestHealthCheckNoRec(t *testing.T) {
	for _, tc := range []struct {
		opt    string
		wantRD bool
	}{
		{opt: "health_check 1s", wantRD: true},
		{opt: "health_check 1s no_rec", wantRD: false},
		{opt: "health_check 1s no_rec domain probe.example.net", wantRD: false},
	} {
		t.Run(tc.opt, func(t *testing.T) {
			rd := make(chan bool, 1)
			srv := dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
				if q.Question[0].Qtype == dns.TypeNS {
					rd <- q.RecursionDesired
				}
				return dottest.Answer(q)
			}})
			d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n %s\n}", upstreamFor(srv), caFile(t, srv), tc.opt))
			if err := d.upstreams[0].Probe(); err != nil {
				t.Fatal(err)
			}
			if got := <-rd; got != tc.wantRD {
				t.Errorf("probe with RD %v, want %v", got, tc.wantRD)
			}
		})
	}
}

func TestReadTimeout(t *testing.T) {
	srv := dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		time.Sleep(300 * time.Millisecond) // the fault: a slow upstream
		return dottest.Answer(q)
	}})
	ca := caFile(t, srv)
	for _, tc := range []struct {
		opt    string
		answer bool
	}{
		{opt: "", answer: true},                   // the one upstream gets all of timeout (2s)
		{opt: "read_timeout 3s", answer: true},    //
		{opt: "read_timeout 50ms", answer: false}, // given up after 50ms
	} {
		t.Run(cmp.Or(tc.opt, "default"), func(t *testing.T) {
			d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n %s\n}", upstreamFor(srv), ca, tc.opt))
			_, err := ask(t, d, "www.example.org")
			if (err == nil) != tc.answer {
				t.Errorf("error %v; want an answer: %v", err, tc.answer)
			}
		})
	}
}

// chained returns a dotstub for first with opts, whose next plugin is next.
func chained(t *testing.T, first *dottest.Server, next plugin.Handler, opts string) *Dotstub {
	t.Helper()
	ds, err := parse(caddy.NewTestController("dns", fmt.Sprintf("dotstub . %s {\n tls %s\n %s\n}", upstreamFor(first), caFile(t, first), opts)))
	if err != nil {
		t.Fatal(err)
	}
	d := ds[0]
	d.Next = next
	if err := d.OnStartup(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.OnShutdown() })
	return d
}

func TestNext(t *testing.T) {
	a, b := pair(t, nil, func(q *dns.Msg) *dns.Msg { // b answers every question, with 192.0.2.2 or a TXT
		r := new(dns.Msg)
		r.SetReply(q)
		hdr := dns.RR_Header{Name: q.Question[0].Name, Rrtype: q.Question[0].Qtype, Class: dns.ClassINET, Ttl: 60}
		if q.Question[0].Qtype == dns.TypeA {
			r.Answer = append(r.Answer, &dns.A{Hdr: hdr, A: []byte{192, 0, 2, 2}})
		} else {
			hdr.Rrtype = dns.TypeTXT
			r.Answer = append(r.Answer, &dns.TXT{Hdr: hdr, Txt: []string{"from b"}})
		}
		return r
	})
	second := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(b), caFile(t, b)))
	other := test.NextHandler(dns.RcodeRefused, nil) // not a dotstub or forward
	for _, tc := range []struct {
		name  string
		next  plugin.Handler
		opts  string
		qtype uint16
		qname string
		want  string // "b": the next dotstub answered; else the RCODE the client got from a
	}{
		{name: "NXDOMAIN kept", next: second, qname: "nx.example.org.", qtype: dns.TypeA, want: "NXDOMAIN"},
		{name: "next NXDOMAIN", next: second, opts: "next NXDOMAIN", qname: "nx.example.org.", qtype: dns.TypeA, want: "b"},
		{name: "next NXDOMAIN, an answer kept", next: second, opts: "next NXDOMAIN", qname: "www.example.org.", qtype: dns.TypeA, want: "NOERROR"},
		{name: "next, but no dotstub next", next: other, opts: "next NXDOMAIN", qname: "nx.example.org.", qtype: dns.TypeA, want: "NXDOMAIN"},
		{name: "NODATA kept", next: second, qname: "www.example.org.", qtype: dns.TypeMX, want: "NOERROR"},
		{name: "next_on_nodata", next: second, opts: "next_on_nodata", qname: "www.example.org.", qtype: dns.TypeMX, want: "b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := chained(t, a, tc.next, tc.opts)
			m := new(dns.Msg)
			m.SetQuestion(tc.qname, tc.qtype)
			_, r, err := serve(t, d, false, m)
			if err != nil || r == nil {
				t.Fatalf("no answer: %v", err)
			}
			got := dns.RcodeToString[r.Rcode]
			if fromB(r) {
				got = "b"
			}
			if got != tc.want {
				t.Errorf("got %s, want %s:\n%v", got, tc.want, r)
			}
		})
	}
}

// fromB reports whether r is TestNext's second upstream's answer.
func fromB(r *dns.Msg) bool {
	if len(r.Answer) != 1 {
		return false
	}
	switch rr := r.Answer[0].(type) {
	case *dns.A:
		return rr.A.String() == "192.0.2.2"
	case *dns.TXT:
		return true
	}
	return false
}

func TestForceTCPSaysSo(t *testing.T) {
	logs := captureLog(t)
	srv := dottest.New(t, dottest.Options{})
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n force_tcp\n}", upstreamFor(srv), caFile(t, srv)))
	if _, err := ask(t, d, "www.example.org"); err != nil {
		t.Fatal(err)
	}
	if len(logs.matching("force_tcp", "changes nothing")) != 1 {
		t.Error("force_tcp was not logged once at start-up")
	}
}

// TestForwardCorefileRenamed: a forward stanza with every option dotstub
// takes from forward, renamed, starts and answers.
func TestForwardCorefileRenamed(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	stanza := fmt.Sprintf(`dotstub . tls://%s {
 except internal.example.org
 tls %s
 tls_servername %s
 policy round_robin
 health_check 5s no_rec domain example.org
 max_fails 3
 max_connect_attempts 2
 expire 10s
 max_age 1m
 max_idle_conns 4
 read_timeout 1s
 max_concurrent 1000
 next NXDOMAIN
 next_on_nodata
 failfast_all_unhealthy_upstreams
 failover SERVFAIL REFUSED
 source_address 127.0.0.1
 force_tcp
}`, srv.Addr, caFile(t, srv), dottest.DefaultName)
	d := newDotstub(t, stanza)
	if got, err := ask(t, d, "www.example.org"); err != nil || got != "192.0.2.1" {
		t.Errorf("got %q, %v; want 192.0.2.1", got, err)
	}
}

// TestBareAddressSaysDoT: a forward user who renames `forward . 192.0.2.1`
// learns at start-up that it now means DNS-over-TLS on port 853, and one who
// writes tls:// on port 53 is warned.
func TestBareAddressSaysDoT(t *testing.T) {
	logs := captureLog(t)
	if _, err := parse(caddy.NewTestController("dns", "dotstub . 192.0.2.1 tls://192.0.2.2:53 tls://192.0.2.3")); err != nil {
		t.Fatal(err)
	}
	if n := len(logs.matching("Upstream 192.0.2.1:", "DNS-over-TLS to 192.0.2.1:853", "plain DNS")); n != 1 {
		t.Errorf("the bare address was told about %d times, want once", n)
	}
	if n := len(logs.matching("tls://192.0.2.2:53", "port 53")); n != 1 {
		t.Errorf("tls:// on port 53 was warned about %d times, want once", n)
	}
	if n := len(logs.matching("192.0.2.3")); n != 0 {
		t.Errorf("a tls:// upstream on 853 was logged: %q", logs.matching("192.0.2.3"))
	}
}
