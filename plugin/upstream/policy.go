package upstream

import (
	"math/rand/v2"
	"sync/atomic"
)

// Policy orders the upstreams for one query: the first is tried first.
type Policy interface {
	List(ups []*Upstream) []*Upstream
	String() string
}

// Random tries the upstreams in a random order.
type Random struct{}

func (Random) String() string { return "random" }

// List implements Policy.
func (Random) List(ups []*Upstream) []*Upstream {
	if len(ups) < 2 {
		return ups
	}
	l := make([]*Upstream, len(ups))
	for i, j := range rand.Perm(len(ups)) {
		l[i] = ups[j]
	}
	return l
}

// RoundRobin starts each query at the next upstream in turn.
type RoundRobin struct{ next atomic.Uint32 }

func (*RoundRobin) String() string { return "round_robin" }

// List implements Policy.
func (r *RoundRobin) List(ups []*Upstream) []*Upstream {
	if len(ups) < 2 {
		return ups
	}
	start := int((r.next.Add(1) - 1) % uint32(len(ups)))
	l := make([]*Upstream, 0, len(ups))
	return append(append(l, ups[start:]...), ups[:start]...)
}

// Sequential always tries the upstreams in the configured order.
type Sequential struct{}

func (Sequential) String() string { return "sequential" }

// List implements Policy.
func (Sequential) List(ups []*Upstream) []*Upstream { return ups }
