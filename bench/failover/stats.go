package main

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// percentile returns the p-th percentile (0-100) of v by nearest rank, or
// -1 for no values. v is not modified.
func percentile(v []time.Duration, p float64) time.Duration {
	if len(v) == 0 {
		return -1
	}
	s := slices.Clone(v)
	slices.Sort(s)
	// Nearest rank: the smallest value with at least p% of values at or
	// below it.
	rank := int(math.Ceil(float64(len(s))*p/100)) - 1
	return s[min(max(rank, 0), len(s)-1)]
}

// mean returns the mean of v, or -1 for no values.
func mean(v []time.Duration) time.Duration {
	if len(v) == 0 {
		return -1
	}
	var sum time.Duration
	for _, d := range v {
		sum += d
	}
	return sum / time.Duration(len(v))
}

// sentBetween returns the records sent in [from, to).
func sentBetween(recs []record, from, to time.Duration) []record {
	var out []record
	for _, r := range recs {
		if r.sent >= from && r.sent < to {
			out = append(out, r)
		}
	}
	return out
}

// latencies returns the latency of each record; a timeout counts as
// clientTimeout, what the client waited.
func latencies(recs []record) []time.Duration {
	out := make([]time.Duration, len(recs))
	for i, r := range recs {
		out[i] = r.latency
	}
	return out
}

// failures counts the records that failed (SERVFAIL or any other error
// rcode, or no answer) and those of them that timed out.
func failures(recs []record) (failed, timedOut int) {
	for _, r := range recs {
		if r.failed() {
			failed++
		}
		if r.timedOut() {
			timedOut++
		}
	}
	return failed, timedOut
}

// slow counts the records that failed or took limit or longer.
func slow(recs []record, limit time.Duration) int {
	n := 0
	for _, r := range recs {
		if r.failed() || r.latency >= limit {
			n++
		}
	}
	return n
}

// recovery returns how long after at answers flow again: the send time,
// less at, of the first query of the first run of n consecutive queries sent
// after at that were all answered NOERROR in under limit. ok is false when
// no such run happens.
func recovery(recs []record, at time.Duration, n int, limit time.Duration) (d time.Duration, ok bool) {
	run := 0
	for i, r := range recs {
		if r.sent < at {
			continue
		}
		if r.failed() || r.latency >= limit {
			run = 0
			continue
		}
		run++
		if run == n {
			return recs[i-n+1].sent - at, true
		}
	}
	return 0, false
}

// firstFrom returns how long after at the first answer from upstream name
// arrived; ok is false when none did.
func firstFrom(recs []record, name string, at time.Duration) (d time.Duration, ok bool) {
	best := time.Duration(-1)
	for _, r := range recs {
		if r.from != name || r.failed() || r.answered() < at {
			continue
		}
		if best < 0 || r.answered() < best {
			best = r.answered()
		}
	}
	if best < 0 {
		return 0, false
	}
	return best - at, true
}

// share returns the fraction of answered queries that came from name.
func share(recs []record, name string) (from, answered int) {
	for _, r := range recs {
		if r.failed() {
			continue
		}
		answered++
		if r.from == name {
			from++
		}
	}
	return from, answered
}

// ms formats a duration in milliseconds, to two decimals under 10 ms, one
// under 100 ms, none above; a timeout reads as such.
func ms(d time.Duration) string {
	f := float64(d) / float64(time.Millisecond)
	switch {
	case d < 0:
		return "–"
	case d >= clientTimeout:
		return fmt.Sprintf("timeout (%s)", clientTimeout)
	case f < 10:
		return fmt.Sprintf("%.2f ms", f)
	case f < 100:
		return fmt.Sprintf("%.1f ms", f)
	default:
		return fmt.Sprintf("%.0f ms", f)
	}
}

// pct formats part of whole as a percentage.
func pct(part, whole int) string {
	if whole == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(part)/float64(whole))
}
