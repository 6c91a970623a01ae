package main

import (
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const msec = time.Millisecond

func TestPercentile(t *testing.T) {
	v := []time.Duration{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{
		{0, 1}, {10, 1}, {11, 2}, {50, 5}, {90, 9}, {99, 10}, {100, 10},
	} {
		if got := percentile(v, tc.p); got != tc.want {
			t.Errorf("percentile(%v) = %d, want %d", tc.p, got, tc.want)
		}
	}
	if v[0] != 5 {
		t.Error("percentile sorted its argument")
	}
	if got := percentile(nil, 50); got != -1 {
		t.Errorf("percentile(nil) = %d, want -1", got)
	}
	if got := mean(v); got != 5 { // 55/10, truncated
		t.Errorf("mean = %d, want 5", got)
	}
	if got := mean(nil); got != -1 {
		t.Errorf("mean(nil) = %d, want -1", got)
	}
}

func TestMs(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{-1, "–"},
		{1234 * time.Microsecond, "1.23 ms"},
		{42 * msec, "42.0 ms"},
		{1500 * msec, "1500 ms"},
		{clientTimeout, "timeout (5s)"},
	} {
		if got := ms(tc.d); got != tc.want {
			t.Errorf("ms(%s) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

// ok is an answered query sent at sent (ms) that took lat (ms), from A.
func ok(sent, lat int) record {
	return record{sent: time.Duration(sent) * msec, latency: time.Duration(lat) * msec, rcode: dns.RcodeSuccess, from: "A"}
}

func TestRecovery(t *testing.T) {
	recs := []record{
		ok(0, 1),  // before the event: ignored
		ok(10, 1), // good, but the run is broken below
		{sent: 20 * msec, latency: clientTimeout, rcode: noAnswer},
		ok(30, 50), // too slow
		ok(40, 1), ok(50, 2), ok(60, 3),
	}
	if d, found := recovery(recs, 5*msec, 3, 10*msec); !found || d != 35*msec {
		t.Errorf("recovery = %s, %v; want 35ms, true", d, found)
	}
	if _, found := recovery(recs, 5*msec, 4, 10*msec); found {
		t.Error("recovery found a run of 4 that is not there")
	}
}

func TestFirstFrom(t *testing.T) {
	b := ok(100, 1)
	b.from = "B"
	recs := []record{ok(0, 1), b, ok(120, 30), ok(130, 5)}
	if d, found := firstFrom(recs, "A", 100*msec); !found || d != 35*msec {
		t.Errorf("firstFrom = %s, %v; want 35ms (the answer sent at 130 ms arrives first), true", d, found)
	}
	if _, found := firstFrom(recs, "B", 200*msec); found {
		t.Error("firstFrom found an answer from B after 200 ms")
	}
}

func TestFailures(t *testing.T) {
	recs := []record{ok(0, 1), {rcode: dns.RcodeServerFailure}, {rcode: noAnswer, latency: clientTimeout}}
	if f, to := failures(recs); f != 2 || to != 1 {
		t.Errorf("failures = %d, %d; want 2, 1", f, to)
	}
	if n := slow(append(recs, ok(0, 100)), 100*msec); n != 3 {
		t.Errorf("slow = %d; want 3 (two failures, one at the limit)", n)
	}
	if from, answered := share(recs, "A"); from != 1 || answered != 1 {
		t.Errorf("share = %d of %d; want 1 of 1", from, answered)
	}
}

func TestCorefile(t *testing.T) {
	ups := []*upstream{{addr: "127.0.0.1:1001"}, {addr: "127.0.0.1:1002"}}
	got := corefile(dotstub("x", "policy random", "hedge auto"), 53, "/tmp/ca.pem", ups)
	for _, want := range []string{
		".:53 {\n    bind 127.0.0.1\n",
		"dotstub . tls://127.0.0.1%dns.test:1001 tls://127.0.0.1%dns.test:1002 {\n",
		"tls /tmp/ca.pem\n", "health_check 0.5s\n", "policy random\n", "hedge auto\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("dotstub Corefile lacks %q:\n%s", want, got)
		}
	}
	got = corefile(forward("x"), 53, "/tmp/ca.pem", ups)
	for _, want := range []string{"forward . tls://127.0.0.1:1001 tls://127.0.0.1:1002 {\n", "tls_servername dns.test\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("forward Corefile lacks %q:\n%s", want, got)
		}
	}
}

func TestPick(t *testing.T) {
	scs, err := pick(scenarios(), "stall", []string{"forward"})
	if err != nil {
		t.Fatal(err)
	}
	if len(scs) != 1 || scs[0].name != "stall" {
		t.Fatalf("pick stall = %d scenarios", len(scs))
	}
	for _, r := range scs[0].rows {
		if r.peer != "forward" {
			t.Errorf("row %q kept with -peers forward", r.label)
		}
	}
	if _, err := pick(scenarios(), "nope", []string{"dotstub"}); err == nil {
		t.Error("pick of an unknown scenario: no error")
	}
}

func TestSteady(t *testing.T) {
	p := steady(2000)
	if p.n != 16000 || p.interval != 500*time.Microsecond {
		t.Errorf("steady(2000) = %d queries every %s; want 16000 every 500µs", p.n, p.interval)
	}
}
