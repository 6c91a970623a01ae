package dotstub

import (
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/dotstub/dotstub/plugin/dottest"
	"github.com/dotstub/dotstub/plugin/pin"
)

// The fault tests put one misbehaving upstream behind a dotstub stanza, send
// it rounds of queries at once, and hold the plugin to four promises: a client
// gets the right answer or SERVFAIL, never a wrong answer; ServeDNS returns by
// its deadline; once the upstream is repaired (a working server on the same
// address) the plugin answers again; and OnShutdown leaves no goroutine and no
// file descriptor behind. The checks are in faultcheck_test.go.

const (
	// faultTimeout is the stanza's timeout, short to keep the suite fast,
	// where no query can be answered. Where queries must be answered, a
	// longer one: a working plugin answers them (or fails them) long before,
	// and on a loaded machine (-race, packages tested in parallel) a TLS
	// handshake alone can take more than 500ms.
	faultTimeout  = 500 * time.Millisecond
	answerTimeout = 5 * time.Second
	faultBatch    = 24 // queries sent at once in a round
	faultRounds   = 2
)

// faultEnv is what the cases share: the CA the stanza trusts, and the leaf a
// working upstream presents, which the pins of a stanza always include.
type faultEnv struct {
	ca   *dottest.CA
	good *dottest.Leaf
}

// wantAnswers is how many queries of each round must be answered.
type wantAnswers int

const (
	someAnswered wantAnswers = iota // at least one; the others get SERVFAIL
	noneAnswered                    // none: each gets SERVFAIL
	allAnswered                     // every one
)

type faultCase struct {
	name string
	// upstream returns the faulty upstream's options; CA and Leaf default
	// to the shared CA and good leaf.
	upstream func(t *testing.T, e *faultEnv) dottest.Options
	plain    bool                                    // instead: a TCP listener that never completes a TLS handshake
	pins     func(e *faultEnv) []pin.Pin             // the stanza's pin_sha256; nil: none
	between  func(t *testing.T, srv *dottest.Server) // after each round
	want     wantAnswers
	silent   bool // the upstream receives no byte of a query
}

func faultCases() []faultCase {
	options := func(o dottest.Options) func(*testing.T, *faultEnv) dottest.Options {
		return func(*testing.T, *faultEnv) dottest.Options { return o }
	}
	leaf := func(issue func(e *faultEnv) (*dottest.Leaf, error)) func(*testing.T, *faultEnv) dottest.Options {
		return func(t *testing.T, e *faultEnv) dottest.Options {
			l, err := issue(e)
			if err != nil {
				t.Fatal(err)
			}
			return dottest.Options{Leaf: l}
		}
	}
	newKey := func(e *faultEnv) (*dottest.Leaf, error) {
		return e.ca.Issue([]string{dottest.DefaultName}, time.Time{}, time.Time{})
	}
	racing, idled := closesOnArrival()
	return []faultCase{
		{name: "closes after 3 queries", upstream: options(dottest.Options{CloseAfter: 3}), want: someAnswered},
		{name: "closes when idle", upstream: options(dottest.Options{IdleTimeout: 200 * time.Millisecond}),
			between: func(t *testing.T, srv *dottest.Server) { waitIdle(t, srv) }, want: allAnswered},
		{name: "closes when idle as a query arrives", upstream: options(dottest.Options{Raw: racing}),
			between: func(*testing.T, *dottest.Server) { idled() }, want: allAnswered},
		{name: "resets mid-answer", upstream: func(t *testing.T, _ *faultEnv) dottest.Options {
			return dottest.Options{Raw: resetMidAnswer(t, 2)}
		}, want: someAnswered},
		{name: "wrong ID", upstream: options(dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
			a := dottest.Answer(q)
			a.Id++ // the ID of the query sent next on the connection, if any
			return a
		}}), want: noneAnswered},
		{name: "answers another question", upstream: options(dottest.Options{Handler: otherQuestion}), want: noneAnswered},
		{name: "garbage after the right ID", upstream: options(dottest.Options{Raw: func(c net.Conn, frame []byte) bool {
			c.Write(framed(append(frame[:2:2], randomBytes(12+rand.IntN(300))...)))
			return true
		}}), want: noneAnswered},
		{name: "garbage bytes", upstream: options(dottest.Options{Raw: func(c net.Conn, _ []byte) bool {
			c.Write(randomBytes(64 + rand.IntN(448)))
			return true
		}}), want: noneAnswered},
		{name: "length prefix past the body, then stalls", upstream: options(dottest.Options{Raw: longPrefix(false)}), want: noneAnswered},
		{name: "length prefix past the body, then closes", upstream: options(dottest.Options{Raw: longPrefix(true)}), want: noneAnswered},
		{name: "never answers", upstream: options(dottest.Options{Handler: func(*dns.Msg) *dns.Msg { return nil }}),
			want: noneAnswered},
		{name: "never completes the handshake", plain: true, want: noneAnswered},
		{name: "expired certificate", upstream: leaf(func(e *faultEnv) (*dottest.Leaf, error) {
			return e.ca.Issue([]string{dottest.DefaultName}, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
		}), want: noneAnswered, silent: true},
		{name: "new key, leaf pin only", upstream: leaf(newKey),
			pins: func(e *faultEnv) []pin.Pin { return []pin.Pin{e.good.Pin()} }, want: noneAnswered, silent: true},
		{name: "new key, CA backup pin", upstream: leaf(newKey),
			pins: func(e *faultEnv) []pin.Pin { return []pin.Pin{e.good.Pin(), e.ca.Pin()} }, want: allAnswered},
	}
}

