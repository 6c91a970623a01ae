package dotstub

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dot"
	"github.com/dotstub/dotstub/plugin/upstream"
)

// Hedging budget, in thousandths of a hedged query: each query earns
// hedgeEarn, a hedge costs hedgeCost, and at most hedgeBurst are saved up. So
// at most 10% of queries are hedged over time, and an upstream that is
// overloaded is not sent twice the load.
const (
	hedgeEarn  = 100
	hedgeCost  = 1000
	hedgeBurst = 10 * hedgeCost
)

// hedge is the hedge option: when the first upstream has not answered after
// delay (or, with auto, after the 95th percentile of its recent answer times),
// the query also goes to the next one, and the first answer wins.
type hedge struct {
	enabled bool
	auto    bool
	delay   time.Duration
	tokens  atomic.Int64
}

func (h *hedge) on() bool { return h.enabled }

// delayFor returns how long to wait for u before hedging; zero is never.
func (h *hedge) delayFor(u *upstream.Upstream) time.Duration {
	if h.auto {
		return u.P95()
	}
	return h.delay
}

func (h *hedge) earn() {
	if h.tokens.Load() < hedgeBurst {
		h.tokens.Add(hedgeEarn)
	}
}

func (h *hedge) take() bool {
	for {
		t := h.tokens.Load()
		if t < hedgeCost {
			return false
		}
		if h.tokens.CompareAndSwap(t, t-hedgeCost) {
			return true
		}
	}
}

// hedgeCall is the hedged query to the second upstream.
type hedgeCall struct {
	launched chan bool // the timer's decision, sent once: did it send the query?
	done     chan struct{}
	a        *dns.Msg
	err      error
}

// hedged asks first, and second as well if first has not answered after the
// hedge delay and the budget allows. It returns the first valid answer and
// whose it is, and whether second was asked.
func (d *Dotstub) hedged(ctx context.Context, deadline time.Time, q *dot.Query, first, second *upstream.Upstream, left int) (*dns.Msg, *upstream.Upstream, bool, error) {
	d.hedge.earn()
	delay := d.hedge.delayFor(first)
	if delay <= 0 {
		a, err := d.attempt(ctx, deadline, first, q, left)
		return a, first, false, err
	}
	ctx1, cancel1 := context.WithCancel(ctx)
	defer cancel1()
	ctx2, cancel2 := context.WithCancel(ctx)
	defer cancel2()
	h := &hedgeCall{launched: make(chan bool, 1), done: make(chan struct{})}
	t := time.AfterFunc(delay, func() {
		if !d.hedge.take() {
			h.launched <- false
			return
		}
		h.launched <- true
		defer close(h.done)
		h.a, h.err = d.attempt(ctx2, deadline, second, q, left-1)
		if h.err == nil {
			cancel1() // the answer is in: stop waiting for first
		}
	})
	a, err := d.attempt(ctx1, deadline, first, q, left)
	if t.Stop() || !<-h.launched {
		return a, first, false, err
	}
	if err == nil {
		cancel2()
		<-h.done // q must outlive every exchange that uses it
		d.series[second].hedged(false)
		return a, first, true, nil
	}
	<-h.done
	if h.err == nil {
		d.series[second].hedged(true)
		return h.a, second, true, nil
	}
	d.series[second].hedged(false)
	return nil, second, true, h.err
}
