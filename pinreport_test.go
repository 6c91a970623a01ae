package dotstub

import (
	"bytes"
	"fmt"
	golog "log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dotstub/dotstub/plugin/dottest"
	"github.com/dotstub/dotstub/plugin/pin"
)

// logLines holds what the standard logger wrote while a test ran.
type logLines struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// matching returns the lines that hold every one of subs.
func (l *logLines) matching(subs ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.buf.String(), "\n") {
		ok := line != ""
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// captureLog sends the standard logger's output to the returned logLines
// until t ends. CoreDNS's log package writes there, and the lines a stanza's
// TLS configuration logs at a handshake have no other way out to a test.
func captureLog(t *testing.T) *logLines {
	t.Helper()
	l := &logLines{}
	prev := golog.Writer()
	golog.SetOutput(l)
	t.Cleanup(func() { golog.SetOutput(prev) })
	return l
}

// counterSum returns the sum of the counter name over the series whose to
// label is to, from the default registry, where init registers collectors.
func counterSum(t *testing.T, name, to string) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "to" && l.GetValue() == to {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

const (
	reportOnlyMetric = "coredns_dotstub_pin_report_only_mismatches_total"
	handshakesMetric = "coredns_dotstub_handshakes_total"
)

// TestPinReportOnly runs a stanza against an upstream whose chain verifies
// but whose key matches no pin. Enforcing (the default), it gets SERVFAIL and
// the upstream not a byte; with pin_report_only, the query is answered, each
// handshake counted, and the key logged once. Report-only never lets through
// a chain or a name that fails verification.
func TestPinReportOnly(t *testing.T) {
	other, err := dottest.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	otherFile := filepath.Join(t.TempDir(), "other.pem")
	if err := os.WriteFile(otherFile, other.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		to       func(srv *dottest.Server) string
		lines    func(srv *dottest.Server, ca string) []string
		answered bool
		reported bool
	}{
		{
			name: "enforcing mismatch",
			lines: func(_ *dottest.Server, ca string) []string {
				return []string{"tls " + ca, "pin_sha256 " + other.Pin().String()}
			},
		},
		{
			name: "report-only mismatch",
			lines: func(_ *dottest.Server, ca string) []string {
				return []string{"tls " + ca, "pin_sha256 " + other.Pin().String(), "pin_report_only"}
			},
			answered: true,
			reported: true,
		},
		{
			name: "report-only mismatch, pins per upstream",
			lines: func(srv *dottest.Server, ca string) []string {
				return []string{"tls " + ca, "pin_report_only", "pin_sha256 " + dottest.DefaultName + " " + other.Pin().String()}
			},
			answered: true,
			reported: true,
		},
		{
			name: "report-only match",
			lines: func(srv *dottest.Server, ca string) []string {
				return []string{"tls " + ca, "pin_sha256 " + other.Pin().String() + " " + srv.CA.Pin().String(), "pin_report_only"}
			},
			answered: true,
		},
		{
			name: "report-only, untrusted CA",
			lines: func(srv *dottest.Server, _ string) []string {
				return []string{"tls " + otherFile, "pin_sha256 " + other.Pin().String(), "pin_report_only"}
			},
		},
		{
			name: "report-only, untrusted CA, pins of the chain it sends",
			lines: func(srv *dottest.Server, _ string) []string {
				return []string{"tls " + otherFile, "pin_sha256 " + srv.Leaf.Pin().String() + " " + srv.CA.Pin().String(), "pin_report_only"}
			},
		},
		{
			name: "report-only, wrong name",
			to:   func(srv *dottest.Server) string { return "tls://" + strings.Replace(srv.Addr, ":", "%wrong.test:", 1) },
			lines: func(_ *dottest.Server, ca string) []string {
				return []string{"tls " + ca, "pin_sha256 " + other.Pin().String(), "pin_report_only"}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logs := captureLog(t)
			srv := dottest.New(t, dottest.Options{})
			to := upstreamFor(srv)
			if tc.to != nil {
				to = tc.to(srv)
			}
			reportedBefore := counterSum(t, reportOnlyMetric, to)
			handshakesBefore := counterSum(t, handshakesMetric, to)
			d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n%s\n}", to, strings.Join(tc.lines(srv, caFile(t, srv)), "\n")))

			// Two connections: the second after the server closed the first.
			for i := range 2 {
				if i == 1 {
					srv.CloseConns()
				}
				m := new(dns.Msg)
				m.SetQuestion("www.example.org.", dns.TypeA)
				rcode, a, err := serve(t, d, false, m)
				switch {
				case tc.answered && (err != nil || rcode != dns.RcodeSuccess || a == nil || len(a.Answer) != 1):
					t.Fatalf("query %d: ServeDNS = %d, %v, %v; want an answer", i, rcode, a, err)
				case !tc.answered && (rcode != dns.RcodeServerFailure || a != nil || err == nil):
					t.Fatalf("query %d: ServeDNS = %d, %v, %v; want SERVFAIL and the error", i, rcode, a, err)
				}
			}
			d.OnShutdown()
			srv.Close()

			reported := counterSum(t, reportOnlyMetric, to) - reportedBefore
			handshakes := counterSum(t, handshakesMetric, to) - handshakesBefore
			lines := logs.matching(to, "pin_report_only")
			if !tc.answered {
				if srv.BytesRead() != 0 || srv.Queries() != 0 {
					t.Errorf("refused upstream received %d bytes, %d queries", srv.BytesRead(), srv.Queries())
				}
				if handshakes != 0 {
					t.Errorf("%v handshakes counted as completed, want 0", handshakes)
				}
			}
			if !tc.reported {
				if reported != 0 || len(lines) != 0 {
					t.Errorf("%v mismatches reported, log lines %q; want none", reported, lines)
				}
				return
			}
			if srv.Queries() != 2 {
				t.Errorf("upstream received %d queries, want 2", srv.Queries())
			}
			if handshakes < 2 || reported != handshakes {
				t.Errorf("%v mismatches reported over %v handshakes; want one per handshake, at least 2", reported, handshakes)
			}
			if len(lines) != 1 || !strings.Contains(lines[0], "(leaf pin "+srv.Leaf.Pin().String()+")") {
				t.Errorf("log lines %q, want one naming the leaf pin %s", lines, srv.Leaf.Pin())
			}
		})
	}
}

// TestPinReportOnlyNewKey: when the upstream's key changes (a leaf rotation
// to a key nobody pinned), report-only logs the new key once more.
func TestPinReportOnlyNewKey(t *testing.T) {
	logs := captureLog(t)
	srv := dottest.New(t, dottest.Options{})
	ca := caFile(t, srv)
	to := upstreamFor(srv)
	var none pin.Pin // pins no certificate
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n pin_sha256 %s\n pin_report_only\n}", to, ca, none))
	ask := func() {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion("www.example.org.", dns.TypeA)
		if rcode, a, err := serve(t, d, false, m); err != nil || rcode != dns.RcodeSuccess || a == nil {
			t.Fatalf("ServeDNS = %d, %v, %v", rcode, a, err)
		}
	}
	ask()
	oldLeaf := srv.Leaf.Pin()

	// The same address, the same CA, a new leaf key.
	srv.Close()
	leaf, err := srv.CA.Issue([]string{dottest.DefaultName}, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	srv2 := dottest.New(t, dottest.Options{Addr: srv.Addr, CA: srv.CA, Leaf: leaf})
	ask()
	srv2.CloseConns()
	ask()
	d.OnShutdown()

	lines := logs.matching(to, "pin_report_only")
	if len(lines) != 2 || !strings.Contains(lines[0], oldLeaf.String()) || !strings.Contains(lines[1], leaf.Pin().String()) {
		t.Errorf("log lines %q, want one for leaf pin %s, then one for %s", lines, oldLeaf, leaf.Pin())
	}
}

// TestPinMismatchReportedBounded: past maxLoggedLeaves distinct keys, one more
// line says so, and then only the counter moves.
func TestPinMismatchReportedBounded(t *testing.T) {
	var lines []string
	logf := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }
	to := "tls://192.0.2.1%" + t.Name()
	before := counterSum(t, reportOnlyMetric, to)
	s := newSeries(to, "192.0.2.1:853")
	s.start(block{server: "dns://:53", zones: "."})
	defer s.stop()
	report := pinMismatchReported(s, logf)
	for i := range maxLoggedLeaves + 5 {
		for range 3 {
			report(&pin.MismatchError{Leaf: pin.Pin{byte(i), 1}})
		}
	}
	if got := counterSum(t, reportOnlyMetric, to) - before; got != 3*(maxLoggedLeaves+5) {
		t.Errorf("counter moved by %v, want %d", got, 3*(maxLoggedLeaves+5))
	}
	if len(lines) != maxLoggedLeaves+1 || !strings.Contains(lines[maxLoggedLeaves], "not logged") {
		t.Errorf("%d log lines, the last %q; want %d, the last saying further keys are not logged", len(lines), lines[len(lines)-1], maxLoggedLeaves+1)
	}
}