func TestFaultyUpstream(t *testing.T) {
	ca, err := dottest.NewCA("faults CA")
	if err != nil {
		t.Fatal(err)
	}
	good, err := ca.Issue([]string{dottest.DefaultName}, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	e := &faultEnv{ca: ca, good: good}
	// The runtime opens its poller's descriptors at the first network use
	// and keeps them: open them before any case counts descriptors.
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	for _, tc := range faultCases() {
		t.Run(tc.name, func(t *testing.T) { runFault(t, e, tc) })
	}
}

func runFault(t *testing.T, e *faultEnv, tc faultCase) {
	fds := openFDs()
	leaks := goleak.IgnoreCurrent()

	bad := startFaulty(t, e, tc)
	d := newDotstub(t, faultStanza(t, e, bad.addr, tc.pins, tc.timeout()))
	for round := range faultRounds {
		answered := faultRound(t, d, round, tc.timeout())
		switch {
		case tc.want == someAnswered && answered == 0,
			tc.want == noneAnswered && answered != 0,
			tc.want == allAnswered && answered != faultBatch:
			t.Errorf("round %d: %d of %d queries answered, want %s", round, answered, faultBatch, tc.want)
		}
		if tc.between != nil {
			tc.between(t, bad.srv)
		}
	}
	bad.close()
	if n := bad.bytesRead(); tc.silent && n != 0 {
		t.Errorf("the upstream that failed authentication received %d bytes", n)
	}

	// Repaired: a working server on the same address, with the pinned key.
	fixed, err := dottest.Start(dottest.Options{Addr: bad.addr, CA: e.ca, Leaf: e.good})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fixed.Close)
	answersAgain(t, d, tc.timeout())

	d.OnShutdown()
	fixed.Close()
	goleak.VerifyNone(t, leaks)
	fdsBackTo(t, fds)
}

// timeout returns the stanza's timeout for tc.
func (tc faultCase) timeout() time.Duration {
	if tc.want == someAnswered || tc.want == allAnswered {
		return answerTimeout
	}
	return faultTimeout
}

func (w wantAnswers) String() string {
	return [...]string{"at least one", "none", "all"}[w]
}

// faulty is the upstream under test.
type faulty struct {
	addr      string
	srv       *dottest.Server // nil for a plain listener
	close     func()
	bytesRead func() int // bytes of queries received
}

func startFaulty(t *testing.T, e *faultEnv, tc faultCase) *faulty {
	t.Helper()
	if tc.plain {
		addr, stop := holdHandshakes(t)
		return &faulty{addr: addr, close: stop, bytesRead: func() int { return 0 }}
	}
	opts := tc.upstream(t, e)
	opts.CA = e.ca
	if opts.Leaf == nil {
		opts.Leaf = e.good
	}
	srv, err := dottest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return &faulty{addr: srv.Addr, srv: srv, close: srv.Close, bytesRead: srv.BytesRead}
}

