// Package bench holds benchmarks: Go benchmarks of the hot path here, and the
// side-by-side benchmark scripts beside them.
package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dot"
	"github.com/dotstub/dotstub/plugin/dottest"
)

// BenchmarkExchange measures one query through a pool to an in-process
// upstream on loopback: pack, write, route the answer, unpack and check it,
// with 64 queries in flight. The upstream writes a prepared answer, so that
// allocs/op counts the exchange's own allocations plus two: the upstream's
// buffers for the query it reads and the answer it writes.
func BenchmarkExchange(b *testing.B) {
	m, srv := preparedUpstream(b, 0)
	p := benchPool(srv, 0)
	defer p.Close()
	b.ReportAllocs()
	exchangeInParallel(b, p, m, 32)
}

// BenchmarkLoneQuery measures one query at a time through a pool to an
// in-process upstream on loopback: the round trip of a query at light load,
// where nothing else is in flight to share a write or a wake-up with.
func BenchmarkLoneQuery(b *testing.B) {
	m, srv := preparedUpstream(b, 0)
	p := benchPool(srv, 0)
	defer p.Close()
	b.ReportAllocs()
	for b.Loop() {
		exchangeOnce(b, p, m)
	}
}

// BenchmarkQueuedUpstream shows what spreading queries over connections is
// worth against an upstream that works on each connection's queries one at a
// time, as CoreDNS and every miekg/dns server do: each answer takes a
// millisecond of the upstream's own time (a sleep: its cores are not this
// machine's), and 32 queries are in flight. With max_conns=1 they queue on
// one connection; with max_conns=4 the pool sees them wait on each other and
// spreads them. Compare the queries/s of the two.
func BenchmarkQueuedUpstream(b *testing.B) {
	m, srv := preparedUpstream(b, time.Millisecond)
	for _, conns := range []int{1, 4} {
		b.Run(fmt.Sprintf("max_conns=%d", conns), func(b *testing.B) {
			p := benchPool(srv, conns)
			defer p.Close()
			exchangeInParallel(b, p, m, 16) // 32 in flight on 2 cores
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
			b.ReportMetric(float64(p.Stats().Conns), "conns")
		})
	}
}

// preparedUpstream returns a query and an upstream that answers it, on each
// connection one query at a time, after work (a sleep), with an answer packed
// once and given the query's ID.
func preparedUpstream(b *testing.B, work time.Duration) (*dns.Msg, *dottest.Server) {
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	answer, err := dottest.Answer(m).Pack()
	if err != nil {
		b.Fatal(err)
	}
	frame := append([]byte{byte(len(answer) >> 8), byte(len(answer))}, answer...)
	srv := dottest.New(b, dottest.Options{Raw: func(c net.Conn, q []byte) bool {
		if work > 0 {
			time.Sleep(work) // the upstream's work, not a synchronization
		}
		a := append([]byte(nil), frame...) // connections answer concurrently
		copy(a[2:4], q[:2])                // the query's ID
		_, err := c.Write(a)
		return err == nil
	}})
	return m, srv
}

// benchPool returns a pool to srv of at most maxConns connections (zero: the
// default).
func benchPool(srv *dottest.Server, maxConns int) *dot.Pool {
	return dot.New(dot.Config{Addr: srv.Addr, MaxConns: maxConns, TLS: &tls.Config{
		RootCAs: srv.CA.Pool, ServerName: dottest.DefaultName, MinVersion: tls.VersionTLS12,
	}})
}

// exchangeInParallel sends m over p b.N times from parallelism goroutines
// per core.
func exchangeInParallel(b *testing.B, p *dot.Pool, m *dns.Msg, parallelism int) {
	b.SetParallelism(parallelism)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			exchangeOnce(b, p, m)
		}
	})
}

// exchangeOnce sends m over p as ServeDNS does: packed afresh, with a
// deadline.
func exchangeOnce(b *testing.B, p *dot.Pool, m *dns.Msg) {
	q, err := dot.NewQuery(m, dot.Privacy{PadBlock: dot.DefaultPadBlock})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := p.Exchange(context.Background(), q, time.Now().Add(2*time.Second)); err != nil {
		b.Fatal(err)
	}
	q.Release()
}
