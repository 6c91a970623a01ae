package dotstub

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// faultSlack is how long past the stanza's timeout a ServeDNS may take before
// it counts as hung: a bound that only a hang reaches on a loaded machine,
// not a figure to meet.
const faultSlack = 5 * time.Second

// rightIP is the address dottest.Answer gives every A query.
var rightIP = net.IPv4(192, 0, 2, 1)

// faultRound sends faultBatch queries through d at once, each for a name of
// its own, and returns how many were answered. Every reply must be the right
// answer or SERVFAIL, and every ServeDNS must return by its context's
// deadline.
func faultRound(t *testing.T, d *Dotstub, round int, timeout time.Duration) (answered int) {
	t.Helper()
	var (
		mu       sync.Mutex // guards answered, problems and failures
		problems []string
		failures = map[string]int{} // SERVFAILs by error
		wg       sync.WaitGroup
		start    = make(chan struct{})
	)
	for i := range faultBatch {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := new(dns.Msg)
			m.SetQuestion(fmt.Sprintf("q%d-%d.example.org.", round, i), dns.TypeA)
			<-start
			ok, problem, err := faultQuery(d, m, timeout)
			mu.Lock()
			defer mu.Unlock()
			if ok {
				answered++
			} else if problem == "" {
				failures[err.Error()]++
			}
			if problem != "" {
				problems = append(problems, fmt.Sprintf("%s: %s", m.Question[0].Name, problem))
			}
		}()
	}
	close(start)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout + 2*faultSlack):
		// The goroutines report to problems, not to t: they may outlive
		// the test.
		buf := make([]byte, 1<<20)
		t.Fatalf("round %d: ServeDNS still running long past its deadline\n%s", round, buf[:runtime.Stack(buf, true)])
	}
	for _, p := range problems {
		t.Errorf("round %d: %s", round, p)
	}
	t.Logf("round %d: %d of %d answered; SERVFAIL: %v", round, answered, faultBatch, failures)
	return answered
}

// faultQuery sends m through d as a CoreDNS server would, under a context
// whose deadline is faultSlack past the stanza's timeout, and sorts the
// outcome: the right answer (ok), SERVFAIL with the error for the errors
// plugin and nothing written (!ok, err), or anything else: a problem.
func faultQuery(d *Dotstub, m *dns.Msg, timeout time.Duration) (ok bool, problem string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+faultSlack)
	defer cancel()
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	rcode, err := d.ServeDNS(ctx, request.NewScrubWriter(m, rec), m)
	if ctx.Err() != nil {
		return false, fmt.Sprintf("ServeDNS returned (%d, %v) after its context's deadline", rcode, err), err
	}
	a := rec.Msg
	switch {
	case rcode == dns.RcodeServerFailure && err != nil && a == nil:
		return false, "", err
	case rcode != dns.RcodeSuccess || err != nil || a == nil:
		return false, fmt.Sprintf("ServeDNS = %s, %v, wrote %v; want an answer, or SERVFAIL with an error", dns.RcodeToString[rcode], err, a), err
	}
	if p := wrongAnswer(m, a); p != "" {
		return false, p, nil
	}
	return true, "", nil
}

// wrongAnswer says what is wrong with a as the answer to m, or "".
func wrongAnswer(m, a *dns.Msg) string {
	q := m.Question[0]
	switch {
	case a.Id != m.Id:
		return fmt.Sprintf("WRONG ANSWER: ID %d for query %d:\n%s", a.Id, m.Id, a)
	case !a.Response || a.Rcode != dns.RcodeSuccess || len(a.Question) != 1 || a.Question[0] != q || len(a.Answer) != 1:
		return fmt.Sprintf("WRONG ANSWER:\n%s", a)
	}
	if rr, ok := a.Answer[0].(*dns.A); !ok || rr.Hdr.Name != q.Name || !rr.A.Equal(rightIP) {
		return fmt.Sprintf("WRONG ANSWER: %v", a.Answer[0])
	}
	return ""
}

// answersAgain asks d until it answers a query right. The first queries after
// a repair may fail: the pool may still hold connections to the old server
// that it has not seen close, and after failed handshakes it waits (250ms,
// doubling, by design not configurable) before it dials again. So it asks
// again, at a pace, for a bounded while; a wrong answer fails at once.
func answersAgain(t *testing.T, d *Dotstub, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	pace := time.NewTicker(20 * time.Millisecond)
	defer pace.Stop()
	for n := 1; ; n++ {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("again%d.example.org.", n), dns.TypeA)
		ok, problem, err := faultQuery(d, m, timeout)
		switch {
		case problem != "":
			t.Fatalf("after the repair: %s", problem)
		case ok:
			t.Logf("answered again at query %d after the repair", n)
			return
		case time.Now().After(deadline):
			t.Fatalf("the repaired upstream answered none of %d queries; the last failed with %v", n, err)
		}
		<-pace.C
	}
}

// openFDs returns the number of file descriptors the process has open, or -1
// where /proc/self/fd does not list them.
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// fdsBackTo waits, for a bounded while, until the process has no more file
// descriptors open than base: a socket can be closed by a goroutine just after
// the WaitGroup it is counted in lets Close return.
func fdsBackTo(t *testing.T, base int) {
	t.Helper()
	if base < 0 {
		t.Log("no /proc/self/fd: file descriptors not counted")
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	pace := time.NewTicker(10 * time.Millisecond)
	defer pace.Stop()
	for {
		n := openFDs()
		if n <= base {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%d file descriptors open after OnShutdown, %d before:\n%s", n, base, fdList())
			return
		}
		<-pace.C
	}
}

// fdList lists what the process's file descriptors point to.
func fdList() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var b strings.Builder
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		fmt.Fprintf(&b, "  %s -> %s\n", e.Name(), target)
	}
	return b.String()
}
