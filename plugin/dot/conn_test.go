package dot

import (
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

// faultEvents counts what a pool reports of bad answers, resends and
// connections closed for bad answers.
type faultEvents struct {
	mu        sync.Mutex // guards bad
	bad       map[BadReason]int
	resent    atomic.Int32
	untrusted atomic.Int32
	closed    chan error // every Closed cause, if there is room
}

func (e *faultEvents) config(c *Config) {
	e.bad = map[BadReason]int{}
	e.closed = make(chan error, 64)
	c.Events.Bad = func(r BadReason) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.bad[r]++
	}
	c.Events.Resent = func() { e.resent.Add(1) }
	c.Events.Untrusted = func() { e.untrusted.Add(1) }
	c.Events.Closed = func(err error, _ int) {
		select {
		case e.closed <- err:
		default:
		}
	}
}

func (e *faultEvents) badCount(r BadReason) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.bad[r]
}

// exchangeAll sends the names at once over p, each with its own deadline,
// and returns each one's answer or error.
func exchangeAll(t *testing.T, p *Pool, names []string, timeout time.Duration) ([]*dns.Msg, []error) {
	t.Helper()
	answers, errs := make([]*dns.Msg, len(names)), make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i], errs[i] = exchange(t, p, name, timeout)
		}()
	}
	wg.Wait()
	for i, a := range answers {
		if a != nil && !strings.EqualFold(a.Question[0].Name, dns.Fqdn(names[i])) {
			t.Errorf("WRONG ANSWER to %s:\n%v", names[i], a)
		}
	}
	return answers, errs
}

// heldUntil returns a Wire answer that holds every query until n have
// arrived, then answers each as answer does.
func heldUntil(n int32, answer func(q *dns.Msg) []byte) func(*dns.Msg) []byte {
	var arrived atomic.Int32
	all := make(chan struct{})
	return func(q *dns.Msg) []byte {
		if arrived.Add(1) == n {
			close(all)
		}
		<-all
		return answer(q)
	}
}

func TestBadAnswerCostsItsQueryOnly(t *testing.T) {
	var once sync.Once
	srv := dottest.New(t, dottest.Options{Wire: heldUntil(16, func(q *dns.Msg) []byte {
		a := dottest.Answer(q)
		if strings.HasPrefix(q.Question[0].Name, "bad.") {
			once.Do(func() { a.Question[0].Name = "other.example.net." }) // the first time only
		}
		return pack(a)
	})})
	var ev faultEvents
	p := newPool(t, srv, ev.config)
	names := []string{"bad.example.org"}
	for i := range 15 {
		names = append(names, fmt.Sprintf("q%d.example.org", i))
	}
	_, errs := exchangeAll(t, p, names, 10*time.Second)
	for i, err := range errs {
		if err != nil {
			t.Errorf("%s: %v", names[i], err)
		}
	}
	if n := ev.badCount(BadWrongQuestion); n != 1 {
		t.Errorf("%d answers counted as wrong_question, want 1", n)
	}
	if n := ev.resent.Load(); n != 1 {
		t.Errorf("%d resends, want 1: the bad answer's own query", n)
	}
	if n := srv.Accepted(); n != 1 {
		t.Errorf("%d connections: a bad answer cost its connection", n)
	}
}

func TestMisroutedAnswerResendsTheQueryItAnswers(t *testing.T) {
	// Two queries in flight, a and b: a's answer comes under b's ID (once),
	// b's under its own.
	var (
		mu   sync.Mutex
		ids  = map[string]uint16{} // ID of each query as it arrived, by first label
		once sync.Once
	)
	held := heldUntil(2, func(q *dns.Msg) []byte {
		a := dottest.Answer(q)
		if strings.HasPrefix(q.Question[0].Name, "a.") {
			once.Do(func() {
				mu.Lock()
				defer mu.Unlock()
				a.Id = ids["b"]
			})
		}
		return pack(a)
	})
	srv := dottest.New(t, dottest.Options{Wire: func(q *dns.Msg) []byte {
		mu.Lock()
		label, _, _ := strings.Cut(q.Question[0].Name, ".")
		ids[label] = q.Id
		mu.Unlock()
		return held(q)
	}})
	var ev faultEvents
	p := newPool(t, srv, func(c *Config) {
		ev.config(c)
		c.MaxConns = 1
	})
	answers, errs := exchangeAll(t, p, []string{"a.example.org", "b.example.org"}, 10*time.Second)
	for i, err := range errs {
		if err != nil || answers[i] == nil {
			t.Errorf("query %d: %v", i, err)
		}
	}
	if n := ev.badCount(BadWrongID); n != 1 {
		t.Errorf("%d answers counted as wrong_id, want 1", n)
	}
	if n := ev.resent.Load(); n != 1 {
		t.Errorf("%d resends, want 1: the query whose answer went astray", n)
	}
	if n := srv.Accepted(); n != 1 {
		t.Errorf("%d connections: a misrouted answer cost its connection", n)
	}
}

