//go:build linux

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// upstreamDelay is the upstream's answer time in TestReload.
const upstreamDelay = 20 * time.Millisecond

// TestReload rewrites the Corefile of a running CoreDNS under a steady load,
// so that the reload plugin replaces the dotstub instance, and checks that
// the reload loses no query beyond those in flight on the client connections
// the old server closes, and that the old instance's pool leaves no goroutine
// or descriptor behind.
//
// During a reload CoreDNS starts the new servers on the same sockets, stops
// the old ones gracefully (UDP handlers in flight finish; TCP connections are
// closed once their current query is answered, and a query the old server
// had not yet read on one is lost) and only then calls the old dotstub's
// OnShutdown. So no UDP query may fail, and the TCP queries that fail are at
// most those in flight at one moment of the reload.
func TestReload(t *testing.T) {
	bin := buildCoreDNS(t)
	// Answers take 20ms, as from an upstream a little way off, so that a
	// few queries are in flight on the old pool whenever the reload comes.
	up := dottest.New(t, dottest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		time.Sleep(upstreamDelay)
		return dottest.Answer(q)
	}})
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, up.CA.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	host, uport, _ := net.SplitHostPort(up.Addr)
	port, mport, pport := freePort(t), freePort(t), freePort(t)
	conf := func(maxConns int, pins string) string {
		return fmt.Sprintf(`.:%s {
    bind 127.0.0.1
    reload 2s 1s
    errors
    prometheus 127.0.0.1:%s
    pprof 127.0.0.1:%s
    dotstub . tls://%s%%%s:%s {
        tls %s
        pin_sha256 %s
        max_conns %d
    }
}
`, port, mport, pport, host, dottest.DefaultName, uport, ca, pins, maxConns)
	}
	cd := startCoreDNS(t, bin, dir, conf(4, up.Leaf.Pin().String()))
	sc := &scraper{
		metrics: "http://127.0.0.1:" + mport + "/metrics",
		pprof:   "http://127.0.0.1:" + pport + "/debug/pprof/goroutine?debug=1",
		// No keep-alive: an idle HTTP connection would count among CoreDNS's
		// descriptors, and the pprof plugin's listener changes at the reload.
		client: http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}

	const rate = 200 // queries per second
	l := newQueryLoad("127.0.0.1:"+port, rate, 60*rate)
	go l.run()
	defer l.finish()
	if !l.waitAnswered(rate, 15*time.Second) { // the pool is warm, queries flow
		t.Fatalf("load did not start: %d answered, coredns log:\n%s", l.answered.Load(), cd.logText())
	}
	before := sc.quiet(t, l)
	t.Logf("before the reload: %s", before)

	// An equivalent configuration: the CA's pin added to the leaf's, one
	// connection fewer. Renamed into place, so the reload plugin never reads
	// half a file.
	rewritten := time.Now()
	sentAtRewrite := l.sent.Load()
	tmp := cd.conf + ".new"
	if err := os.WriteFile(tmp, []byte(conf(3, up.CA.Pin().String()+" "+up.Leaf.Pin().String())), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, cd.conf); err != nil {
		t.Fatal(err)
	}
	if _, ok := cd.waitLog("[INFO] Reloading complete", 20*time.Second); !ok {
		t.Fatalf("no reload within 20s; coredns log:\n%s", cd.logText())
	}
	completed := time.Now()
	if line, failed := cd.findLog("Restart failed"); failed {
		t.Fatalf("reload failed: %s", line)
	}
	sentAtReload := l.sent.Load()
	if !l.waitSent(sentAtReload+3*rate, 15*time.Second) { // three more seconds of load
		t.Fatalf("load stalled after the reload at %d queries", l.sent.Load())
	}
	l.finish()
	after := sc.settled(t, before)
	t.Logf("after the reload:  %s", after)
	if after.opened <= before.opened {
		t.Errorf("no connection dialed across the reload (%d before, %d after): was the dotstub instance replaced?", before.opened, after.opened)
	}
	if d := stackDiff(before, after); d != "" {
		t.Logf("goroutines that differ:\n%s", d)
	}

	recs := l.records()
	var udpFail, tcpFail, tcp int
	var failures []string
	for _, r := range recs {
		if r.tcp {
			tcp++
		}
		if r.outcome == "" {
			continue
		}
		if r.tcp {
			tcpFail++
		} else {
			udpFail++
		}
		inWindow := r.sent.Before(completed) && r.done.After(rewritten)
		failures = append(failures, fmt.Sprintf("%s query sent %s after the rewrite: %s (during the reload: %v)",
			map[bool]string{true: "TCP", false: "UDP"}[r.tcp], r.sent.Sub(rewritten).Round(time.Millisecond), r.outcome, inWindow))
		if !inWindow {
			t.Errorf("a query failed outside the reload: %s", failures[len(failures)-1])
		}
	}
	bound := maxInflight(recs, rewritten, completed, true)
	t.Logf("queries: %d (%d over TCP), %d sent between the rewrite and the end of the reload (%s), %d after it; failed: %d over UDP, %d over TCP; in flight at once during the reload, at most: %d over UDP, %d over TCP",
		len(recs), tcp, sentAtReload-sentAtRewrite, completed.Sub(rewritten).Round(time.Millisecond), int64(len(recs))-sentAtReload,
		udpFail, tcpFail, maxInflight(recs, rewritten, completed, false), bound)
	for _, f := range failures {
		t.Log(f)
	}
	if udpFail > 0 {
		t.Errorf("%d UDP queries failed across the reload; want none: the old server finishes them before the old pool closes", udpFail)
	}
	if tcpFail > bound {
		t.Errorf("%d TCP queries failed across the reload; want at most the %d in flight at once", tcpFail, bound)
	}

	// No false page: the old instance's shutdown, probes and queries cut
	// short included, is nobody's failure.
	if line, ok := cd.findLog("marked down"); ok {
		t.Errorf("a reload under load marked the upstream down: %s", line)
	}
	page, err := sc.get(sc.metrics)
	if err != nil {
		t.Fatal(err)
	}
	if n, sum := strings.Count(page, "\ncoredns_dotstub_upstream_healthy{"), metricSum(page, "coredns_dotstub_upstream_healthy"); n != 1 || sum != 1 {
		t.Errorf("after the reload, %d upstream_healthy series adding up to %v; want one, 1", n, sum)
	}
}

