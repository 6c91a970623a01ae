package dot

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// newPool returns a started pool for srv that trusts srv's CA.
func newPool(t *testing.T, srv *dottest.Server, mod func(*Config)) *Pool {
	t.Helper()
	cfg := Config{
		Addr: srv.Addr,
		TLS: &tls.Config{
			RootCAs:            srv.CA.Pool,
			ServerName:         dottest.DefaultName,
			MinVersion:         tls.VersionTLS12,
			ClientSessionCache: tls.NewLRUClientSessionCache(4),
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	p := New(cfg)
	t.Cleanup(p.Close)
	return p
}

func query(t testing.TB, name string, qtype uint16) *Query {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	q, err := NewQuery(m, Privacy{})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// exchangePadded sends m over p, padded as by default, and returns the answer.
func exchangePadded(t *testing.T, p *Pool, m *dns.Msg) (*dns.Msg, error) {
	t.Helper()
	q, err := NewQuery(m, Privacy{PadBlock: DefaultPadBlock})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Release()
	return p.Exchange(t.Context(), q, time.Time{})
}

// exchange asks p for name with a deadline timeout from now, as ServeDNS does:
// a context with none, and the deadline as a time.
func exchange(t testing.TB, p *Pool, name string, timeout time.Duration) (*dns.Msg, error) {
	t.Helper()
	q := query(t, name, dns.TypeA)
	defer q.Release()
	return p.Exchange(context.Background(), q, time.Now().Add(timeout))
}

func TestContextEndsExchange(t *testing.T) {
	srv, arrived, release := holdingServer(t)
	defer close(release)
	p := newPool(t, srv, func(c *Config) { c.Timeout = time.Minute })
	q := query(t, "hold.example.org", dns.TypeA)
	defer q.Release()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := p.Exchange(ctx, q, time.Time{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("with the context's deadline: got %v, want context.DeadlineExceeded", err)
	}
	<-arrived
	ctx, cancel = context.WithCancel(context.Background())
	go func() { <-arrived; cancel() }()
	if _, err := p.Exchange(ctx, q, time.Now().Add(time.Minute)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: got %v, want context.Canceled", err)
	}
}

// TestExpiredQueryIsNeverSent: a query whose deadline has passed is not
// written, even with a slot free for it.
func TestExpiredQueryIsNeverSent(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	p := newPool(t, srv, nil)
	if _, err := exchange(t, p, "warm.example.org", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := exchange(t, p, "late.example.org", -time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	// The server counts each query as it reads it, in order on the
	// connection: once the next query is answered, a late one would be counted.
	if _, err := exchange(t, p, "next.example.org", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if n, conns := srv.Queries(), srv.Accepted(); n != 2 || conns != 1 {
		t.Errorf("the upstream read %d queries over %d connections, want 2 over 1: the expired one was sent", n, conns)
	}
}

// TestDeadlineTimersAreReused checks that a query never inherits the timer of
// one before it: queries whose deadline passes, or passes as the answer
// arrives, alternate with patient ones, which must all be answered.
func TestDeadlineTimersAreReused(t *testing.T) {
	p := newPool(t, dottest.New(t, dottest.Options{}), nil)
	for i := range 500 {
		exchange(t, p, fmt.Sprintf("hasty%d.example.org", i), time.Duration(i%16)*25*time.Microsecond)
		if _, err := exchange(t, p, fmt.Sprintf("patient%d.example.org", i), 10*time.Second); err != nil {
			t.Fatalf("patient query %d after a hasty one: %v", i, err)
		}
	}
}

func TestExchange(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	p := newPool(t, srv, nil)

	m := new(dns.Msg)
	m.SetQuestion("example.org.", dns.TypeA)
	m.Id = 4242
	m.SetEdns0(1232, true)
	before := m.String()
	q, err := NewQuery(m, Privacy{})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Release()
	a, err := p.Exchange(context.Background(), q, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if a.Id != 4242 {
		t.Errorf("answer ID %d, want the query's 4242", a.Id)
	}
	if len(a.Answer) != 2 || a.Answer[0].(*dns.A).A.String() != "192.0.2.1" || a.Answer[1].Header().Rrtype != dns.TypeRRSIG {
		t.Errorf("answer %v, want an A record and its RRSIG", a.Answer)
	}
	if opt := a.IsEdns0(); opt == nil || !opt.Do() {
		t.Errorf("answer lost EDNS0 or the DO bit: %v", a.Extra)
	}
	if m.String() != before {
		t.Errorf("Exchange changed the query:\n%s\nwas\n%s", m, before)
	}
}

func TestOutOfOrderOnOneConn(t *testing.T) {
	fastDone := make(chan struct{})
	srv := dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		if strings.HasPrefix(q.Question[0].Name, "slow.") {
			<-fastDone // the slow query's answer leaves after the fast one's
		}
		return dottest.Answer(q)
	}})
	p := newPool(t, srv, nil)

	slow := make(chan error, 1)
	go func() {
		a, err := exchange(t, p, "slow.example.org", 5*time.Second)
		if err == nil && a.Question[0].Name != "slow.example.org." {
			err = fmt.Errorf("slow query got the answer for %s", a.Question[0].Name)
		}
		slow <- err
	}()
	a, err := exchange(t, p, "fast.example.org", 5*time.Second)
	close(fastDone)
	if err != nil || a.Question[0].Name != "fast.example.org." {
		t.Fatalf("fast query: %v, %v", a, err)
	}
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	if n := srv.Accepted(); n != 1 {
		t.Errorf("%d connections, want both queries on one", n)
	}
}

func TestManyConcurrentQueries(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	p := newPool(t, srv, func(c *Config) { c.MaxConns, c.MaxInflight = 3, 100 })
	p.Start()

	const n = 3000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("q%d.example.org.", i)
			a, err := exchange(t, p, name, 10*time.Second)
			switch {
			case err != nil:
				errs <- err
			case a.Question[0].Name != name || len(a.Answer) != 1 || a.Answer[0].Header().Name != name:
				errs <- fmt.Errorf("query for %s got the answer for %s", name, a.Question[0].Name)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := srv.Accepted(); got > 3 {
		t.Errorf("%d connections opened, want at most MaxConns=3", got)
	}
}

func TestFullPoolWaitsForASlot(t *testing.T) {
	srv, arrived, release := holdingServer(t)
	p := newPool(t, srv, func(c *Config) { c.MaxConns, c.MaxInflight = 2, 1 })

	held := make(chan error, 2)
	for i := range 2 {
		go func() {
			_, err := exchange(t, p, fmt.Sprintf("hold%d.example.org", i), 10*time.Second)
			held <- err
		}()
	}
	<-arrived
	<-arrived
	if s := p.Stats(); s.Conns != 2 || s.Inflight != 2 {
		t.Fatalf("%+v with 2 queries held and MaxInflight 1, want 2 conns", s)
	}
	third := make(chan error, 1)
	go func() {
		_, err := exchange(t, p, "third.example.org", 10*time.Second)
		third <- err
	}()
	close(release)
	for range 2 {
		if err := <-held; err != nil {
			t.Error(err)
		}
	}
	if err := <-third; err != nil {
		t.Errorf("third query, which found the pool full: %v", err)
	}
	if n := srv.Accepted(); n != 2 {
		t.Errorf("%d connections, want MaxConns=2", n)
	}
}

// holdingServer answers at once, except names starting with "hold": their
// arrival is announced on arrived and their answer waits for release to close.
func holdingServer(t *testing.T) (srv *dottest.Server, arrived chan string, release chan struct{}) {
	arrived, release = make(chan string, 100), make(chan struct{})
	srv = dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		if strings.HasPrefix(q.Question[0].Name, "hold") {
			arrived <- q.Question[0].Name
			<-release
		}
		return dottest.Answer(q)
	}})
	return srv, arrived, release
}

func TestUpstreamClosesAfterN(t *testing.T) {
	srv := dottest.New(t, dottest.Options{CloseAfter: 7})
	p := newPool(t, srv, nil)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				if _, err := exchange(t, p, fmt.Sprintf("w%d-%d.example.org", w, i), 5*time.Second); err != nil {
					t.Errorf("query %d of worker %d: %v", i, w, err)
				}
			}
		}()
	}
	wg.Wait()
	if srv.Accepted() < 100/7 {
		t.Errorf("only %d connections for 100 queries at 7 per connection", srv.Accepted())
	}
	if srv.Resumed() == 0 {
		t.Error("no reconnect resumed its TLS session")
	}
}

