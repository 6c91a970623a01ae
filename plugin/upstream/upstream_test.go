package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dot"
	"github.com/dotstub/dotstub/plugin/dottest"
	"github.com/dotstub/dotstub/plugin/pin"
)

func TestFastest(t *testing.T) {
	a, b, c := New(Config{Name: "a"}), New(Config{Name: "b"}), New(Config{Name: "c"})
	a.lat.add(30 * time.Millisecond)
	b.lat.add(10 * time.Millisecond)
	// c has not answered yet: it goes first, to be measured.
	f := &Policy{kind: Fastest}
	if got := names(f.List(nil, []*Upstream{a, b, c})); !slices.Equal(got, []string{"c", "b", "a"}) {
		t.Fatalf("fastest: %v, want c, b, a", got)
	}
	c.lat.add(20 * time.Millisecond)
	first := map[string]int{}
	for range 20 * exploreEvery {
		first[f.List(nil, []*Upstream{a, b, c})[0].Name()]++
	}
	// Every exploreEvery-th query explores: a and c in turn.
	if first["b"] != 19*20 || first["a"] != 10 || first["c"] != 10 {
		t.Errorf("fastest first picks: %v, want b 380, a 10, c 10", first)
	}
}

func TestPatience(t *testing.T) {
	u := New(Config{Name: "a"})
	if u.Patience() != initialPatience || u.Smoothed() != 0 {
		t.Fatalf("an upstream never asked: patience %s, smoothed %s", u.Patience(), u.Smoothed())
	}
	for range 50 {
		u.lat.add(time.Millisecond)
	}
	if p := u.Patience(); p != minPatience {
		t.Errorf("patience %s for an upstream answering in 1ms, want the floor %s", p, minPatience)
	}
	for range 50 {
		u.lat.add(400 * time.Millisecond)
	}
	if p := u.Patience(); p < 400*time.Millisecond {
		t.Errorf("patience %s for an upstream answering in 400ms", p)
	}
	for i := range recentLen {
		u.lat.add(time.Duration(i+1) * time.Millisecond)
	}
	if p := u.P95(); p != 122*time.Millisecond {
		t.Errorf("p95 of 1..128ms = %s, want 122ms", p)
	}
	u.lat.reset(5 * time.Millisecond)
	if u.Smoothed() != 5*time.Millisecond || u.P95() != 0 {
		t.Errorf("after reset: smoothed %s, p95 %s", u.Smoothed(), u.P95())
	}
}

func names(ups []*Upstream) []string {
	var out []string
	for _, u := range ups {
		out = append(out, u.Name())
	}
	return out
}

func TestPolicies(t *testing.T) {
	ups := []*Upstream{New(Config{Name: "a"}), New(Config{Name: "b"}), New(Config{Name: "c"})}
	if got := names((&Policy{kind: Sequential}).List(nil, ups)); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("sequential: %v", got)
	}
	rr := &Policy{kind: RoundRobin}
	first := map[string]int{}
	for range 300 {
		l := rr.List(nil, ups)
		if len(l) != 3 {
			t.Fatalf("round_robin listed %v", names(l))
		}
		first[l[0].Name()]++
	}
	if first["a"] != 100 || first["b"] != 100 || first["c"] != 100 {
		t.Errorf("round_robin first picks: %v, want 100 each", first)
	}
	for range 20 {
		got := names((&Policy{kind: Random}).List(nil, ups))
		slices.Sort(got)
		if !slices.Equal(got, []string{"a", "b", "c"}) {
			t.Fatalf("random is not a permutation: %v", got)
		}
	}
}

// switchable returns a server that closes every connection on the first query
// while broken is set, and answers normally otherwise.
func switchable(t *testing.T, broken *atomic.Bool) *dottest.Server {
	answer := func(c net.Conn, frame []byte) bool {
		if broken.Load() {
			return false
		}
		q := new(dns.Msg)
		if q.Unpack(frame) != nil {
			return false
		}
		b, _ := dottest.Answer(q).Pack()
		_, err := c.Write(append([]byte{byte(len(b) >> 8), byte(len(b))}, b...))
		return err == nil
	}
	return dottest.New(t, dottest.Options{Raw: answer})
}

func newUpstream(t *testing.T, srv *dottest.Server, cfg Config) *Upstream {
	cfg.Pool = dot.Config{Addr: srv.Addr, TLS: &tls.Config{
		RootCAs: srv.CA.Pool, ServerName: dottest.DefaultName, MinVersion: tls.VersionTLS12,
	}}
	u := New(cfg)
	t.Cleanup(u.Stop)
	return u
}

