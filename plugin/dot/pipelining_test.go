package dot

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// burst sends n queries at once over p and returns how many failed.
func burst(t *testing.T, p *Pool, n int) (failed int) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := exchange(t, p, fmt.Sprintf("q%d.example.org", i), 10*time.Second); err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed
}

// serialEvents returns a Config change that sends every Serial event on the
// returned channel.
func serialEvents() (func(*Config), chan bool) {
	ch := make(chan bool, 10)
	return func(c *Config) { c.Events.Serial = func(on bool, _ string) { ch <- on } }, ch
}

// wantSerialOnce fails t unless exactly one Serial(true) event came.
func wantSerialOnce(t *testing.T, ch chan bool) {
	t.Helper()
	select {
	case on := <-ch:
		if !on {
			t.Fatal("Serial(false) before Serial(true)")
		}
	default:
		t.Fatal("the pool did not fall back to one query per connection")
	}
	if len(ch) != 0 {
		t.Errorf("Serial reported %d more times, want once", len(ch))
	}
}

func wantNoSerial(t *testing.T, ch chan bool) {
	t.Helper()
	if len(ch) != 0 {
		t.Error("a pipelining upstream was taken for one that cannot pipeline")
	}
}

func TestFallBackToOneQueryPerConn(t *testing.T) {
	// An upstream that takes a millisecond per query, one at a time, and
	// closes the connection when a second query arrives meanwhile.
	var mu sync.Mutex
	busy := map[net.Conn]bool{}
	srv := dottest.New(t, dottest.Options{Raw: func(c net.Conn, frame []byte) bool {
		mu.Lock()
		defer mu.Unlock()
		if busy[c] {
			return false
		}
		busy[c] = true
		q := new(dns.Msg)
		if q.Unpack(frame) != nil {
			return false
		}
		a := pack(dottest.Answer(q))
		time.AfterFunc(time.Millisecond, func() {
			mu.Lock()
			defer mu.Unlock()
			c.Write(append([]byte{byte(len(a) >> 8), byte(len(a))}, a...))
			busy[c] = false
		})
		return true
	}})
	events, serial := serialEvents()
	var open, most atomic.Int32 // connections open, and the most at once
	p := newPool(t, srv, func(c *Config) {
		c.MaxConns = 2
		events(c)
		c.Events.Dialed = func(err error, _ *tls.ConnectionState) {
			if err == nil {
				n := open.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
			}
		}
		c.Events.Closed = func(error, int) { open.Add(-1) }
	})
	burst(t, p, 20) // pipelined queries die with their connections; the pool notices
	if failed := burst(t, p, 40); failed != 0 {
		t.Errorf("%d of 40 queries failed after the fall-back", failed)
	}
	wantSerialOnce(t, serial)
	if n := most.Load(); n > 2 {
		t.Errorf("%d connections open at once, past max_conns 2", n)
	}
}

func TestUpstreamWithQueryLimitStaysPipelined(t *testing.T) {
	srv := dottest.New(t, dottest.Options{CloseAfter: 10}) // a per-connection query limit
	p := newPool(t, srv, func(c *Config) {
		c.Events.Serial = func(bool, string) { t.Error("an upstream with a query limit was taken for one that cannot pipeline") }
	})
	var wg sync.WaitGroup
	for w := range 4 { // connections die with queries in flight, after 10 answers
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				exchange(t, p, fmt.Sprintf("w%d-%d.example.org", w, i), 5*time.Second)
			}
		}()
	}
	wg.Wait()
}

// oneAtATime is an upstream that reads a query, works on it for work, answers
// it, and only then reads the next one, as a resolver that does not handle
// pipelining does.
func oneAtATime(work time.Duration) func(net.Conn, []byte) bool {
	return func(c net.Conn, frame []byte) bool {
		q := new(dns.Msg)
		if q.Unpack(frame) != nil {
			return false
		}
		time.Sleep(work) // the work, not a synchronization
		a := pack(dottest.Answer(q))
		_, err := c.Write(append([]byte{byte(len(a) >> 8), byte(len(a))}, a...))
		return err == nil
	}
}

func TestFallBackForInOrderUpstreamWithLongGaps(t *testing.T) {
	srv := dottest.New(t, dottest.Options{Raw: oneAtATime(10 * time.Millisecond)})
	events, serial := serialEvents()
	p := newPool(t, srv, func(c *Config) {
		c.MaxConns = 1 // every query waits behind the others on one connection
		events(c)
	})
	if failed := burst(t, p, 2*orderWindow); failed != 0 {
		t.Errorf("%d queries failed", failed)
	}
	wantSerialOnce(t, serial)
	if inflight := p.maxInflight(); inflight != 1 {
		t.Errorf("%d queries per connection after the fall-back, want 1", inflight)
	}
	if failed := burst(t, p, 16); failed != 0 {
		t.Errorf("%d of 16 queries failed after the fall-back", failed)
	}
}

