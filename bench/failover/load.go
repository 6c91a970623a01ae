package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// clientTimeout is how long the client waits for an answer; an answer that
// comes later counts as a timeout.
const clientTimeout = 5 * time.Second

// noAnswer is the rcode of a query that got no answer within clientTimeout.
const noAnswer = -1

// record is what the client saw of one query.
type record struct {
	sent    time.Duration // when it was sent, since the start of the load
	latency time.Duration // until its answer; clientTimeout when none came
	rcode   int           // the answer's rcode, or noAnswer
	from    string        // the upstream whose address the answer holds, "" if none
}

func (r record) failed() bool   { return r.rcode != dns.RcodeSuccess }
func (r record) timedOut() bool { return r.rcode == noAnswer }

// answered is when an answer arrived, since the start of the load.
func (r record) answered() time.Duration { return r.sent + r.latency }

// plan is one load: n queries, one every interval, and the events that
// happen to the upstreams meanwhile.
type plan struct {
	n        int
	interval time.Duration
	events   []event
}

// event is something done to the upstreams at a fixed time of the load.
// Events at 0 are done before the first query leaves.
type event struct {
	at time.Duration
	do func() error
}

// answer is what a reader saw for one query.
type answer struct {
	ok    bool
	at    time.Duration // since the start of the load
	rcode int
	from  string
}

// runLoad sends p's queries to addr over UDP at a fixed pace, one sender
// and one reader per socket, and returns one record per query sent. It
// returns once every query is answered or has timed out. who names the
// upstream behind each answer address.
//
// IDs are not reused within a run, so that a late answer is never taken for
// another query's: each socket carries at most 65,536 queries, and query i
// goes out on socket i%S with ID i/S.
func runLoad(ctx context.Context, addr string, p plan, who map[string]string) ([]record, error) {
	conns, err := dialAll(addr, (p.n+65535)/65536)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, e := range p.events {
		if e.at <= 0 {
			if err := e.do(); err != nil {
				return nil, err
			}
		}
	}

	l := &loadRun{p: p, conns: conns, who: who, t0: time.Now(),
		sent: make([]time.Duration, p.n), got: make([]answer, p.n)}
	l.stopAt.Store(-1)
	var wg sync.WaitGroup
	for s := range conns {
		wg.Add(1)
		go func() { defer wg.Done(); l.read(ctx, s) }()
	}
	evErr := make(chan error, 1)
	go func() { evErr <- l.runEvents(ctx) }()
	n := l.send(ctx)
	wg.Wait()
	err = <-evErr // the last event (a restart, say) may come after the last query
	return l.records(n), err
}

func dialAll(addr string, n int) ([]*net.UDPConn, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	var conns []*net.UDPConn
	for range n {
		c, err := net.DialUDP("udp", nil, ua)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// loadRun is the state of one runLoad. The sender alone writes sent, each
// reader alone writes the entries of got for its socket; both are read after
// every goroutine is done.
type loadRun struct {
	p     plan
	conns []*net.UDPConn
	who   map[string]string
	t0    time.Time

	sent []time.Duration
	got  []answer

	answered atomic.Int64 // answers received, over all sockets
	// stopAt is when readers give up, since t0: the last send plus
	// clientTimeout; -1 while queries are still being sent.
	stopAt atomic.Int64
}

// send sends the queries on schedule and returns how many it sent. A send
// that is late (the scheduler, a slow write) goes at once, so the pace
// catches up rather than drifts.
func (l *loadRun) send(ctx context.Context) int {
	socks := len(l.conns)
	i := 0
	for ; i < l.p.n && ctx.Err() == nil; i++ {
		if d := time.Until(l.t0.Add(time.Duration(i) * l.p.interval)); d > 0 {
			time.Sleep(d)
		}
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("q%d.failover.test.", i), dns.TypeA)
		m.Id = uint16(i / socks)
		buf, err := m.Pack()
		if err != nil {
			continue
		}
		l.sent[i] = time.Since(l.t0)
		// A failed write (ICMP from an earlier datagram, say) is a
		// query without an answer: it shows up as a timeout.
		l.conns[i%socks].Write(buf)
	}
	last := time.Duration(0)
	if i > 0 {
		last = l.sent[i-1]
	}
	l.stopAt.Store(int64(last + clientTimeout))
	return i
}

// read receives answers on socket s until every query sent has its answer
// or stopAt passes.
func (l *loadRun) read(ctx context.Context, s int) {
	c, socks := l.conns[s], len(l.conns)
	buf := make([]byte, 65535)
	for ctx.Err() == nil {
		stop := l.stopAt.Load()
		now := time.Since(l.t0)
		if stop >= 0 && (now > time.Duration(stop) || l.answered.Load() >= int64(l.p.n)) {
			return
		}
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ECONNREFUSED while CoreDNS restarts its socket, and the like
		}
		at := time.Since(l.t0)
		m := new(dns.Msg)
		if m.Unpack(buf[:n]) != nil {
			continue
		}
		i := int(m.Id)*socks + s
		if i >= l.p.n || l.got[i].ok {
			continue
		}
		l.got[i] = answer{ok: true, at: at, rcode: m.Rcode, from: l.from(m)}
		l.answered.Add(1)
	}
}

// from names the upstream whose address is in m's A record.
func (l *loadRun) from(m *dns.Msg) string {
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			if name, ok := l.who[a.A.String()]; ok {
				return name
			}
			return "?"
		}
	}
	return ""
}

// runEvents does the events after 0 at their times.
func (l *loadRun) runEvents(ctx context.Context) error {
	for _, e := range l.p.events {
		if e.at <= 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Until(l.t0.Add(e.at))):
		}
		if err := e.do(); err != nil {
			return err
		}
	}
	return nil
}

// records joins what the sender and the readers saw, for the n queries sent.
func (l *loadRun) records(n int) []record {
	recs := make([]record, n)
	for i := range recs {
		r := record{sent: l.sent[i], latency: clientTimeout, rcode: noAnswer}
		if g := l.got[i]; g.ok && g.at-r.sent <= clientTimeout {
			r.latency, r.rcode, r.from = g.at-r.sent, g.rcode, g.from
		}
		recs[i] = r
	}
	return recs
}