func TestUpstreamClosesIdleConn(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	p := newPool(t, srv, nil)
	if _, err := exchange(t, p, "a.example.org", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	srv.CloseConns()
	if _, err := exchange(t, p, "b.example.org", 5*time.Second); err != nil {
		t.Fatalf("query after the upstream closed the idle connection: %v", err)
	}
	if srv.Accepted() != 2 || srv.Resumed() != 1 {
		t.Errorf("accepted %d, resumed %d: want one reconnect that resumed", srv.Accepted(), srv.Resumed())
	}
}

func TestStalledConnIsReplaced(t *testing.T) {
	var mu sync.Mutex
	stall := true
	srv := dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		mu.Lock()
		defer mu.Unlock()
		if stall {
			return nil
		}
		return dottest.Answer(q)
	}})
	p := newPool(t, srv, func(c *Config) { c.Timeout = 100 * time.Millisecond }) // stalled after 50ms
	if _, err := exchange(t, p, "a.example.org", 100*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v from a stalled upstream, want a deadline error", err)
	}
	if s := p.Stats(); s.Conns != 0 {
		t.Errorf("%d conns after a stall, want the stalled one closed", s.Conns)
	}
	mu.Lock()
	stall = false
	mu.Unlock()
	if _, err := exchange(t, p, "b.example.org", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if srv.Accepted() != 2 {
		t.Errorf("accepted %d, want a new connection after the stall", srv.Accepted())
	}
}

