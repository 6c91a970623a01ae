package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/miekg/dns"
)

// The timeline of the steady-load scenarios, since the first query.
const (
	breakAt    = 2 * time.Second        // A fails
	restartAt  = 5 * time.Second        // kill: A comes back
	repairAt   = 7 * time.Second        // stall, stall-handshake: A answers again
	runFor     = 8 * time.Second        // the last query leaves
	firstPhase = 500 * time.Millisecond // the first part of a stall, reported apart

	flowRun   = 100                   // answers in a row that mean "flowing again"
	flowLimit = 10 * time.Millisecond // each under this
	// slowLimit makes a query slow in the stall tables. When about half the
	// queries wait, the median swings between the fast and the slow ones
	// from run to run; the share of slow ones does not.
	slowLimit = 100 * time.Millisecond

	allStalledQueries  = 20
	allStalledInterval = 200 * time.Millisecond // spread over 4 s: the later queries come after failures can mark both down
	policyQueries      = 1000
	slowerBy           = 20 * time.Millisecond // policies: B's service time
)

// row is one line of a table: a plugin with some options.
type row struct {
	peer  string   // "dotstub" or "forward", for -peers
	label string   // as printed
	opts  []string // extra lines for the plugin's block
}

// scenario is one way for upstreams to fail, the load that watches it and
// the columns it reports.
type scenario struct {
	name   string // for -scenarios
	title  string
	about  string // what was done, printed above the table
	header []string
	rows   []row
	// prepare, if set, changes the upstreams before CoreDNS starts.
	prepare func(a, b *upstream)
	// plan is the load and the events for upstreams a and b, at rate
	// queries per second.
	plan func(rate float64, a, b *upstream) plan
	// cells summarizes one run, one cell per header column after the first.
	cells func(recs []record) []string
}

// steady is a plan of runFor at rate.
func steady(rate float64, events ...event) plan {
	return plan{n: int(rate * runFor.Seconds()), interval: time.Duration(float64(time.Second) / rate), events: events}
}

// at makes an event from an action that cannot fail.
func at(t time.Duration, do func()) event {
	return event{at: t, do: func() error { do(); return nil }}
}

func dotstub(label string, opts ...string) row {
	return row{peer: "dotstub", label: "dotstub (" + label + ")", opts: opts}
}

func forward(label string, opts ...string) row {
	return row{peer: "forward", label: "forward (" + label + ")", opts: opts}
}

// stallRows compare each peer's random policy with dotstub's fastest
// policy and its hedging.
var stallRows = []row{
	forward("random", "policy random"),
	dotstub("random", "policy random"),
	dotstub("fastest", "policy fastest"),
	dotstub("fastest, hedge auto", "policy fastest", "hedge auto"),
	dotstub("random, hedge 20ms", "policy random", "hedge 20ms"),
}