func exchange(u *Upstream) error {
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	q, err := dot.NewQuery(m, dot.Privacy{})
	if err != nil {
		return err
	}
	defer q.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = u.Exchange(ctx, q, time.Time{}, false)
	return err
}

func TestDownAfterMaxFailsAndProbedBack(t *testing.T) {
	var broken atomic.Bool
	srv := switchable(t, &broken)
	var changes []string
	u := newUpstream(t, srv, Config{Name: "u", MaxFails: 2, Changed: func(down bool, cause error) {
		changes = append(changes, fmt.Sprintf("down %v (%s)", down, Reason(cause)))
	}})
	if err := exchange(u); err != nil || u.Down() {
		t.Fatalf("healthy upstream: %v, down %v", err, u.Down())
	}
	broken.Store(true)
	if err := exchange(u); err == nil || u.Down() {
		t.Fatalf("after one failure: %v, down %v; want an error, not down yet", err, u.Down())
	}
	if err := exchange(u); err == nil || !u.Down() {
		t.Fatalf("after two failures: %v, down %v; want down", err, u.Down())
	}
	if err := u.Probe(); err == nil || !u.Down() {
		t.Fatalf("probe of a broken upstream: %v, down %v", err, u.Down())
	}
	broken.Store(false)
	if err := u.Probe(); err != nil || u.Down() {
		t.Fatalf("probe after repair: %v, down %v; want up", err, u.Down())
	}
	if err := exchange(u); err != nil {
		t.Fatal(err)
	}
	if want := []string{"down true (reset)", "down false (ok)"}; !slices.Equal(changes, want) {
		t.Errorf("state changes %q, want %q: each once", changes, want)
	}
}

func TestProberRunsUntilRecovery(t *testing.T) {
	var broken atomic.Bool
	srv := switchable(t, &broken)
	probes := make(chan error, 100)
	u := newUpstream(t, srv, Config{Name: "u", MaxFails: 1, HealthCheck: 5 * time.Millisecond, Probed: func(err error) {
		probes <- err
	}})
	u.Start()
	broken.Store(true)
	if err := exchange(u); err == nil || !u.Down() {
		t.Fatalf("%v, down %v; want down", err, u.Down())
	}
	if err := <-probes; err == nil {
		t.Fatal("first probe of a broken upstream succeeded")
	}
	broken.Store(false)
	for err := range probes {
		if err == nil {
			break
		}
	}
	if u.Down() {
		t.Error("still down after a successful probe")
	}
}

func TestReason(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, refused := net.Dial("tcp", addr)

	tests := []struct {
		err  error
		want string
		auth bool
	}{
		{nil, "ok", false},
		{fmt.Errorf("dial: %w", pin.ErrMismatch), "pin_mismatch", true},
		{&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, "verify_failed", true},
		{x509.HostnameError{Certificate: &x509.Certificate{}, Host: "a"}, "verify_failed", true},
		{context.DeadlineExceeded, "timeout", false},
		{refused, "refused", false},
		{fmt.Errorf("read: %w", io.EOF), "reset", false},
		{fmt.Errorf("exchange: %w", dot.ErrBadAnswer), "bad_answer", false},
		{errors.New("something else"), "error", false},
	}
	for _, tc := range tests {
		if got := Reason(tc.err); got != tc.want || IsAuth(tc.err) != tc.auth {
			t.Errorf("Reason(%v) = %q, IsAuth %v; want %q, %v", tc.err, got, IsAuth(tc.err), tc.want, tc.auth)
		}
	}
}

func TestProbeFindsAnUpstreamThatCameBack(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	u := newUpstream(t, srv, Config{Name: "u", MaxFails: 1})
	srv.Close() // refuses connections: each failed dial doubles the backoff
	for range 6 {
		if err := u.Probe(); err == nil {
			t.Fatal("probe of a closed upstream succeeded")
		}
	}
	back, err := dottest.Start(dottest.Options{Addr: srv.Addr, CA: srv.CA, Leaf: srv.Leaf})
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	if err := u.Probe(); err != nil || u.Down() {
		t.Fatalf("first probe after it came back: %v, down %v; want it up, without waiting out the backoff", err, u.Down())
	}
}

func TestProbeRespectsAuthBackoff(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	u := newUpstream(t, srv, Config{Name: "u", MaxFails: 1})
	u.cfg.Pool.TLS.ServerName = "other.test" // fails verification
	u.pool = dot.New(u.poolConfig())
	for range 5 {
		if err := u.Probe(); err == nil {
			t.Fatal("probe of a server that fails verification succeeded")
		}
	}
	if n := srv.Accepted(); n != 1 {
		t.Errorf("%d handshakes for 5 probes of a server that fails verification, want 1 (then backoff)", n)
	}
}