// figures is what the test reads of CoreDNS at a quiet moment.
type figures struct {
	fds, goroutines, conns     int
	opened                     int            // connections dialed (dials_total ok), over both instances
	readers, writers, janitors int            // goroutines of the dot package
	probers, ours              int            // prober goroutines; every goroutine with a dotstub frame
	steady                     int            // goroutines but those serving our HTTP requests
	stacks                     map[string]int // goroutines by the functions on their stack
}

func (f figures) String() string {
	return fmt.Sprintf("fds %d, goroutines %d (%d not serving the scrapes), coredns_dotstub_conns %d (%d dialed so far), readLoop %d, writeLoop %d, janitor %d, prober %d, goroutines in dotstub code %d",
		f.fds, f.goroutines, f.steady, f.conns, f.opened, f.readers, f.writers, f.janitors, f.probers, f.ours)
}

// same compares the counts, not the stacks.
func (f figures) same(o figures) bool {
	return f.fds == o.fds && f.steady == o.steady && f.conns == o.conns && f.readers == o.readers &&
		f.writers == o.writers && f.janitors == o.janitors && f.probers == o.probers && f.ours == o.ours
}

// serving reports whether a stack serves the test's own HTTP requests: the
// HTTP server's goroutines, and one just created for them, which has no frame
// to show yet.
func serving(stack string) bool { return stack == "" || strings.Contains(stack, "net/http.(*conn") }

