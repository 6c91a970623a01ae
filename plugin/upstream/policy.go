package upstream

import (
	"math/rand/v2"
	"sync/atomic"
)

// Policy orders the upstreams for one query: the first is tried first. List
// appends the order to dst, which callers keep on their stack.
type Policy interface {
	List(dst, ups []*Upstream) []*Upstream
	String() string
}

// Random tries the upstreams in a random order.
type Random struct{}

func (Random) String() string { return "random" }

// List implements Policy.
func (Random) List(dst, ups []*Upstream) []*Upstream {
	dst = append(dst, ups...)
	l := dst[len(dst)-len(ups):]
	rand.Shuffle(len(l), func(i, j int) { l[i], l[j] = l[j], l[i] })
	return dst
}

// RoundRobin starts each query at the next upstream in turn.
type RoundRobin struct{ next atomic.Uint32 }

func (*RoundRobin) String() string { return "round_robin" }

// List implements Policy.
func (r *RoundRobin) List(dst, ups []*Upstream) []*Upstream {
	if len(ups) < 2 {
		return append(dst, ups...)
	}
	start := int((r.next.Add(1) - 1) % uint32(len(ups)))
	return append(append(dst, ups[start:]...), ups[:start]...)
}

// Sequential always tries the upstreams in the configured order.
type Sequential struct{}

func (Sequential) String() string { return "sequential" }

// List implements Policy.
func (Sequential) List(dst, ups []*Upstream) []*Upstream { return append(dst, ups...) }

// exploreEvery is how often Fastest puts another upstream first: one query in
// exploreEvery, taking the others in turn, so that a slow upstream that has
// become fast again is noticed.
const exploreEvery = 20

// Fastest tries the upstreams in order of their smoothed answer time, the
// fastest first; one that has not answered yet comes before all others, to be
// measured. One query in exploreEvery goes to another upstream first.
type Fastest struct{ n atomic.Uint32 }

func (*Fastest) String() string { return "fastest" }

// List implements Policy.
func (f *Fastest) List(dst, ups []*Upstream) []*Upstream {
	dst = append(dst, ups...)
	l := dst[len(dst)-len(ups):]
	for i := 1; i < len(l); i++ { // insertion sort: a handful of upstreams
		for j := i; j > 0 && l[j].lat.srtt.Load() < l[j-1].lat.srtt.Load(); j-- {
			l[j], l[j-1] = l[j-1], l[j]
		}
	}
	if n := f.n.Add(1); len(l) > 1 && n%exploreEvery == 0 {
		i := 1 + int(n/exploreEvery)%(len(l)-1)
		l[0], l[i] = l[i], l[0]
	}
	return dst
}
