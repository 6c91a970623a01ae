package dotstub

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// answering returns a Handler that answers every A query with ip.
func answering(ip string) func(*dns.Msg) *dns.Msg {
	return func(q *dns.Msg) *dns.Msg {
		a := dottest.Answer(q)
		if len(a.Answer) > 0 {
			if rr, ok := a.Answer[0].(*dns.A); ok {
				rr.A = net.ParseIP(ip)
			}
		}
		return a
	}
}

// pair starts two upstreams under one CA: a answers 192.0.2.1 and b
// 192.0.2.2, through the handlers given (nil: plain answers).
func pair(t *testing.T, ha, hb func(*dns.Msg) *dns.Msg) (a, b *dottest.Server) {
	t.Helper()
	if ha == nil {
		ha = answering("192.0.2.1")
	}
	if hb == nil {
		hb = answering("192.0.2.2")
	}
	a = dottest.New(t, dottest.Options{Handler: ha})
	b = dottest.New(t, dottest.Options{CA: a.CA, Handler: hb})
	return a, b
}

// twoUpstreams returns a dotstub stanza for a and b with the given options.
func twoUpstreams(t *testing.T, a, b *dottest.Server, opts ...string) string {
	return fmt.Sprintf("dotstub . %s %s {\n tls %s\n %s\n}", upstreamFor(a), upstreamFor(b), caFile(t, a), strings.Join(opts, "\n "))
}

// ask sends one A query for name through d and returns the address in the
// answer, or the failure.
func ask(t *testing.T, d *Dotstub, name string) (string, error) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	rcode, a, err := serve(t, d, false, m)
	switch {
	case err != nil:
		return "", err
	case rcode != dns.RcodeSuccess || a == nil:
		return "", fmt.Errorf("rcode %s", dns.RcodeToString[rcode])
	case a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1:
		return "", fmt.Errorf("answer rcode %s with %d records", dns.RcodeToString[a.Rcode], len(a.Answer))
	}
	return a.Answer[0].(*dns.A).A.String(), nil
}

// stream sends n queries through d from workers goroutines at once and
// returns how many failed and how many each address answered.
func stream(t *testing.T, d *Dotstub, n, workers int, during func(i int)) (failed int, from map[string]int) {
	t.Helper()
	var mu sync.Mutex
	from = map[string]int{}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if during != nil {
					during(i)
				}
				ip, err := ask(t, d, fmt.Sprintf("q%d.example.org", i))
				mu.Lock()
				if err != nil {
					failed++
				} else {
					from[ip]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed, from
}

func TestKillOneUpstreamUnderLoad(t *testing.T) {
	a, b := pair(t, nil, nil)
	d, changes := watchedDotstub(t, twoUpstreams(t, a, b, "policy round_robin"))
	var once sync.Once
	failed, from := stream(t, d, 2000, 8, func(i int) {
		if i == 500 {
			once.Do(a.Close) // connections in flight die with it
		}
	})
	if failed != 0 {
		t.Errorf("%d of 2000 queries failed after one of two upstreams was killed", failed)
	}
	if from["192.0.2.1"] == 0 || from["192.0.2.2"] < 1000 {
		t.Errorf("answers by upstream: %v", from)
	}

	// Back on the same address: it takes traffic again once a probe finds it.
	back, err := dottest.Start(dottest.Options{Addr: a.Addr, CA: a.CA, Leaf: a.Leaf, Handler: answering("192.0.2.1")})
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	for down := true; down; { // marked down after the kill, then up once a probe (every 0.5s) finds it
		select {
		case down = <-changes[0]:
		case <-time.After(10 * time.Second):
			t.Fatal("the upstream that came back was not marked up again")
		}
	}
	if _, from := stream(t, d, 200, 4, nil); from["192.0.2.1"] < 50 {
		t.Errorf("after it came back, round_robin sent it %d of 200", from["192.0.2.1"])
	}
}

// stalling returns a Handler that never answers until release is closed.
func stalling(release chan struct{}) func(*dns.Msg) *dns.Msg {
	return func(*dns.Msg) *dns.Msg {
		<-release
		return nil
	}
}

func TestStalledUpstreamIsMarkedDown(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	a, b := pair(t, stalling(release), nil)
	d := newDotstub(t, twoUpstreams(t, a, b, "policy sequential"))
	failed, from := stream(t, d, 200, 8, nil)
	if failed != 0 {
		t.Errorf("%d of 200 queries failed with one of two upstreams stalled", failed)
	}
	if !d.upstreams[0].Down() {
		t.Error("the stalled upstream is not marked down")
	}
	// Marked down after max_fails (2) queries gave up on it: the others
	// went straight to b.
	if n := a.Queries(); n > 2*8 {
		t.Errorf("the stalled upstream was sent %d queries; once down it should get none but probes", n)
	}
	if from["192.0.2.2"] != 200 {
		t.Errorf("answers by upstream: %v", from)
	}
}

func TestEveryUpstreamStalledServfailsWithinTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	a, b := pair(t, stalling(release), stalling(release))
	d := newDotstub(t, twoUpstreams(t, a, b, "timeout 300ms"))
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	rcode, ans, err := serve(t, d, false, m)
	if rcode != dns.RcodeServerFailure || ans != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ServeDNS = %d, %v, %v; want SERVFAIL after the timeout", rcode, ans, err)
	}
}