// stackDiff lists the stacks, other than serving ones, whose goroutines are
// more or fewer in after.
func stackDiff(before, after figures) string {
	var b strings.Builder
	for s, n := range after.stacks {
		if d := n - before.stacks[s]; d != 0 && !serving(s) {
			fmt.Fprintf(&b, "%+d goroutines: %s\n", d, s)
		}
	}
	for s, n := range before.stacks {
		if _, ok := after.stacks[s]; !ok && !serving(s) {
			fmt.Fprintf(&b, "%+d goroutines: %s\n", -n, s)
		}
	}
	return b.String()
}

// stacks counts the goroutines of a debug=1 profile by their stack, written
// as its functions, innermost first.
func stacks(profile string) map[string]int {
	out := map[string]int{}
	for _, block := range strings.Split(profile, "\n\n") {
		count := 0
		var fns []string
		for _, line := range strings.Split(block, "\n") {
			if head, _, ok := strings.Cut(line, " @ "); ok && !strings.HasPrefix(line, "#") {
				count, _ = strconv.Atoi(head)
			} else if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" {
				fn, _, _ := strings.Cut(f[2], "+0x")
				fns = append(fns, fn)
			}
		}
		if count > 0 {
			out[strings.Join(fns, " < ")] += count
		}
	}
	return out
}

type scraper struct {
	metrics, pprof string
	client         http.Client
}

func (s *scraper) get(url string) (string, error) {
	resp, err := s.client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	return string(b), err
}

func (s *scraper) read() (figures, error) {
	m, err := s.get(s.metrics)
	if err != nil {
		return figures{}, err
	}
	p, err := s.get(s.pprof)
	if err != nil {
		return figures{}, err
	}
	const dot, ups = "github.com/dotstub/dotstub/plugin/dot.", "github.com/dotstub/dotstub/plugin/upstream."
	f := figures{
		fds:        int(metricSum(m, "process_open_fds")),
		goroutines: int(metricSum(m, "go_goroutines")),
		conns:      int(metricSum(m, "coredns_dotstub_conns")),
		opened:     int(metricSum(m, "coredns_dotstub_dials_total", `result="ok"`)),
		readers:    countGoroutines(p, dot+"(*conn).readLoop"),
		writers:    countGoroutines(p, dot+"(*conn).writeLoop"),
		janitors:   countGoroutines(p, dot+"(*Pool).janitor"),
		probers:    countGoroutines(p, ups+"(*Upstream).prober"),
		ours:       countGoroutines(p, "github.com/dotstub/dotstub"),
		stacks:     stacks(p),
	}
	for s, n := range f.stacks {
		if !serving(s) {
			f.steady += n
		}
	}
	return f, nil
}

// quiet pauses the load until nothing is in flight, reads the figures until
// they read the same twice in a row (at most 50 reads, 100ms apart), and
// resumes the load.
func (s *scraper) quiet(t *testing.T, l *queryLoad) figures {
	t.Helper()
	defer l.paused.Store(false)
	l.paused.Store(true)
	if !poll(10*time.Millisecond, 5*time.Second, func() bool { return l.inflight.Load() == 0 }) {
		t.Fatalf("%d queries still in flight after 5s", l.inflight.Load())
	}
	var prev, cur figures
	var err error
	if !poll(100*time.Millisecond, 5*time.Second, func() bool {
		prev = cur
		cur, err = s.read()
		return err == nil && cur.same(prev)
	}) {
		t.Fatalf("figures never settled: %v, last %s", err, cur)
	}
	return cur
}