func TestFastInOrderUpstreamStaysPipelined(t *testing.T) {
	// CoreDNS and many others answer the queries of one connection in order,
	// one at a time, but in microseconds: pipelining is still the fast way.
	srv := dottest.New(t, dottest.Options{Raw: oneAtATime(0)})
	events, serial := serialEvents()
	p := newPool(t, srv, events)
	for range 4 {
		if failed := burst(t, p, 4*orderWindow); failed != 0 {
			t.Errorf("%d queries failed", failed)
		}
	}
	wantNoSerial(t, serial)
}

// answersPerConn counts the answers an upstream wrote on each connection.
type answersPerConn struct {
	mu sync.Mutex
	n  map[net.Conn]int
}

func (a *answersPerConn) add(c net.Conn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n == nil {
		a.n = map[net.Conn]int{}
	}
	a.n[c]++
}

// conns returns how many connections carried at least least answers.
func (a *answersPerConn) conns(least int) (n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, k := range a.n {
		if k >= least {
			n++
		}
	}
	return n
}

// stream sends n queries from each of workers loops, one after the other in
// each, and returns how many failed: a steady load of workers queries in
// flight, as many clients keep.
func stream(t *testing.T, p *Pool, workers, n int) (failed int) {
	var wg sync.WaitGroup
	var f atomic.Int32
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				if _, err := exchange(t, p, fmt.Sprintf("w%d-%d.example.org", w, i), 10*time.Second); err != nil {
					f.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return int(f.Load())
}

func TestQueuedQueriesAreSpreadOverConns(t *testing.T) {
	// An upstream that answers each connection's queries one at a time, in
	// microseconds: sixteen queries in flight on one connection wait on each
	// other, while the upstream could work on four connections at once.
	var per answersPerConn
	inOrder := oneAtATime(0)
	srv := dottest.New(t, dottest.Options{Raw: func(c net.Conn, frame []byte) bool {
		per.add(c)
		return inOrder(c, frame)
	}})
	spread := make(chan int, 4)
	events, serial := serialEvents()
	p := newPool(t, srv, func(c *Config) {
		events(c)
		c.MaxConns = 3
		c.Events.Spread = func(n int) { spread <- n }
	})
	if failed := stream(t, p, 16, 40); failed != 0 {
		t.Errorf("%d of 640 queries failed", failed)
	}
	select {
	case n := <-spread:
		if n != 3 {
			t.Errorf("spreading over up to %d connections, want max_conns 3", n)
		}
	default:
		t.Fatal("queries that wait on each other on one connection were not spread")
	}
	if len(spread) != 0 {
		t.Errorf("Spread reported %d more times, want once", len(spread))
	}
	wantNoSerial(t, serial)
	// Once spreading, every connection up to max_conns takes its share.
	before := per.conns(1)
	if failed := stream(t, p, 16, 40); failed != 0 {
		t.Errorf("%d of 640 queries failed while spreading", failed)
	}
	if n := per.conns(20); n != 3 {
		t.Errorf("%d connections carried 20 answers or more, want max_conns 3 (%d before spreading)", n, before)
	}
	if n := per.conns(1); n > 3 {
		t.Errorf("%d connections opened, past max_conns 3", n)
	}
}

// swapping returns an upstream that works on a connection's queries at once,
// so that its answers overtake each other: of each two queries it reads it
// answers the second first (a query left alone goes out a millisecond
// later). It counts its answers in per.
func swapping(per *answersPerConn) func(net.Conn, []byte) bool {
	var (
		mu   sync.Mutex // guards held and the writes
		held = map[net.Conn][]byte{}
	)
	write := func(c net.Conn, q []byte) {
		m := new(dns.Msg)
		if m.Unpack(q) != nil {
			return
		}
		a := pack(dottest.Answer(m))
		c.Write(framed(a))
		per.add(c)
	}
	return func(c net.Conn, frame []byte) bool {
		mu.Lock()
		defer mu.Unlock()
		first, ok := held[c]
		if !ok {
			held[c] = frame
			time.AfterFunc(time.Millisecond, func() {
				mu.Lock()
				defer mu.Unlock()
				if q, ok := held[c]; ok && &q[0] == &frame[0] {
					delete(held, c)
					write(c, q)
				}
			})
			return true
		}
		delete(held, c)
		write(c, frame)
		write(c, first)
		return true
	}
}

func TestConcurrentUpstreamKeepsOneConn(t *testing.T) {
	var per answersPerConn
	srv := dottest.New(t, dottest.Options{Raw: swapping(&per)})
	events, serial := serialEvents()
	p := newPool(t, srv, func(c *Config) {
		events(c)
		c.MaxConns = 3
		c.Events.Spread = func(int) { t.Error("an upstream that answers out of order had its queries spread") }
	})
	if failed := stream(t, p, 16, 40); failed != 0 {
		t.Errorf("%d of 640 queries failed", failed)
	}
	wantNoSerial(t, serial)
	if n := per.conns(1); n != 1 {
		t.Errorf("%d connections carried 16 queries in flight, want 1", n)
	}
}

func TestSpreadingStopsWhenAnswersOvertake(t *testing.T) {
	// The upstream answers in order until it starts to work on queries at
	// once (a new version, or a load balancer that moved the address).
	var (
		per        answersPerConn
		overtaking atomic.Bool
	)
	inOrder, swap := oneAtATime(0), swapping(&per)
	srv := dottest.New(t, dottest.Options{Raw: func(c net.Conn, frame []byte) bool {
		if overtaking.Load() {
			return swap(c, frame)
		}
		return inOrder(c, frame)
	}})
	p := newPool(t, srv, func(c *Config) { c.MaxConns = 3 })
	if failed := stream(t, p, 16, 40); failed != 0 {
		t.Errorf("%d of 640 queries failed", failed)
	}
	if !p.spreading() {
		t.Fatal("queries that wait on each other on one connection were not spread")
	}
	overtaking.Store(true)
	if failed := stream(t, p, 16, 40); failed != 0 {
		t.Errorf("%d of 640 queries failed", failed)
	}
	if p.spreading() {
		t.Error("still spreading queries to an upstream whose answers overtake each other")
	}
}

func TestSlowParallelUpstreamStaysPipelined(t *testing.T) {
	// Every answer takes 10ms, but they are worked on at once.
	srv := dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		time.Sleep(10 * time.Millisecond) // the work, not a synchronization
		return dottest.Answer(q)
	}})
	events, serial := serialEvents()
	p := newPool(t, srv, events)
	for range 4 {
		if failed := burst(t, p, 2*orderWindow); failed != 0 {
			t.Errorf("%d queries failed", failed)
		}
	}
	wantNoSerial(t, serial)
}