// allDown returns a dotstub with failfast_all_unhealthy_upstreams whose two
// upstreams refuse connections and have been marked down.
func allDown(t *testing.T) *Dotstub {
	t.Helper()
	a, b := pair(t, nil, nil)
	a.Close()
	b.Close()
	d := newDotstub(t, twoUpstreams(t, a, b, "failfast_all_unhealthy_upstreams", "health_check 1h"))
	for range 4 { // two failures each mark both down
		ask(t, d, "www.example.org")
	}
	return d
}

func TestFailfastAllUnhealthy(t *testing.T) {
	d := allDown(t)
	for _, u := range d.upstreams {
		if !u.Down() {
			t.Fatalf("%s is not down", u.Name())
		}
	}
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	if rcode, _, err := serve(t, d, false, m); rcode != dns.RcodeServerFailure || !errors.Is(err, ErrNoHealthy) {
		t.Errorf("ServeDNS = %d, %v; want SERVFAIL, %v", rcode, err, ErrNoHealthy)
	}
}

func TestFailoverRcodes(t *testing.T) {
	servfail := func(q *dns.Msg) *dns.Msg {
		a := new(dns.Msg)
		a.SetRcode(q, dns.RcodeServerFailure)
		return a
	}
	for _, tc := range []struct {
		name      string
		ha, hb    func(*dns.Msg) *dns.Msg
		opts      []string
		wantRcode int
		wantIP    string
	}{
		{"without failover the SERVFAIL answer stands", servfail, nil, []string{"policy sequential"}, dns.RcodeServerFailure, ""},
		{"failover SERVFAIL asks the next", servfail, nil, []string{"policy sequential", "failover SERVFAIL REFUSED"}, dns.RcodeSuccess, "192.0.2.2"},
		{"every upstream SERVFAIL: the last answer", servfail, servfail, []string{"policy sequential", "failover SERVFAIL"}, dns.RcodeServerFailure, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pair(t, tc.ha, tc.hb)
			d := newDotstub(t, twoUpstreams(t, a, b, tc.opts...))
			m := new(dns.Msg)
			m.SetQuestion("www.example.org.", dns.TypeA)
			rcode, ans, err := serve(t, d, false, m)
			if err != nil || rcode != dns.RcodeSuccess || ans == nil || ans.Rcode != tc.wantRcode {
				t.Fatalf("ServeDNS = %d, %v, %v; want an answer with rcode %s", rcode, ans, err, dns.RcodeToString[tc.wantRcode])
			}
			if tc.wantIP != "" && ans.Answer[0].(*dns.A).A.String() != tc.wantIP {
				t.Errorf("answer %v, want %s", ans.Answer[0], tc.wantIP)
			}
		})
	}
}

// slow returns a Handler that answers as h after d: an upstream that far.
func slow(d time.Duration, h func(*dns.Msg) *dns.Msg) func(*dns.Msg) *dns.Msg {
	return func(q *dns.Msg) *dns.Msg {
		time.Sleep(d) // the distance, not a synchronization
		return h(q)
	}
}

func TestFastestPrefersTheFasterUpstream(t *testing.T) {
	a, b := pair(t, slow(20*time.Millisecond, answering("192.0.2.1")), nil)
	d := newDotstub(t, twoUpstreams(t, a, b, "policy fastest"))
	failed, from := stream(t, d, 400, 4, nil)
	if failed != 0 {
		t.Errorf("%d queries failed", failed)
	}
	if share := float64(from["192.0.2.2"]) / 400; share < 0.9 {
		t.Errorf("fastest sent %.0f%% to the upstream 20ms faster (%v), want at least 90%%", 100*share, from)
	}
}

func TestHedgeWithinBudget(t *testing.T) {
	a, b := pair(t, slow(50*time.Millisecond, answering("192.0.2.1")), nil)
	d := newDotstub(t, twoUpstreams(t, a, b, "policy sequential", "hedge 5ms"))
	hedged := func() float64 {
		return counter(t, "coredns_dotstub_hedges_total", upstreamFor(b), "won") +
			counter(t, "coredns_dotstub_hedges_total", upstreamFor(b), "lost")
	}
	before := hedged()
	const n = 200
	failed, from := stream(t, d, n, 4, nil)
	if failed != 0 {
		t.Errorf("%d queries failed", failed)
	}
	// Every query earns a tenth of a hedge: at most n/10 hedges. (On a
	// loaded machine a few of A's answers may outlive its patience, and
	// those queries fail over to B: that is not hedging, and not counted.)
	if h := hedged() - before; h < 1 || h > n/10 {
		t.Errorf("%.0f of %d queries hedged, want 1 to %d", h, n, n/10)
	}
	if from["192.0.2.2"] == 0 {
		t.Error("no answer came from the hedge")
	}
}

func TestHealthCheckDomain(t *testing.T) {
	probed := make(chan string, 100)
	a, b := pair(t, func(q *dns.Msg) *dns.Msg {
		if q.Question[0].Qtype == dns.TypeNS {
			probed <- q.Question[0].Name
		}
		return nil // never answers: every query fails, probes go on
	}, nil)
	d := newDotstub(t, twoUpstreams(t, a, b, "policy sequential", "health_check 10ms domain probe.example.net"))
	ask(t, d, "www.example.org") // fails over to b; a is probed
	if name := <-probed; name != "probe.example.net." {
		t.Errorf("probe asked for %q, want probe.example.net.", name)
	}
}