// settled reads the figures, once the load has stopped, until the old
// instance is gone from them: one janitor and as many probers as before,
// one reader and one writer per open connection, and no more descriptors
// and goroutines than before beyond those of the open connections (at most
// 10s). It returns the last figures read, whatever they are.
func (s *scraper) settled(t *testing.T, before figures) figures {
	t.Helper()
	var cur figures
	var err error
	ok := poll(100*time.Millisecond, 10*time.Second, func() bool {
		cur, err = s.read()
		return err == nil && cur.janitors == before.janitors && cur.probers == before.probers &&
			cur.readers == cur.conns && cur.writers == cur.conns &&
			cur.fds-cur.conns <= before.fds-before.conns && cur.steady-2*cur.conns <= before.steady-2*before.conns
	})
	if !ok {
		t.Errorf("the old instance left something behind 10s after the reload (%v):\nbefore: %s\nafter:  %s", err, before, cur)
	}
	return cur
}

// poll checks cond every step until it holds or within passes.
func poll(step, within time.Duration, cond func() bool) bool {
	t := time.NewTicker(step)
	defer t.Stop()
	deadline := time.After(within)
	for !cond() {
		select {
		case <-deadline:
			return cond()
		case <-t.C:
		}
	}
	return true
}

// metricSum adds up the series of the metric name in a Prometheus text page
// whose labels hold each of match (such as `result="ok"`).
func metricSum(page, name string, match ...string) float64 {
	var sum float64
	for _, line := range strings.Split(page, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || rest[0] != ' ' && rest[0] != '{' {
			continue // a comment, another metric, or one whose name starts with name
		}
		labels := ""
		if rest[0] == '{' {
			i := strings.LastIndexByte(rest, '}')
			if i < 0 {
				continue
			}
			labels, rest = rest[:i+1], rest[i+1:]
		}
		all := true
		for _, m := range match {
			all = all && strings.Contains(labels, m)
		}
		if f := strings.Fields(rest); all && len(f) > 0 { // value, then maybe a timestamp
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				sum += v
			}
		}
	}
	return sum
}

// countGoroutines counts, in a goroutine profile in pprof's debug=1 format,
// the goroutines whose stack holds a frame whose function starts with fn.
func countGoroutines(profile, fn string) int {
	n, count := 0, 0
	for _, line := range strings.Split(profile, "\n") {
		if head, _, ok := strings.Cut(line, " @ "); ok && !strings.HasPrefix(line, "#") {
			count, _ = strconv.Atoi(head)
			continue
		}
		if strings.HasPrefix(line, "#") && strings.Contains(line, "\t"+fn) {
			n += count
			count = 0 // once per stack
		}
	}
	return n
}

// coredns is a CoreDNS process whose log the test can wait on.
type coredns struct {
	conf string
	mu   sync.Mutex // guards the fields below
	log  []string
	more chan struct{} // closed and replaced at each new line
}

// startCoreDNS writes corefile into dir and starts bin on it, as runCoreDNS
// does, but keeps the log for waitLog. The process is stopped by its PID when
// t ends, and killed if the test binary dies first.
func startCoreDNS(t *testing.T, bin, dir, corefile string) *coredns {
	t.Helper()
	cd := &coredns{conf: filepath.Join(dir, "Corefile"), more: make(chan struct{})}
	if err := os.WriteFile(cd.conf, []byte(corefile), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-conf", cd.conf)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			cd.mu.Lock()
			cd.log = append(cd.log, sc.Text())
			close(cd.more)
			cd.more = make(chan struct{})
			cd.mu.Unlock()
		}
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
		cmd.Wait()
	})
	if _, ok := cd.waitLog("CoreDNS-", 30*time.Second); !ok {
		t.Fatalf("coredns did not start within 30s:\n%s", cd.logText())
	}
	return cd
}

// waitLog waits up to within for a log line holding s and returns it.
func (cd *coredns) waitLog(s string, within time.Duration) (string, bool) {
	deadline := time.After(within)
	for {
		cd.mu.Lock()
		more := cd.more
		cd.mu.Unlock()
		if line, ok := cd.findLog(s); ok {
			return line, true
		}
		select {
		case <-more:
		case <-deadline:
			return "", false
		}
	}
}

