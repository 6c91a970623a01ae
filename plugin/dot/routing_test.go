package dot

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// routed are the queries FuzzRouting sends, one after another, onto the
// pool's first connection, each with its own deadline: the first gives up
// before any answer held back until it returned, so its ID is abandoned when
// that answer comes; the last outlives the pool's stall limit (stallAfter).
var routed = []struct {
	name     string
	qtype    uint16
	edns     bool // the client sends an OPT record
	pad      bool // padded, so the pool may add an OPT record
	deadline time.Duration
}{
	{"a.example.org.", dns.TypeA, false, true, 3 * time.Millisecond},
	{"b.example.org.", dns.TypeAAAA, false, false, 10 * time.Millisecond},
	{"c.example.org.", dns.TypeA, true, true, 25 * time.Millisecond},
}

// routingTimeout is the pool's Timeout in FuzzRouting: long enough for a
// handshake under the race detector, short enough that the last query of
// routed outlives stallAfter.
const routingTimeout = 40 * time.Millisecond

// routingTLS is a server and a client configuration for net.Pipe
// connections, made once per process: the client's session cache makes each
// handshake after the first a resumption.
type routingTLS struct{ server, client *tls.Config }

func newRoutingTLS(tb testing.TB) routingTLS {
	tb.Helper()
	ca, err := dottest.NewCA("routing CA")
	if err != nil {
		tb.Fatal(err)
	}
	leaf, err := ca.Issue([]string{dottest.DefaultName}, time.Time{}, time.Time{})
	if err != nil {
		tb.Fatal(err)
	}
	return routingTLS{
		server: &tls.Config{Certificates: []tls.Certificate{leaf.TLS}, MinVersion: tls.VersionTLS12},
		// TLS 1.2 with X25519: a resumed handshake then costs no key
		// exchange at all, which keeps iterations short.
		client: &tls.Config{RootCAs: ca.Pool, ServerName: dottest.DefaultName, MinVersion: tls.VersionTLS12,
			MaxVersion: tls.VersionTLS12, CurvePreferences: []tls.CurveID{tls.X25519},
			ClientSessionCache: tls.NewLRUClientSessionCache(1)},
	}
}

// scriptedUpstream is the far end of a pool's first connection: once every
// query of routed is on the wire or done (sent closed), it writes script but
// for its last late bytes, then, once the first query's Exchange has returned
// (firstDone closed), those. Unless hold, it then closes the connection;
// either way it reads and drops queries until the connection ends. Each query
// frame it reads is signalled on read, if there is room.
func scriptedUpstream(raw net.Conn, cfg *tls.Config, script []byte, late int, hold bool, read chan<- struct{}, sent, firstDone <-chan struct{}) {
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(5 * time.Second)) // whatever the pool does, this ends
	tc := tls.Server(raw, cfg)
	if tc.Handshake() != nil {
		return
	}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			if _, err := ReadFrame(tc); err != nil {
				return
			}
			select {
			case read <- struct{}{}:
			default:
			}
		}
	}()
	select {
	case <-sent:
	case <-readerDone:
	}
	split := len(script) - min(late, len(script))
	if _, err := tc.Write(script[:split]); err == nil {
		select {
		case <-firstDone:
		case <-readerDone:
		}
		tc.Write(script[split:])
	}
	if !hold {
		raw.Close()
	}
	<-readerDone
}

// goodUpstream answers every query on raw with dottest.Answer, in order,
// until the connection ends.
func goodUpstream(raw net.Conn, cfg *tls.Config) {
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Server(raw, cfg)
	for {
		buf, err := ReadFrame(tc)
		if err != nil {
			return
		}
		q := new(dns.Msg)
		if q.Unpack(buf) != nil {
			return
		}
		b, err := dottest.Answer(q).Pack()
		if err != nil {
			return
		}
		if _, err := tc.Write(append([]byte{byte(len(b) >> 8), byte(len(b))}, b...)); err != nil {
			return
		}
	}
}

// FuzzRouting runs the reader's routing of answers to queries by ID against
// an upstream that writes arbitrary bytes. A pool dials over net.Pipe; on its
// first connection the queries of routed go out one after another, so they
// take IDs 1, 2 and 3, and the upstream answers with script (see
// scriptedUpstream); every later connection reaches a correct upstream, so a
// query that a bad answer or a dead connection sends again gets its answer
// there. Whatever script holds:
//   - nothing panics;
//   - every Exchange returns by its deadline either an answer to its own
//     question with its own ID (answerFault) or an error; before the
//     deadline, only a deadline error (a handshake's): a query always has a
//     correct connection to fall back on, so a bad answer or a lost
//     connection may reach the caller only when no time was left to resend;
//   - once every Exchange has returned, no connection holds a call but for
//     abandoned IDs, and after Close no goroutine of the pool is left.
//
// One iteration takes a few milliseconds, or up to the last deadline (25ms)
// when the upstream holds answers back.
func FuzzRouting(f *testing.F) {
	cfgs := newRoutingTLS(f)
	f.Add(answersScript(f, []int{0, 1, 2}, nil), uint16(0), false)
	var iter atomic.Uint32
	f.Fuzz(func(t *testing.T, script []byte, late uint16, hold bool) {
		// Client IDs differ from one iteration to the next, so an answer left
		// over in a pooled call would be seen.
		base := uint16(iter.Add(1) * uint32(len(routed)))
		route(t, cfgs, script, int(late), hold, base)
	})
}

