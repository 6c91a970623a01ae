package upstream

import (
	"math/rand/v2"
	"sync/atomic"
)

// Policy orders the upstreams for one query: the first is tried first. It is
// a concrete type, not an interface, so that the order can be appended to a
// buffer on the caller's stack: a buffer passed through an interface method
// escapes to the heap, an allocation per query. The zero Policy is fastest.
type Policy struct {
	kind policyKind
	n    atomic.Uint32 // queries ordered: round_robin's turn, fastest's exploration
}

type policyKind uint8

// The policies, by the names the Corefile gives them.
const (
	Fastest policyKind = iota
	Random
	RoundRobin
	Sequential
)

// Policies are the names of the policies, in the order of their kinds.
var Policies = []string{"fastest", "random", "round_robin", "sequential"}

// NewPolicy returns the policy called name (one of Policies), or false.
func NewPolicy(name string) (*Policy, bool) {
	for k, n := range Policies {
		if n == name {
			return &Policy{kind: policyKind(k)}, true
		}
	}
	return nil, false
}

func (p *Policy) String() string { return Policies[p.kind] }

// List appends to dst the upstreams ups in the order to try them.
//   - fastest: in order of their smoothed answer time, the fastest first; one
//     that has not answered yet comes before all others, to be measured. One
//     query in exploreEvery goes to another upstream first.
//   - random: in a random order.
//   - round_robin: each query starts at the next upstream in turn.
//   - sequential: always in the configured order.
func (p *Policy) List(dst, ups []*Upstream) []*Upstream {
	if len(ups) < 2 {
		return append(dst, ups...)
	}
	switch p.kind {
	case Random:
		dst = append(dst, ups...)
		l := dst[len(dst)-len(ups):]
		rand.Shuffle(len(l), func(i, j int) { l[i], l[j] = l[j], l[i] })
		return dst
	case RoundRobin:
		start := int((p.n.Add(1) - 1) % uint32(len(ups)))
		return append(append(dst, ups[start:]...), ups[:start]...)
	case Sequential:
		return append(dst, ups...)
	}
	dst = append(dst, ups...)
	l := dst[len(dst)-len(ups):]
	for i := 1; i < len(l); i++ { // insertion sort: a handful of upstreams
		for j := i; j > 0 && l[j].lat.srtt.Load() < l[j-1].lat.srtt.Load(); j-- {
			l[j], l[j-1] = l[j-1], l[j]
		}
	}
	if n := p.n.Add(1); n%exploreEvery == 0 {
		i := 1 + int(n/exploreEvery)%(len(l)-1)
		l[0], l[i] = l[i], l[0]
	}
	return dst
}

// exploreEvery is how often the fastest policy puts another upstream first:
// one query in exploreEvery, taking the others in turn, so that a slow
// upstream that has become fast again is noticed.
const exploreEvery = 20