func (cd *coredns) findLog(s string) (string, bool) {
	cd.mu.Lock()
	defer cd.mu.Unlock()
	for _, line := range cd.log {
		if strings.Contains(line, s) {
			return line, true
		}
	}
	return "", false
}

func (cd *coredns) logText() string {
	cd.mu.Lock()
	defer cd.mu.Unlock()
	return strings.Join(cd.log, "\n")
}

// queryLoad sends A queries for distinct names at a steady rate, every fifth
// over TCP on a connection of its own, each from its own goroutine (at most
// 64 at once; a tick that finds them busy is skipped).
type queryLoad struct {
	addr     string
	interval time.Duration
	recs     []record // entry i written by query i's goroutine alone, read after done

	sent, answered, inflight atomic.Int64
	paused                   atomic.Bool
	stop                     chan struct{}
	stopOnce                 sync.Once
	done                     chan struct{} // closed once every query has ended
}

// record is one query: when it was sent and ended, and how it failed ("" if
// it did not).
type record struct {
	sent, done time.Time
	tcp        bool
	outcome    string
}

func newQueryLoad(addr string, rate, most int) *queryLoad {
	return &queryLoad{addr: addr, interval: time.Second / time.Duration(rate), recs: make([]record, most),
		stop: make(chan struct{}), done: make(chan struct{})}
}

func (l *queryLoad) run() {
	var wg sync.WaitGroup
	defer func() { wg.Wait(); close(l.done) }()
	sem := make(chan struct{}, 64)
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for i := 0; i < len(l.recs); {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		if l.paused.Load() {
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			continue
		}
		l.inflight.Add(1)
		l.sent.Add(1)
		wg.Add(1)
		go func(i int) {
			defer func() { l.inflight.Add(-1); <-sem; wg.Done() }()
			l.query(i)
		}(i)
		i++
	}
}

func (l *queryLoad) query(i int) {
	r := &l.recs[i]
	r.tcp = i%5 == 4
	m := new(dns.Msg)
	m.SetQuestion(fmt.Sprintf("r%d.reload.test.", i), dns.TypeA)
	c := &dns.Client{Net: map[bool]string{true: "tcp", false: "udp"}[r.tcp], Timeout: 3 * time.Second}
	r.sent = time.Now()
	a, _, err := c.Exchange(m, l.addr)
	r.done = time.Now()
	var ne net.Error
	switch {
	case err != nil && errors.As(err, &ne) && ne.Timeout():
		r.outcome = "timeout"
	case err != nil:
		r.outcome = err.Error()
	case a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1:
		r.outcome = fmt.Sprintf("%s with %d answers", dns.RcodeToString[a.Rcode], len(a.Answer))
	default:
		l.answered.Add(1)
	}
}

// finish stops sending and waits for the queries in flight (each ends within
// its 3s timeout). It may be called more than once.
func (l *queryLoad) finish() {
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.done
}

func (l *queryLoad) waitAnswered(n int64, within time.Duration) bool {
	return poll(10*time.Millisecond, within, func() bool { return l.answered.Load() >= n })
}

func (l *queryLoad) waitSent(n int64, within time.Duration) bool {
	return poll(10*time.Millisecond, within, func() bool { return l.sent.Load() >= n })
}

// records returns the queries sent; call it after finish.
func (l *queryLoad) records() []record { return l.recs[:l.sent.Load()] }

// maxInflight is the most queries (over TCP, or UDP) in flight at one moment
// between from and to.
func maxInflight(recs []record, from, to time.Time, tcp bool) int {
	most := 0
	for _, r := range recs { // the most at once is reached at some query's start, or at from
		at := r.sent
		if r.tcp != tcp || at.After(to) || r.done.Before(from) {
			continue
		}
		if at.Before(from) {
			at = from
		}
		n := 0
		for _, o := range recs {
			if o.tcp == tcp && !o.sent.After(at) && o.done.After(at) {
				n++
			}
		}
		most = max(most, n)
	}
	return most
}