// answersScript returns the frames of dottest.Answer to the queries of routed
// with the given indexes, in that order, as FuzzRouting's first connection
// numbers them (IDs 1, 2, 3), each passed through change if not nil.
func answersScript(tb testing.TB, order []int, change func(i int, a *dns.Msg)) []byte {
	tb.Helper()
	var script []byte
	for _, i := range order {
		m := routedMsg(i, 0)
		m.Id = uint16(i + 1)
		a := dottest.Answer(m)
		if change != nil {
			change(i, a)
		}
		b := packed(tb, a)
		script = append(script, byte(len(b)>>8), byte(len(b)))
		script = append(script, b...)
	}
	return script
}

// routedMsg returns the client's message for routed[i], with ID id.
func routedMsg(i int, id uint16) *dns.Msg {
	r := routed[i]
	m := new(dns.Msg)
	m.SetQuestion(r.name, r.qtype)
	m.Id = id
	if r.edns {
		m.SetEdns0(1232, true)
	}
	return m
}

func route(t *testing.T, cfgs routingTLS, script []byte, late int, hold bool, base uint16) {
	leaks := goleak.IgnoreCurrent()
	var (
		dialed    = make(chan error, 8)
		read      = make(chan struct{}, 8)
		sent      = make(chan struct{})
		firstDone = make(chan struct{})
		upstreams sync.WaitGroup
		conns     atomic.Int32
	)
	p := New(Config{
		Addr:        "upstream.test:853",
		TLS:         cfgs.client,
		MaxConns:    2,
		MaxInflight: 32, // three queries leave the first connection not busy: no second dial before it fails
		Timeout:     routingTimeout,
		Expire:      -1,
		Events: Events{Dialed: func(err error, _ *tls.ConnectionState) {
			select {
			case dialed <- err:
			default:
			}
		}},
	})
	p.dialTCP = func(context.Context, string, string) (net.Conn, error) {
		c, s := net.Pipe()
		first := conns.Add(1) == 1
		upstreams.Add(1)
		go func() {
			defer upstreams.Done()
			if first {
				scriptedUpstream(s, cfgs.server, script, late, hold, read, sent, firstDone)
			} else {
				goodUpstream(s, cfgs.server)
			}
		}()
		return c, nil
	}
	queries := make([]*Query, len(routed))
	defer func() { // after Close below: no Exchange uses them any more
		for _, q := range queries {
			if q != nil {
				q.Release()
			}
		}
	}()
	closeSent := sync.OnceFunc(func() { close(sent) })
	closed := false
	defer func() {
		if !closed { // a failed check: leave nothing running for the next iteration
			closeSent()
			p.Close()
			upstreams.Wait()
		}
	}()
	p.Start()
	if err := <-dialed; err != nil {
		t.Skipf("first handshake over net.Pipe: %v", err) // a machine too loaded for routingTimeout
	}

	type result struct {
		a       *dns.Msg
		err     error
		elapsed time.Duration
	}
	results := make([]result, len(routed))
	var exchanges sync.WaitGroup
	for i, r := range routed {
		pr := Privacy{}
		if r.pad {
			pr.PadBlock = DefaultPadBlock
		}
		q, err := NewQuery(routedMsg(i, base+uint16(i)), pr)
		if err != nil {
			t.Fatal(err)
		}
		queries[i] = q
		done := make(chan struct{})
		exchanges.Add(1)
		go func() {
			defer exchanges.Done()
			defer close(done)
			if i == 0 {
				defer close(firstDone)
			}
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), r.deadline)
			defer cancel()
			a, err := p.Exchange(ctx, q, time.Time{})
			results[i] = result{a, err, time.Since(start)}
		}()
		select { // the next query only once this one has its ID
		case <-read:
		case <-done:
		}
	}
	closeSent()
	allDone := make(chan struct{})
	go func() { exchanges.Wait(); close(allDone) }()
	select {
	case <-allDone:
	case <-time.After(5 * time.Second):
		panic("Exchange still running 5s past its deadline") // a panic shows every goroutine
	}

	for i, r := range results {
		switch {
		case r.elapsed > routed[i].deadline+time.Second:
			t.Errorf("query %d returned %s after its %s deadline", i, r.elapsed-routed[i].deadline, routed[i].deadline)
		case r.err != nil && r.a != nil:
			t.Errorf("query %d: both an answer and an error: %v", i, r.err)
		case r.err != nil && !errors.Is(r.err, context.DeadlineExceeded) && r.elapsed < routed[i].deadline:
			t.Errorf("query %d: %v after %s; want an answer or a deadline error", i, r.err, r.elapsed)
		case r.err == nil:
			if fault := answerFault(queries[i], r.a); fault != "" {
				t.Errorf("query %d got a wrong answer: %s\n%v", i, fault, r.a)
			}
		}
	}

	for _, c := range *p.conns.Load() {
		c.mu.Lock()
		for id, cl := range c.calls {
			if cl != abandoned {
				t.Errorf("conn %p: ID %d still holds a call whose Exchange has returned", c, id)
			}
		}
		if c.gaveUp != len(c.calls) {
			t.Errorf("conn %p: gaveUp %d, %d calls", c, c.gaveUp, len(c.calls))
		}
		c.mu.Unlock()
	}

	closed = true
	p.Close()
	upstreams.Wait()
	goleak.VerifyNone(t, leaks)
}