func TestPacedQueriesToSlowUpstreamStayPipelined(t *testing.T) {
	// A query every 6ms to an upstream 10ms away: the answers come in order,
	// 6ms apart, each while the next query is out; but none waits behind
	// another, so none takes longer than the fastest.
	srv := dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		time.Sleep(10 * time.Millisecond) // the distance, not a synchronization
		return dottest.Answer(q)
	}})
	events, serial := serialEvents()
	p := newPool(t, srv, events)
	var wg sync.WaitGroup
	tick := time.NewTicker(6 * time.Millisecond)
	defer tick.Stop()
	for i := range 3 * orderWindow {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := exchange(t, p, fmt.Sprintf("q%d.example.org", i), 10*time.Second); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	wantNoSerial(t, serial)
}

func TestLearnsQueryLimit(t *testing.T) {
	srv := dottest.New(t, dottest.Options{CloseAfter: 10})
	limits := make(chan int, 4)
	var ev faultEvents
	p := newPool(t, srv, func(c *Config) {
		ev.config(c)
		c.Events.Limit = func(n int) { limits <- n }
	})
	if failed := stream(t, p, 20, 20); failed != 0 {
		t.Errorf("%d of 400 queries failed while the limit was learned", failed)
	}
	select {
	case n := <-limits:
		if n != 10 {
			t.Errorf("learned a limit of %d queries per connection, want 10", n)
		}
	default:
		t.Fatal("no limit learned from connections closed after 10 answers")
	}
	if s := p.Stats(); s.QueryLimit != 10 {
		t.Errorf("Stats().QueryLimit = %d, want 10", s.QueryLimit)
	}
	before, queries := ev.resent.Load(), srv.Queries()
	t.Logf("%d queries resent, %d connections, while the limit was learned", before, srv.Accepted())
	if failed := stream(t, p, 20, 20); failed != 0 {
		t.Errorf("%d of 400 queries failed after the limit was learned", failed)
	}
	if n := ev.resent.Load() - before; n != 0 {
		t.Errorf("%d queries sent again once the limit was known: written to connections that would not answer them", n)
	}
	if n := srv.Queries() - queries; n != 400 {
		t.Errorf("the upstream received %d queries for 400", n)
	}
	if len(limits) != 0 {
		t.Errorf("the limit was reported %d more times", len(limits))
	}
}

func TestMisroutingUpstreamGetsOneQueryPerConn(t *testing.T) {
	var n atomic.Int64
	srv := dottest.New(t, dottest.Options{Wire: func(q *dns.Msg) []byte {
		a := dottest.Answer(q)
		if n.Add(1)%4 == 0 {
			a.Id++ // another query's, if it is in flight
		}
		return pack(a)
	}})
	whys := make(chan string, 4)
	p := newPool(t, srv, func(c *Config) {
		c.Events.Serial = func(on bool, why string) {
			if on {
				whys <- why
			}
		}
	})
	if failed := burst(t, p, 200); failed > 10 {
		t.Errorf("%d of 200 queries failed", failed)
	}
	select {
	case why := <-whys:
		if why != WhyMisroutes {
			t.Errorf("one query per connection because %s, want %s", why, WhyMisroutes)
		}
	default:
		t.Fatal("the pool kept pipelining to an upstream that answers under the wrong IDs")
	}
	if n := p.maxInflight(); n != 1 {
		t.Errorf("%d queries per connection, want 1", n)
	}
}