// rawAnswer returns a Raw handler that answers every query with bad(q, id).
func rawAnswer(bad func(q *dns.Msg) []byte) func(net.Conn, []byte) bool {
	return func(c net.Conn, frame []byte) bool {
		q := new(dns.Msg)
		if q.Unpack(frame) != nil {
			return false
		}
		b := bad(q)
		c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...))
		return true
	}
}

func pack(m *dns.Msg) []byte {
	b, err := m.Pack()
	if err != nil {
		panic(err)
	}
	return b
}

func TestBadAnswersNeverReturned(t *testing.T) {
	tests := []struct {
		name    string
		answer  func(q *dns.Msg) []byte
		timeout time.Duration
	}{
		{"wrong ID", func(q *dns.Msg) []byte {
			a := dottest.Answer(q)
			a.Id++
			return pack(a)
		}, 200 * time.Millisecond},
		{"wrong question", func(q *dns.Msg) []byte {
			q2 := q.Copy()
			q2.Question[0].Name = "evil.example.net."
			a := dottest.Answer(q2)
			a.Id = q.Id
			return pack(a)
		}, 5 * time.Second},
		{"wrong type", func(q *dns.Msg) []byte {
			q2 := q.Copy()
			q2.Question[0].Qtype = dns.TypeAAAA
			return pack(dottest.Answer(q2))
		}, 5 * time.Second},
		{"not a response", func(q *dns.Msg) []byte { return pack(q) }, 5 * time.Second},
		{"garbage", func(q *dns.Msg) []byte {
			b := pack(dottest.Answer(q))
			for i := 12; i < len(b); i++ {
				b[i] = 0xff
			}
			return b
		}, 5 * time.Second},
		{"short frame", func(q *dns.Msg) []byte { return []byte{byte(q.Id >> 8), byte(q.Id)} }, 5 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := dottest.New(t, dottest.Options{Raw: rawAnswer(tc.answer)})
			p := newPool(t, srv, nil)
			a, err := exchange(t, p, "a.example.org", tc.timeout)
			if err == nil {
				t.Fatalf("got answer %v, want an error", a)
			}
			if n := srv.Queries(); n > 1+maxBadAnswers {
				t.Errorf("%d sends of one query, want at most %d", n, 1+maxBadAnswers)
			}
		})
	}
}

func TestVerificationFailureSendsNothing(t *testing.T) {
	other, err := dottest.NewCA("other CA")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		mod  func(*Config)
	}{
		{"untrusted CA", func(c *Config) { c.TLS.RootCAs = other.Pool }},
		{"wrong name", func(c *Config) { c.TLS.ServerName = "other.test" }},
		{"failed VerifyConnection", func(c *Config) {
			c.TLS.VerifyConnection = func(tls.ConnectionState) error { return errors.New("pin mismatch") }
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := dottest.New(t, dottest.Options{})
			dialed := make(chan error, 10)
			p := newPool(t, srv, func(c *Config) {
				tc.mod(c)
				c.Events.Dialed = func(err error, _ *tls.ConnectionState) { dialed <- err }
			})
			if _, err := exchange(t, p, "a.example.org", 5*time.Second); err == nil {
				t.Fatal("query answered by a server that failed verification")
			}
			if err := <-dialed; err == nil {
				t.Error("Dialed reported success")
			}
			// Backoff: the next query fails at once, without a new handshake.
			if _, err := exchange(t, p, "b.example.org", 5*time.Second); err == nil {
				t.Fatal("second query answered")
			}
			p.Close()
			srv.Close()
			if srv.BytesRead() != 0 || srv.Queries() != 0 {
				t.Errorf("server received %d bytes, %d queries; want none", srv.BytesRead(), srv.Queries())
			}
			if n := srv.Accepted(); n != 1 {
				t.Errorf("%d connection attempts, want 1 (backoff)", n)
			}
		})
	}
}