// faultStanza returns a stanza with the upstream at addr, verified against
// the shared CA (and pins), with the timeout.
func faultStanza(t *testing.T, e *faultEnv, addr string, pins func(*faultEnv) []pin.Pin, timeout time.Duration) string {
	t.Helper()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, e.ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(addr)
	s := fmt.Sprintf("dotstub . tls://%s%%%s:%s {\n tls %s\n timeout %s\n", host, dottest.DefaultName, port, ca, timeout)
	if pins != nil {
		var ps []string
		for _, p := range pins(e) {
			ps = append(ps, p.String())
		}
		s += " pin_sha256 " + strings.Join(ps, " ") + "\n"
	}
	return s + "}"
}

// waitIdle waits for srv to have closed every connection, within a bound that
// only a hang reaches.
func waitIdle(t *testing.T, srv *dottest.Server) {
	t.Helper()
	select {
	case <-srv.Idle():
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream never closed its idle connections")
	}
}

// otherQuestion answers the A query for another name, with another address.
func otherQuestion(q *dns.Msg) *dns.Msg {
	q2 := q.Copy()
	q2.Question[0].Name = "evil.example.net."
	a := dottest.Answer(q2)
	if len(a.Answer) > 0 {
		if rr, ok := a.Answer[0].(*dns.A); ok {
			rr.A = net.ParseIP("198.51.100.66")
		}
	}
	return a
}

// closesOnArrival returns a Raw handler that answers, and a func that makes it
// take every connection open so far for idle: the next query to arrive on
// one closes it, unanswered. That is the race of an upstream closing an idle
// connection just as a query leaves on it, made certain.
func closesOnArrival() (raw func(net.Conn, []byte) bool, idled func()) {
	var (
		epoch atomic.Int64
		born  sync.Map // net.Conn → the epoch of its first query
	)
	raw = func(c net.Conn, frame []byte) bool {
		if e, _ := born.LoadOrStore(c, epoch.Load()); e.(int64) < epoch.Load() {
			born.Delete(c)
			return false
		}
		q := new(dns.Msg)
		if q.Unpack(frame) != nil {
			return false
		}
		a, err := dottest.Answer(q).Pack()
		if err != nil {
			return false
		}
		c.Write(framed(a))
		return true
	}
	return raw, func() { epoch.Add(1) }
}

// resetMidAnswer returns a Raw handler that answers the first n queries of
// each connection, then writes half an answer to the next and resets the
// connection (RST, by closing with SO_LINGER 0).
func resetMidAnswer(t *testing.T, n int32) func(net.Conn, []byte) bool {
	var seen sync.Map // net.Conn → *atomic.Int32, queries read
	return func(c net.Conn, frame []byte) bool {
		q := new(dns.Msg)
		if q.Unpack(frame) != nil {
			return false
		}
		a, err := dottest.Answer(q).Pack()
		if err != nil {
			t.Error(err)
			return false
		}
		v, _ := seen.LoadOrStore(c, new(atomic.Int32))
		if v.(*atomic.Int32).Add(1) <= n {
			c.Write(framed(a))
			return true
		}
		seen.Delete(c)
		c.Write(framed(a)[:2+len(a)/2])
		tc, ok := c.(*tls.Conn)
		if !ok {
			t.Errorf("Raw got a %T, not a *tls.Conn: cannot reset it", c)
			return false
		}
		if err := tc.NetConn().(*net.TCPConn).SetLinger(0); err != nil {
			t.Error(err)
		}
		return false // the server closes the socket: with linger 0, a reset
	}
}

// longPrefix returns a Raw handler that answers a query in a frame whose
// length prefix counts 100 bytes more than the answer, then closes the
// connection or stalls: reads on and writes nothing.
func longPrefix(thenClose bool) func(net.Conn, []byte) bool {
	return func(c net.Conn, frame []byte) bool {
		q := new(dns.Msg)
		if q.Unpack(frame) != nil {
			return false
		}
		a, err := dottest.Answer(q).Pack()
		if err != nil {
			return false
		}
		c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(a)+100)), a...))
		if !thenClose {
			io.Copy(io.Discard, c) // until the connection closes
		}
		return false
	}
}

// holdHandshakes listens on loopback and accepts connections, then neither
// reads nor writes: an upstream whose TLS handshakes never finish.
func holdHandshakes(t *testing.T) (addr string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex // guards conns
		conns []net.Conn
		wg    sync.WaitGroup
		once  sync.Once
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	stop = func() {
		once.Do(func() {
			ln.Close()
			wg.Wait()
			for _, c := range conns {
				c.Close()
			}
		})
	}
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

func framed(b []byte) []byte {
	return append(binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(b)), uint16(len(b))), b...)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return b
}