// TestOutOfStepConnIsClosed: a connection that answered well, then turns bad
// (every answer for another question, as from a proxy that lost track of
// which answer is whose), is closed; one that never answered well is kept.
func TestOutOfStepConnIsClosed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		good   int64 // answers right before the rest go bad
		closed bool
	}{
		{name: "answered well, then out of step", good: 8, closed: true},
		{name: "never answered well", good: 0, closed: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int64
			srv := dottest.New(t, dottest.Options{Wire: func(q *dns.Msg) []byte {
				a := dottest.Answer(q)
				if n.Add(1) > tc.good {
					a.Question[0].Name = "other.example.net."
				}
				return pack(a)
			}})
			var ev faultEvents
			p := newPool(t, srv, ev.config)
			for i := range tc.good {
				if _, err := exchange(t, p, fmt.Sprintf("good%d.example.org", i), 10*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			var names []string
			for i := range 40 {
				names = append(names, fmt.Sprintf("q%d.example.org", i))
			}
			answers, errs := exchangeAll(t, p, names, 10*time.Second)
			for i, err := range errs {
				if answers[i] != nil || !errors.Is(err, ErrBadAnswer) {
					t.Errorf("%s: %v, %v; want a bad-answer error", names[i], answers[i], err)
				}
			}
			if closed := ev.untrusted.Load() > 0; closed != tc.closed {
				t.Errorf("connection closed for its bad answers: %v, want %v", closed, tc.closed)
			}
		})
	}
}

// TestStrayAnswerFound: with two queries in flight, a frame that does not
// parse and names neither, then the answer to one: the other's answer went
// astray, and is sent again at once, not after its deadline.
func TestStrayAnswerFound(t *testing.T) {
	var (
		mu     sync.Mutex
		first  = map[net.Conn][][]byte{} // the first connection's queries, until two
		served bool
	)
	srv := dottest.New(t, dottest.Options{Raw: func(c net.Conn, frame []byte) bool {
		q := new(dns.Msg)
		if q.Unpack(frame) != nil {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		if served {
			c.Write(framed(pack(dottest.Answer(q))))
			return true
		}
		first[c] = append(first[c], frame)
		if len(first[c]) < 2 {
			return true
		}
		served = true
		c.Write(framed(ffs(64))) // ID 0xffff, which the pool has not given yet
		q0 := new(dns.Msg)
		q0.Unpack(first[c][0])
		c.Write(framed(pack(dottest.Answer(q0))))
		return true
	}})
	var ev faultEvents
	p := newPool(t, srv, func(c *Config) {
		ev.config(c)
		c.MaxConns = 1
	})
	// The deadline is far: an answer lost for good would fail the query
	// with a deadline error a minute later, not answer it.
	answers, errs := exchangeAll(t, p, []string{"a.example.org", "b.example.org"}, time.Minute)
	for i, err := range errs {
		if err != nil || answers[i] == nil {
			t.Errorf("query %d: %v", i, err)
		}
	}
	if n := ev.badCount(BadMalformed); n != 1 {
		t.Errorf("%d answers counted as malformed, want 1", n)
	}
}

// ffs returns n bytes of 0xff: a frame that does not unpack.
func ffs(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 0xff
	}
	return b
}

func framed(b []byte) []byte {
	return append([]byte{byte(len(b) >> 8), byte(len(b))}, b...)
}

func TestKeepalive(t *testing.T) {
	for _, tc := range []struct {
		name  string
		idle  time.Duration // the server's, as it states it
		drain bool          // the connection closes once its queries are answered
	}{
		{name: "idle timeout stated", idle: 2 * time.Second},
		{name: "close soon", idle: 0, drain: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var asked []bool // by query, in arrival order: did it carry edns-tcp-keepalive
			var mu sync.Mutex
			srv := dottest.New(t, dottest.Options{Keepalive: true, IdleTimeout: tc.idle, Handler: func(q *dns.Msg) *dns.Msg {
				mu.Lock()
				defer mu.Unlock()
				k := false
				if opt := q.IsEdns0(); opt != nil {
					for _, o := range opt.Option {
						k = k || o.Option() == dns.EDNS0TCPKEEPALIVE
					}
				}
				asked = append(asked, k)
				return dottest.Answer(q)
			}})
			var ev faultEvents
			p := newPool(t, srv, ev.config)
			for i := range 2 {
				m := new(dns.Msg)
				m.SetQuestion(fmt.Sprintf("q%d.example.org.", i), dns.TypeA)
				a, err := exchangePadded(t, p, m)
				if err != nil {
					t.Fatal(err)
				}
				if a.IsEdns0() != nil {
					t.Errorf("answer %d has an OPT record; the client sent none:\n%v", i, a)
				}
				if tc.drain {
					select {
					case err := <-ev.closed:
						if !errors.Is(err, errDrained) {
							t.Errorf("connection closed with %v, want it drained", err)
						}
					case <-time.After(10 * time.Second):
						t.Fatal("the connection stayed open after the server asked to close it")
					}
				}
			}
			mu.Lock()
			defer mu.Unlock()
			want := []bool{true, tc.drain} // the first query of each connection asks
			if fmt.Sprint(asked) != fmt.Sprint(want) {
				t.Errorf("queries that asked for the idle timeout: %v, want %v", asked, want)
			}
			if tc.drain {
				return
			}
			now := time.Now()
			p.expireIdle(now.Add(tc.idle * 7 / 10))
			if s := p.Stats(); s.Conns != 1 {
				t.Fatalf("%d connections: retired before three quarters of the server's idle timeout", s.Conns)
			}
			p.expireIdle(now.Add(tc.idle * 8 / 10))
			if s := p.Stats(); s.Conns != 0 {
				t.Fatalf("%d connections: kept past three quarters of the server's idle timeout", s.Conns)
			}
		})
	}
}