func TestExpireIdle(t *testing.T) {
	srv, arrived, release := holdingServer(t)
	p := newPool(t, srv, func(c *Config) { c.Expire = time.Hour })
	if _, err := exchange(t, p, "a.example.org", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	held := make(chan error, 1)
	go func() {
		_, err := exchange(t, p, "hold.example.org", 5*time.Second)
		held <- err
	}()
	<-arrived
	p.expireIdle(time.Now().Add(2 * time.Hour))
	if s := p.Stats(); s.Conns != 1 {
		t.Fatalf("%d conns: a connection with a query in flight was expired", s.Conns)
	}
	close(release)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	p.expireIdle(time.Now().Add(30 * time.Minute))
	if s := p.Stats(); s.Conns != 1 {
		t.Fatalf("%d conns: a connection idle for less than Expire was expired", s.Conns)
	}
	p.expireIdle(time.Now().Add(2 * time.Hour))
	if s := p.Stats(); s.Conns != 0 {
		t.Fatalf("%d conns: an idle connection survived", s.Conns)
	}
}

func TestCloseEndsEverything(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	srv, arrived, release := holdingServer(t)
	defer close(release)
	p := newPool(t, srv, func(c *Config) { c.Expire = time.Minute })
	p.Start()
	p.Start()
	inflight := make(chan error, 1)
	go func() {
		_, err := exchange(t, p, "hold.example.org", time.Minute)
		inflight <- err
	}()
	<-arrived
	p.Close()
	p.Close()
	if err := <-inflight; !errors.Is(err, ErrClosed) {
		t.Errorf("query in flight at Close got %v, want ErrClosed", err)
	}
	if _, err := exchange(t, p, "b.example.org", time.Second); !errors.Is(err, ErrClosed) {
		t.Errorf("query after Close got %v, want ErrClosed", err)
	}
	goleak.VerifyNone(t, ignoreUpstreams(leaks)...)
}

// ignoreUpstreams has goleak ignore the goroutines of the test upstreams,
// which run until the test ends, and those in before.
func ignoreUpstreams(before ...goleak.Option) []goleak.Option {
	for _, f := range dottest.Funcs {
		before = append(before, goleak.IgnoreAnyFunction(f))
	}
	return before
}

func TestLargeQuery(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	p := newPool(t, srv, nil)
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	m.SetEdns0(4096, false)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_PADDING{Padding: make([]byte, 1300)})
	q, err := NewQuery(m, Privacy{}) // larger than the pooled buffer
	if err != nil {
		t.Fatal(err)
	}
	defer q.Release()
	if _, err := p.Exchange(context.Background(), q, time.Time{}); err != nil {
		t.Fatal(err)
	}
}

func TestShortDeadlineDoesNotCondemnConn(t *testing.T) {
	srv, arrived, release := holdingServer(t)
	p := newPool(t, srv, nil) // stalled only after a second of silence
	slow := make(chan error, 1)
	go func() {
		_, err := exchange(t, p, "hold.example.org", 10*time.Second)
		slow <- err
	}()
	<-arrived
	if _, err := exchange(t, p, "hold2.example.org", 20*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the short deadline to pass", err)
	}
	<-arrived
	close(release)
	if err := <-slow; err != nil {
		t.Fatalf("the patient query: %v", err)
	}
	if n := srv.Accepted(); n != 1 || srv.Queries() != 2 {
		t.Errorf("%d connections, %d queries: a query that gave up early replaced a healthy connection", n, srv.Queries())
	}
}

