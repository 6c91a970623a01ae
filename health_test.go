package dotstub

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// The health of an upstream and what is reported of it cannot disagree: the
// gauge reads the state at each scrape, parsing reports nothing, a shutdown
// is nobody's failure, and a query given less than an upstream's patience
// says nothing against it.

// healthSeries returns the upstream_healthy value for to, and whether there
// is such a series.
func healthSeries(t *testing.T, to string) (float64, bool) {
	t.Helper()
	m := seriesOf(t, "coredns_dotstub_upstream_healthy", to)
	return m.GetGauge().GetValue(), m != nil
}

func TestParseReportsNothing(t *testing.T) {
	to := "tls://192.0.2.77%parse.example"
	if _, err := parse(caddy.NewTestController("dns", "dotstub . "+to)); err != nil {
		t.Fatal(err)
	}
	if v, ok := healthSeries(t, to); ok {
		t.Errorf("an upstream that was only parsed, never started, has upstream_healthy %v", v)
	}
}

func TestHealthGaugeReadsState(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n max_fails 1\n}", upstreamFor(srv), caFile(t, srv)))
	u := d.upstreams[0]
	if v, ok := healthSeries(t, u.Name()); !ok || v != 1 {
		t.Fatalf("upstream_healthy %v (series %v) for a started upstream, want 1", v, ok)
	}
	addr := srv.Addr
	srv.Close()
	if u.Probe() == nil {
		t.Fatal("a probe of a closed upstream succeeded")
	}
	if v, _ := healthSeries(t, u.Name()); v != 0 || !u.Down() {
		t.Errorf("upstream_healthy %v, down %v after a failed probe with max_fails 1", v, u.Down())
	}
	back, err := dottest.Start(dottest.Options{Addr: addr, CA: srv.CA, Leaf: srv.Leaf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(back.Close)
	if err := u.Probe(); err != nil {
		t.Fatal(err)
	}
	if v, _ := healthSeries(t, u.Name()); v != 1 || u.Down() {
		t.Errorf("upstream_healthy %v, down %v after a probe answered", v, u.Down())
	}
}

func TestShutdownIsNoFailure(t *testing.T) {
	arrived := make(chan struct{}, 1)
	srv := dottest.New(t, dottest.Options{Handler: func(*dns.Msg) *dns.Msg { // holds every query
		select {
		case arrived <- struct{}{}:
		default:
		}
		return nil
	}})
	logs := captureLog(t)
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n max_fails 1\n health_check 10s\n}", upstreamFor(srv), caFile(t, srv)))
	u := d.upstreams[0]
	before := counter(t, "coredns_dotstub_healthcheck_failures_total", u.Name())
	probed := make(chan error, 1)
	go func() { probed <- u.Probe() }()
	<-arrived
	d.OnShutdown()
	if err := <-probed; err == nil {
		t.Fatal("the probe held by the upstream was answered")
	}
	if n := counter(t, "coredns_dotstub_healthcheck_failures_total", u.Name()) - before; n != 0 {
		t.Errorf("%v health-check failures counted for a probe that the shutdown ended", n)
	}
	if l := logs.matching(u.Name(), "marked down"); len(l) != 0 {
		t.Errorf("the shutdown marked the upstream down: %q", l)
	}
}

func TestShortShareIsNoVerdict(t *testing.T) {
	// a answers in 300ms, within its patience (500ms before its first
	// answer), but a query with 500ms for two upstreams gives it 250ms.
	a, b := pair(t, slow(300*time.Millisecond, answering("192.0.2.1")), nil)
	d := newDotstub(t, twoUpstreams(t, a, b, "policy sequential", "timeout 500ms", "max_fails 1"))
	if got, err := ask(t, d, "www.example.org"); err != nil || got != "192.0.2.2" {
		t.Fatalf("got %q, %v; want the second upstream's answer", got, err)
	}
	if d.upstreams[0].Down() {
		t.Error("an upstream given less than its patience was marked down for not answering in time")
	}
}

func TestProbeIsPaddedAsTheBlockSays(t *testing.T) {
	opt := make(chan bool, 1)
	srv := dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		if q.Question[0].Qtype == dns.TypeNS {
			opt <- q.IsEdns0() != nil
		}
		return dottest.Answer(q)
	}})
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n padding off\n}", upstreamFor(srv), caFile(t, srv)))
	if err := d.upstreams[0].Probe(); err != nil {
		t.Fatal(err)
	}
	if <-opt {
		t.Error("a probe went out with an OPT record (padding) from a block with padding off")
	}
}

func TestStartTwiceStartsOneProber(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(srv), caFile(t, srv)))
	d.upstreams[0].Start() // newDotstub started it once
	// A goroutine that has not run yet shows a wrapper, not prober: count
	// the goroutines Start itself created, which are probers.
	if n := strings.Count(allStacks(), "(*Upstream).Start.func1 in goroutine"); n != 1 {
		t.Errorf("%d probers for one upstream started twice, want 1", n)
	}
}

// allStacks returns the stacks of every goroutine, however many there are.
func allStacks() string {
	for buf := make([]byte, 1<<20); ; buf = make([]byte, 2*len(buf)) {
		if n := runtime.Stack(buf, true); n < len(buf) {
			return string(buf[:n])
		}
	}
}

// TestFlapUnderLoad: an upstream that fails and recovers ten times while
// eight loops query it. Each time it fails, the concurrent failures mark it
// down once; each time it is sound, it is marked up once: the changes come
// one at a time and alternate (two racing failures reported "down" twice
// before they were ordered), and at the end upstream_healthy says 1. The
// test waits on the Changed hook, not on time.
func TestFlapUnderLoad(t *testing.T) {
	var bad atomic.Bool
	srv := dottest.New(t, dottest.Options{Raw: func(c net.Conn, frame []byte) bool {
		q := new(dns.Msg)
		if bad.Load() || q.Unpack(frame) != nil {
			return false // closes the connection under the query
		}
		b, err := dottest.Answer(q).Pack()
		if err != nil {
			return false
		}
		_, err = c.Write(framed(b))
		return err == nil
	}})
	d, changes := watchedDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n max_fails 1\n health_check 5ms\n timeout 300ms\n}",
		upstreamFor(srv), caFile(t, srv)))
	u := d.upstreams[0]

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ { // bounded; stop ends it sooner
				select {
				case <-stop:
					return
				default:
				}
				m := new(dns.Msg)
				m.SetQuestion(fmt.Sprintf("w%d-%d.example.org.", w, i), dns.TypeA)
				serve(t, d, false, m)
			}
		}()
	}
	word := map[bool]string{true: "down", false: "up"}
	expect := func(n int, want bool) {
		t.Helper()
		select {
		case down := <-changes[0]:
			if down != want {
				t.Fatalf("change %d: marked %s, want %s: two changes reported the same", n, word[down], word[want])
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("change %d: not marked %s within 10s", n, word[want])
		}
	}
	n := 0
	for ; n < 20; n += 2 {
		bad.Store(true)
		expect(n, true)
		bad.Store(false)
		expect(n+1, false)
	}
	// A query sent before the last recovery may still fail after it and
	// mark the upstream down once more: stop the queries, and let a probe
	// bring it up again if so.
	close(stop)
	wg.Wait()
	for last := false; u.Down() || len(changes[0]) > 0; n++ { // once the queries have returned, only a probe changes it: up
		last = !last
		expect(n, last)
	}
	if v, _ := healthSeries(t, u.Name()); v != 1 || u.Down() {
		t.Errorf("upstream_healthy %v, down %v once sound again", v, u.Down())
	}
}
