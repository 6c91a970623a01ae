package upstream

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds of an upstream's patience: how long a query waits for it before the
// next upstream is tried. The floor keeps a healthy upstream that is slow now
// and then (a cache miss on a recursive resolver) from being given up on.
const (
	minPatience     = 250 * time.Millisecond
	initialPatience = 2 * minPatience // before the first answer
	recentLen       = 128             // answer times kept for the percentile
	p95Every        = 32              // answers between two computations of the percentile
)

// latency tracks an upstream's answer times: a smoothed mean and mean
// deviation, as TCP does for its retransmission timer (RFC 6298), and the 95th
// percentile of the recent ones. Readers never take the lock.
type latency struct {
	mu     sync.Mutex
	rttvar time.Duration
	recent [recentLen]time.Duration
	n      int // answers taken in since the last reset

	sortMu sync.Mutex               // held by the one caller computing the percentile
	sorted [recentLen]time.Duration // its copy of recent, here rather than on a query's stack

	srtt     atomic.Int64 // smoothed answer time; 0 before the first
	patience atomic.Int64 // srtt + 4 rttvar, at least minPatience; 0 before the first
	p95      atomic.Int64 // 0 until recentLen answers
}

// add takes in one answer time, or the time spent on a query that failed.
func (l *latency) add(d time.Duration) {
	l.mu.Lock()
	srtt := time.Duration(l.srtt.Load())
	if srtt == 0 {
		srtt, l.rttvar = d, d/2
	} else {
		l.rttvar += (max(srtt-d, d-srtt) - l.rttvar) / 4
		srtt += (d - srtt) / 8
	}
	l.srtt.Store(int64(max(srtt, 1)))
	l.patience.Store(int64(max(srtt+4*l.rttvar, minPatience)))
	l.recent[l.n%recentLen] = d
	l.n++
	if l.n < recentLen || l.n%p95Every != 0 || !l.sortMu.TryLock() { // TryLock: the last one is still at it
		l.mu.Unlock()
		return
	}
	l.sorted = l.recent // sorted outside mu
	l.mu.Unlock()
	slices.Sort(l.sorted[:])
	l.p95.Store(int64(l.sorted[recentLen*95/100]))
	l.sortMu.Unlock()
}

// reset forgets every answer time but d: the upstream has just come back,
// and what it did before it went away says nothing about it now.
func (l *latency) reset(d time.Duration) {
	l.mu.Lock()
	l.srtt.Store(0)
	l.n = 0
	l.p95.Store(0)
	l.mu.Unlock()
	l.add(d)
}