func TestLateAnswerNeverAnswersAReusedID(t *testing.T) {
	// Every query waits for release; the nth to arrive is answered 192.0.2.n.
	arrived, release := make(chan struct{}, 2), make(chan struct{})
	var n atomic.Int32
	srv := dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		i := n.Add(1)
		arrived <- struct{}{}
		<-release
		a := dottest.Answer(q)
		a.Answer[0].(*dns.A).A = net.IPv4(192, 0, 2, byte(i))
		return a
	}})
	p := newPool(t, srv, nil)
	if _, err := exchange(t, p, "www.example.org", 20*time.Millisecond); err == nil {
		t.Fatal("held query answered")
	}
	<-arrived
	for _, c := range *p.conns.Load() {
		c.mu.Lock()
		c.nextID-- // the next query would reuse the abandoned query's ID
		c.mu.Unlock()
	}
	fresh := make(chan *dns.Msg, 1)
	go func() {
		a, err := exchange(t, p, "www.example.org", 10*time.Second)
		if err != nil {
			t.Error(err)
		}
		fresh <- a
	}()
	<-arrived
	close(release)
	if a := <-fresh; a == nil || !a.Answer[0].(*dns.A).A.Equal(net.IPv4(192, 0, 2, 2)) {
		t.Fatalf("got %v, want the answer to the second query, 192.0.2.2", a)
	}
}

func TestAuthFailuresBackOffLonger(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	for _, tc := range []struct {
		name string
		auth bool
		want time.Duration
	}{
		{"authentication failure", true, maxAuthBackoff},
		{"network failure", false, maxBackoff},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t, srv, func(c *Config) {
				c.TLS.ServerName = "other.test" // fails verification
				c.IsAuth = func(error) bool { return tc.auth }
			})
			for range 12 {
				p.mu.Lock()
				p.retryAt = time.Time{} // as if the backoff had passed
				p.mu.Unlock()
				if _, err := exchange(t, p, "a.example.org", 5*time.Second); err == nil {
					t.Fatal("query answered by a server that failed verification")
				}
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.backoff != tc.want {
				t.Errorf("backoff after 12 failed dials: %s, want %s", p.backoff, tc.want)
			}
		})
	}
}

func TestStallIsATimeout(t *testing.T) {
	var ne net.Error
	err := fmt.Errorf("%w: %w", errConnLost, errStalled) // as conn.fail hands it out
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("%v is not a timeout", err)
	}
}

func TestMaxAge(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	p := newPool(t, srv, func(c *Config) { c.MaxAge = time.Hour })
	if _, err := exchange(t, p, "a.example.org", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	first := (*p.conns.Load())[0]
	first.mu.Lock()
	first.born = first.born.Add(-time.Hour) // as if an hour old
	first.mu.Unlock()
	if _, err := exchange(t, p, "b.example.org", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := srv.Accepted(); n != 2 {
		t.Errorf("%d connections: the query went to a connection past max_age", n)
	}
	p.expireIdle(time.Now())
	if conns := *p.conns.Load(); len(conns) != 1 || conns[0] == first {
		t.Errorf("%d connections open after the janitor; want the new one alone", len(conns))
	}
}

func TestMaxIdleConns(t *testing.T) {
	srv, arrived, release := holdingServer(t)
	p := newPool(t, srv, func(c *Config) {
		c.MaxIdleConns = 1
		c.MaxInflight = 1 // each held query on a connection of its own
		c.Expire = time.Hour
	})
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := exchange(t, p, fmt.Sprintf("hold%d.example.org", i), 10*time.Second); err != nil {
				t.Error(err)
			}
		}()
		<-arrived
	}
	close(release)
	wg.Wait()
	if n := p.Stats().Conns; n != 3 {
		t.Fatalf("%d connections for three queries held at once, one each", n)
	}
	oldest := (*p.conns.Load())[0]
	p.expireIdle(time.Now()) // not quiet yet
	p.expireIdle(time.Now().Add(p.janitorEvery()))
	if conns := *p.conns.Load(); len(conns) != 1 || conns[0] != oldest {
		t.Errorf("%d connections kept idle, want the oldest alone", len(conns))
	}
}

func TestSourceAddress(t *testing.T) {
	from := make(chan string, 1)
	srv := dottest.New(t, dottest.Options{Raw: func(c net.Conn, frame []byte) bool {
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		select {
		case from <- host:
		default:
		}
		q := new(dns.Msg)
		if q.Unpack(frame) != nil {
			return false
		}
		c.Write(framed(pack(dottest.Answer(q))))
		return true
	}})
	p := newPool(t, srv, func(c *Config) { c.LocalAddr = net.IPv4(127, 0, 0, 2) })
	if _, err := exchange(t, p, "a.example.org", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := <-from; got != "127.0.0.2" {
		t.Errorf("the upstream saw the query come from %s, want 127.0.0.2", got)
	}
}
