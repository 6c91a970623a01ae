package dotstub

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// The volume fault tests put one misbehaving upstream behind a dotstub stanza
// and stream thousands of queries through it from hundreds of clients at once,
// each client asking its next query as soon as the last is settled. A fault
// must cost the queries it hits and no more: each case asserts the fraction
// answered, and that no answer is wrong (faultQuery checks each, and that
// ServeDNS returns by its deadline). Times are logged as figures, never
// asserted.

// volumeCase is one misbehaving upstream under load.
type volumeCase struct {
	name     string
	opts     func() dottest.Options
	clients  int
	queries  int
	minShare float64 // the fraction of queries that must be answered
}

func volumeCases() []volumeCase {
	return []volumeCase{
		{name: "closes after 10 answers", clients: 20, queries: 1000, minShare: 0.999,
			opts: func() dottest.Options { return dottest.Options{CloseAfter: 10} }},
		{name: "closes after 128 answers", clients: 500, queries: 10000, minShare: 0.999,
			opts: func() dottest.Options { return dottest.Options{CloseAfter: 128} }},
		{name: "every 4th answer a wrong ID", clients: 100, queries: 4000, minShare: 0.95,
			opts: func() dottest.Options { return dottest.Options{Wire: everyNth(4, wrongID)} }},
		{name: "every 4th answer another question", clients: 100, queries: 4000, minShare: 0.95,
			opts: func() dottest.Options { return dottest.Options{Wire: everyNth(4, anotherQuestion)} }},
		{name: "out of order, 2% wrong ID and 2% another question", clients: 256, queries: 6000, minShare: 0.99,
			opts: func() dottest.Options {
				return dottest.Options{Wire: shuffled(mixOf(0.02, wrongID, 0.02, anotherQuestion))}
			}},
		{name: "out of order, 4% unparseable", clients: 256, queries: 6000, minShare: 0.99,
			opts: func() dottest.Options { return dottest.Options{Wire: shuffled(mixOf(0.04, unparseable))} }},
		{name: "closes after 50 answers, 2% wrong ID, 2% unparseable", clients: 200, queries: 6000, minShare: 0.99,
			opts: func() dottest.Options {
				return dottest.Options{CloseAfter: 50, Wire: shuffled(mixOf(0.02, wrongID, 0.02, unparseable))}
			}},
		{name: "every answer unparseable", clients: 100, queries: 1000, minShare: 0,
			opts: func() dottest.Options { return dottest.Options{Wire: unparseable} }},
	}
}

func TestFaultsAtVolume(t *testing.T) {
	if testing.Short() {
		t.Skip("thousands of queries per case")
	}
	for _, tc := range volumeCases() {
		t.Run(tc.name, func(t *testing.T) {
			leaks := goleak.IgnoreCurrent()
			opts := tc.opts()
			srv := dottest.New(t, opts)
			d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(srv), caFile(t, srv)))
			r := streamQueries(t, d, tc.clients, tc.queries)
			t.Logf("%d clients, %d queries: %d answered (%.2f%%), %d SERVFAIL; answer p50 %s p99 %s; SERVFAIL p50 %s max %s; %d connections; SERVFAIL errors %v",
				tc.clients, tc.queries, r.answered, 100*float64(r.answered)/float64(tc.queries), len(r.failedIn),
				r.pct(r.answeredIn, 50), r.pct(r.answeredIn, 99), r.pct(r.failedIn, 50), r.pct(r.failedIn, 100),
				srv.Accepted(), r.errors)
			if share := float64(r.answered) / float64(tc.queries); share < tc.minShare {
				t.Errorf("%.2f%% answered, want at least %.2f%%", 100*share, 100*tc.minShare)
			}
			d.OnShutdown()
			srv.Close()
			goleak.VerifyNone(t, leaks)
		})
	}
}

// volumeResult is what streamQueries saw.
type volumeResult struct {
	answered   int
	answeredIn []time.Duration // how long each answered query took
	failedIn   []time.Duration // how long each query that got SERVFAIL took
	errors     map[string]int  // SERVFAIL errors, by text
}

func (r *volumeResult) pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, len(d)*p/100)].Round(10 * time.Microsecond)
}

// streamQueries sends n queries through d from clients clients at once, each
// for a name of its own, and sorts the outcomes. A wrong answer, or a
// ServeDNS that outlives its deadline, fails t.
func streamQueries(t *testing.T, d *Dotstub, clients, n int) *volumeResult {
	t.Helper()
	var (
		next     atomic.Int64
		mu       sync.Mutex // guards r and problems
		r        = &volumeResult{errors: map[string]int{}}
		problems []string
		wg       sync.WaitGroup
	)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				m := new(dns.Msg)
				m.SetQuestion(fmt.Sprintf("v%d.example.org.", i), dns.TypeA)
				start := time.Now()
				ok, problem, err := faultQuery(d, m, defaultTimeout)
				took := time.Since(start)
				mu.Lock()
				switch {
				case problem != "":
					problems = append(problems, fmt.Sprintf("%s: %s", m.Question[0].Name, problem))
				case ok:
					r.answered++
					r.answeredIn = append(r.answeredIn, took)
				default:
					r.failedIn = append(r.failedIn, took)
					r.errors[err.Error()]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, p := range problems[:min(len(problems), 20)] {
		t.Error(p)
	}
	if len(problems) > 20 {
		t.Errorf("and %d more problems", len(problems)-20)
	}
	return r
}

// everyNth returns a Wire answer that answers as bad does every nth answer
// the server gives, across its connections, and right otherwise.
func everyNth(nth int64, bad func(*dns.Msg) []byte) func(*dns.Msg) []byte {
	var n atomic.Int64
	return func(q *dns.Msg) []byte {
		if n.Add(1)%nth == 0 {
			return bad(q)
		}
		return packed(dottest.Answer(q))
	}
}

// mixOf returns a Wire answer that answers as each bad does with its
// probability, and right otherwise: mixOf(p1, bad1, p2, bad2, ...).
func mixOf(args ...any) func(*dns.Msg) []byte {
	return func(q *dns.Msg) []byte {
		x := rand.Float64()
		for i := 0; i+1 < len(args); i += 2 {
			if p := args[i].(float64); x < p {
				return args[i+1].(func(*dns.Msg) []byte)(q)
			} else {
				x -= p
			}
		}
		return packed(dottest.Answer(q))
	}
}

// shuffled holds each answer of w back for up to a millisecond, so that the
// answers of one connection leave out of order.
func shuffled(w func(*dns.Msg) []byte) func(*dns.Msg) []byte {
	return func(q *dns.Msg) []byte {
		time.Sleep(time.Duration(rand.Int64N(int64(time.Millisecond)))) // the fault: answers out of order
		return w(q)
	}
}

// wrongID answers under the ID of the query after q, which may be in flight.
func wrongID(q *dns.Msg) []byte {
	a := dottest.Answer(q)
	a.Id++
	return packed(a)
}

// anotherQuestion answers another name, under q's ID.
func anotherQuestion(q *dns.Msg) []byte {
	a := otherQuestion(q)
	a.Id = q.Id
	return packed(a)
}

// unparseable is 64 bytes of 0xff: a frame whose ID (0xffff) names no query
// in flight, and that does not unpack.
func unparseable(*dns.Msg) []byte {
	b := make([]byte, 64)
	for i := range b {
		b[i] = 0xff
	}
	return b
}

func packed(m *dns.Msg) []byte {
	b, err := m.Pack()
	if err != nil {
		panic(err)
	}
	return b
}
