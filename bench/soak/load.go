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

const (
	clientTimeout = 5 * time.Second // a query with no answer by then is a timeout
	maxInflight   = 256             // queries the client has in flight at most
)

// load sends A queries for distinct names at a steady rate, over UDP and,
// every tcpEvery-th query, over TCP on a connection of its own. Each query
// runs in its own goroutine, at most maxInflight at once. A ticker paces it:
// each tick sends the queries due since the last, at most a tenth of a
// second's worth, so that a client held up by a busy machine catches up
// without bursting; what it cannot send so, or finds maxInflight busy for,
// is counted as skipped.
type load struct {
	addr     string
	rate     float64 // queries per second
	tcpEvery int     // every n-th query goes over TCP; 0 never
	max      int     // queries at most

	paused   atomic.Bool
	inflight atomic.Int64
	wg       sync.WaitGroup

	sent, tcp, ok, servfail, timeout, other, skipped atomic.Int64
}

// counts is a snapshot of a load's counters.
type counts struct {
	sent, tcp, ok, servfail, timeout, other, skipped int64
}

func (c counts) failed() int64 { return c.servfail + c.timeout + c.other }

func (l *load) counts() counts {
	return counts{sent: l.sent.Load(), tcp: l.tcp.Load(), ok: l.ok.Load(), servfail: l.servfail.Load(),
		timeout: l.timeout.Load(), other: l.other.Load(), skipped: l.skipped.Load()}
}

// tick is the pacing ticker's period.
const tick = 10 * time.Millisecond

// run sends queries until ctx ends or max have been sent, then waits for the
// answers (each bounded by clientTimeout).
func (l *load) run(ctx context.Context) {
	defer l.wg.Wait()
	sem := make(chan struct{}, maxInflight)
	t := time.NewTicker(tick)
	defer t.Stop()
	burst := max(1, l.rate/10)
	last, owed := time.Now(), 0.0
	for i := 0; i < l.max; {
		var now time.Time
		select {
		case <-ctx.Done():
			return
		case now = <-t.C:
		}
		owed += now.Sub(last).Seconds() * l.rate
		last = now
		if l.paused.Load() {
			owed = 0
			continue
		}
		if owed > burst {
			l.skipped.Add(int64(owed - burst))
			owed = burst
		}
		for ; owed >= 1 && i < l.max; owed-- {
			select {
			case sem <- struct{}{}:
			default:
				l.skipped.Add(1)
				continue
			}
			network := "udp"
			if l.tcpEvery > 0 && i%l.tcpEvery == l.tcpEvery-1 {
				network = "tcp"
				l.tcp.Add(1)
			}
			l.sent.Add(1)
			l.inflight.Add(1)
			l.wg.Add(1)
			go func(i int) {
				defer func() { <-sem; l.inflight.Add(-1); l.wg.Done() }()
				l.query(i, network)
			}(i)
			i++
		}
	}
}

// query sends query i and counts its outcome.
func (l *load) query(i int, network string) {
	m := new(dns.Msg)
	m.SetQuestion(fmt.Sprintf("s%d.soak.test.", i), dns.TypeA)
	c := &dns.Client{Net: network, Timeout: clientTimeout}
	a, _, err := c.Exchange(m, l.addr)
	var ne net.Error
	switch {
	case err != nil && errors.As(err, &ne) && ne.Timeout():
		l.timeout.Add(1)
	case err != nil:
		l.other.Add(1)
	case a.Rcode == dns.RcodeServerFailure:
		l.servfail.Add(1)
	case a.Rcode == dns.RcodeSuccess && len(a.Answer) == 1 && a.Question[0].Name == m.Question[0].Name:
		l.ok.Add(1)
	default:
		l.other.Add(1)
	}
}

// pause stops sending and waits, within clientTimeout and a second, until no
// query is in flight. It reports whether none is.
func (l *load) pause(ctx context.Context) bool {
	l.paused.Store(true)
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(clientTimeout + time.Second)
	for l.inflight.Load() > 0 {
		select {
		case <-ctx.Done():
			return false
		case <-deadline:
			return false
		case <-t.C:
		}
	}
	return true
}

// resume sends again after pause.
func (l *load) resume() { l.paused.Store(false) }