func scenarios() []scenario {
	return []scenario{
		{
			name:  "kill",
			title: "1. kill: upstream A dies at 2 s and comes back at 5 s",
			about: "Steady load for 8 s; at 2 s A closes its listener and every connection, at 5 s it listens again on the same address. " +
				"\"Flowing again\" is the time from the kill to the first of 100 queries in a row answered NOERROR in under 10 ms.",
			header: []string{"peer", "sent", "failed", "failed %", "longest latency after the kill", "flowing again after", "first answer from A after its restart"},
			rows: []row{
				forward("random", "policy random"),
				dotstub("random", "policy random"),
				dotstub("fastest, the default"),
			},
			plan: func(rate float64, a, b *upstream) plan {
				return steady(rate, at(breakAt, a.kill), event{at: restartAt, do: a.restart})
			},
			cells: killCells,
		},
		{
			name:  "stall",
			title: "2. stall: upstream A reads queries and never answers from 2 s to 7 s",
			about: "Steady load for 8 s; from 2 s to 7 s A reads every query (health checks too) and answers none; its connections stay open. " +
				"Latencies are of the queries sent in the first 500 ms of the stall and in the rest of it; a client timeout counts as 5 s. " +
				"\"Slow or failed\" is the share of queries sent during the stall that took 100 ms or more, or failed. Failures are over the whole run.",
			header: stallHeader,
			rows:   stallRows,
			plan: func(rate float64, a, b *upstream) plan {
				return steady(rate, at(breakAt, func() { a.stall(true) }), at(repairAt, func() { a.stall(false) }))
			},
			cells: stallCells,
		},
		{
			name:  "stall-handshake",
			title: "3. stall-handshake: upstream A completes no TLS handshake from 2 s to 7 s",
			about: "As stall, but at 2 s every connection to A is closed and A accepts TCP connections and never speaks TLS on them, " +
				"so each new connection hangs in its handshake; at 7 s A serves DoT again.",
			header: stallHeader,
			rows:   stallRows,
			plan: func(rate float64, a, b *upstream) plan {
				return steady(rate, event{at: breakAt, do: a.stallHandshakes}, event{at: repairAt, do: a.resumeHandshakes})
			},
			cells: stallCells,
		},
		{
			name:  "all-stalled",
			title: "4. all-stalled: both upstreams read queries and never answer",
			about: fmt.Sprintf("Both upstreams stall just before the first query; %d queries follow, one every %s, "+
				"so that the later ones come after failed queries and health checks have had time to mark both upstreams down. Times are from each query to its SERVFAIL, "+
				"or to the client's %s timeout.", allStalledQueries, allStalledInterval, clientTimeout),
			header: []string{"peer", "queries", "SERVFAIL", "client timeouts", "min", "median", "max"},
			rows: []row{
				forward("random", "policy random"),
				forward("random, failfast_all_unhealthy_upstreams", "policy random", "failfast_all_unhealthy_upstreams"),
				dotstub("random", "policy random"),
				dotstub("fastest, the default"),
				dotstub("fastest, failfast_all_unhealthy_upstreams", "failfast_all_unhealthy_upstreams"),
			},
			plan: func(rate float64, a, b *upstream) plan {
				return plan{n: allStalledQueries, interval: allStalledInterval,
					events: []event{at(0, func() { a.stall(true); b.stall(true) })}}
			},
			cells: allStalledCells,
		},
		{
			name:  "policies",
			title: "5. policies: upstream B answers 20 ms slower than A",
			about: fmt.Sprintf("B sleeps %s before each answer, A answers at once; %d queries at the rate, from a fresh CoreDNS "+
				"(after the few queries that show it is up). The share and the latencies are of the queries answered; "+
				"the mean, as a median is arbitrary when the answers split half and half.", slowerBy, policyQueries),
			header: []string{"peer", "answered", "from A", "share from A", "mean latency", "p99"},
			// B is slow from the start, so the first latencies
			// CoreDNS sees are already the real ones.
			prepare: func(a, b *upstream) { b.setDelay(slowerBy) },
			rows: []row{
				forward("sequential", "policy sequential"),
				forward("random", "policy random"),
				forward("round_robin", "policy round_robin"),
				dotstub("sequential", "policy sequential"),
				dotstub("random", "policy random"),
				dotstub("round_robin", "policy round_robin"),
				dotstub("fastest", "policy fastest"),
			},
			plan: func(rate float64, a, b *upstream) plan {
				return plan{n: policyQueries, interval: time.Duration(float64(time.Second) / rate)}
			},
			cells: policyCells,
		},
	}
}

func killCells(recs []record) []string {
	failed, timedOut := failures(recs)
	after := sentBetween(recs, breakAt, runFor)
	longest := slices.Max(append(latencies(after), 0))
	flowing := "not within the run"
	if d, ok := recovery(recs, breakAt, flowRun, flowLimit); ok {
		flowing = ms(d)
	}
	fromA := "none within the run"
	if d, ok := firstFrom(recs, "A", restartAt); ok {
		fromA = ms(d)
	}
	return []string{fmt.Sprint(len(recs)), failedCell(failed, timedOut), pct(failed, len(recs)), ms(longest), flowing, fromA}
}

var stallHeader = []string{"peer", "first 500 ms: median", "first 500 ms: p99", "rest of the stall: median", "rest: p99",
	"slow or failed, 2–7 s", "failed", "failed %"}

func stallCells(recs []record) []string {
	first := latencies(sentBetween(recs, breakAt, breakAt+firstPhase))
	rest := latencies(sentBetween(recs, breakAt+firstPhase, repairAt))
	during := sentBetween(recs, breakAt, repairAt)
	failed, timedOut := failures(recs)
	return []string{
		ms(percentile(first, 50)), ms(percentile(first, 99)),
		ms(percentile(rest, 50)), ms(percentile(rest, 99)),
		pct(slow(during, slowLimit), len(during)),
		failedCell(failed, timedOut), pct(failed, len(recs)),
	}
}

func allStalledCells(recs []record) []string {
	servfail, timedOut := 0, 0
	for _, r := range recs {
		switch {
		case r.timedOut():
			timedOut++
		case r.rcode == dns.RcodeServerFailure:
			servfail++
		}
	}
	l := latencies(recs)
	return []string{fmt.Sprint(len(recs)), fmt.Sprint(servfail), fmt.Sprint(timedOut),
		ms(percentile(l, 0)), ms(percentile(l, 50)), ms(percentile(l, 100))}
}

func policyCells(recs []record) []string {
	fromA, answered := share(recs, "A")
	var ok []record
	for _, r := range recs {
		if !r.failed() {
			ok = append(ok, r)
		}
	}
	l := latencies(ok)
	return []string{fmt.Sprintf("%d of %d", answered, len(recs)), fmt.Sprint(fromA), pct(fromA, answered),
		ms(mean(l)), ms(percentile(l, 99))}
}

// failedCell is a failure count, with how many of them were client timeouts.
func failedCell(failed, timedOut int) string {
	if timedOut == 0 {
		return fmt.Sprint(failed)
	}
	return fmt.Sprintf("%d (%d timed out)", failed, timedOut)
}
