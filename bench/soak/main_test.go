package main

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestParseMetrics(t *testing.T) {
	page := `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 21
process_open_fds 16
process_resident_memory_bytes 8.9128960e+07
coredns_dotstub_dials_total{result="ok",to="tls://127.0.0.1%dns.test:853"} 3
coredns_dotstub_dials_total{result="timeout",to="tls://127.0.0.1%dns.test:853"} 2
coredns_dotstub_dials_total{result="ok",to="tls://192.0.2.1"} 4
coredns_dotstub_conns{to="a b"} 1 1700000000000
broken{
`
	m, err := parseMetrics(strings.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		match []string
		want  float64
	}{
		{"go_goroutines", nil, 21},
		{"process_resident_memory_bytes", nil, 89128960},
		{"coredns_dotstub_dials_total", nil, 9},
		{"coredns_dotstub_dials_total", []string{`result="ok"`}, 7},
		{"coredns_dotstub_conns", nil, 1},
		{"coredns_dotstub_resends_total", nil, 0},
	} {
		if got := m.sum(tc.name, tc.match...); got != tc.want {
			t.Errorf("sum(%s, %v) = %g, want %g", tc.name, tc.match, got, tc.want)
		}
	}
}

func TestCountGoroutines(t *testing.T) {
	profile := "goroutine profile: total 6\n" +
		"2 @ 0x1 0x2\n" +
		"#\t0x1\tgithub.com/dotstub/dotstub/plugin/dot.ReadFrame+0x12\t/x/frame.go:21\n" +
		"#\t0x2\tgithub.com/dotstub/dotstub/plugin/dot.(*conn).readLoop+0x172\t/x/conn.go:88\n" +
		"\n" +
		"3 @ 0x3\n" +
		"#\t0x3\tgithub.com/dotstub/dotstub/plugin/dot.(*conn).writeLoop+0x10\t/x/conn.go:130\n" +
		"\n" +
		"1 @ 0x4\n" +
		"#\t0x4\tgithub.com/dotstub/dotstub/plugin/dot.(*conn).readLoopish+0x10\t/x/conn.go:1\n"
	if got := countGoroutines(profile, readLoopFn); got != 2 {
		t.Errorf("readLoop: %d goroutines, want 2", got)
	}
	if got := countGoroutines(profile, "github.com/dotstub/dotstub/plugin/dot.(*conn).writeLoop"); got != 3 {
		t.Errorf("writeLoop: %d goroutines, want 3", got)
	}
}

func TestParseUDPDrops(t *testing.T) {
	table := `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  101: 0100007F:9692 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4321 2 0000000000000000 17
  102: 00000000:9692 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4322 2 0000000000000000 5
  103: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4323 2 0000000000000000 0
`
	for port, want := range map[int]int64{0x9692: 17, 53: 0, 54: -1} {
		if got := parseUDPDrops(table, port); got != want {
			t.Errorf("port %d: %d drops, want %d", port, got, want)
		}
	}
}

func TestShort(t *testing.T) {
	for d, want := range map[time.Duration]string{
		10 * time.Second: "10s", 2 * time.Minute: "2m", 10*time.Minute + 400*time.Millisecond: "10m",
		90 * time.Second: "1m30s", time.Hour: "1h",
	} {
		if got := short(d); got != want {
			t.Errorf("short(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestCheck(t *testing.T) {
	c := config{duration: 10 * time.Minute, rate: 500}
	if err := c.check(0.1); err != nil {
		t.Fatal(err)
	}
	if c.warmup != 10*time.Second || c.mark != 2*time.Minute || c.tcpEvery != 10 || c.maxQueries != 300000 {
		t.Errorf("defaults: warm-up %s, mark %s, TCP every %d, max %d", c.warmup, c.mark, c.tcpEvery, c.maxQueries)
	}
	c = config{duration: 30 * time.Second, rate: 500}
	if err := c.check(0); err != nil || c.mark != 15*time.Second || c.warmup != 7500*time.Millisecond || c.tcpEvery != 0 {
		t.Errorf("short run: %v, mark %s, warm-up %s, TCP every %d", err, c.mark, c.warmup, c.tcpEvery)
	}
	c = config{duration: time.Minute, mark: 2 * time.Minute, rate: 500}
	if err := c.check(0.1); err == nil {
		t.Error("a mark after the end passed")
	}
}

// TestLoad runs a short load against an in-process DNS server that fails
// every seventh query with SERVFAIL and never answers every eleventh, and
// checks the counts and pause.
func TestLoad(t *testing.T) {
	var served atomic.Int64
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		n := served.Add(1)
		m := new(dns.Msg)
		m.SetReply(r)
		switch {
		case n%11 == 0:
			return // no answer: a client timeout
		case n%7 == 0:
			m.Rcode = dns.RcodeServerFailure
		default:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.IPv4(192, 0, 2, 1)})
		}
		w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		t.Skipf("TCP port of %s taken: %v", pc.LocalAddr(), err)
	}
	started := make(chan struct{}, 2)
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		s.NotifyStartedFunc = func() { started <- struct{}{} }
		go s.ActivateAndServe()
		t.Cleanup(func() { s.Shutdown() })
	}
	<-started
	<-started

	l := &load{addr: pc.LocalAddr().String(), rate: 1000, tcpEvery: 4, max: 60}
	if !l.pause(context.Background()) {
		t.Fatal("pause with nothing in flight did not return true")
	}
	l.resume()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l.run(ctx) // returns once every query is answered or timed out
	c := l.counts()
	if c.sent != 60 || c.tcp != 15 {
		t.Errorf("sent %d, %d over TCP; want 60, 15", c.sent, c.tcp)
	}
	if c.ok+c.failed() != c.sent || c.timeout != 5 || c.servfail != 8 || c.other != 0 {
		t.Errorf("counts %+v: want 60 = ok + failed, 5 timeouts, 8 SERVFAIL", c)
	}
	if l.inflight.Load() != 0 {
		t.Errorf("%d in flight after run", l.inflight.Load())
	}
}
