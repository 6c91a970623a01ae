// Command soak runs CoreDNS with dotstub for a long while under a steady
// load and shows whether it holds on to memory, descriptors or goroutines.
//
// It starts cmd/dotupstream on 127.0.0.1, closing each connection after a
// number of answers (so that dotstub's connections die and are replaced all
// along), CoreDNS in front of it with the prometheus and pprof endpoints on
// loopback, and sends A queries for distinct names at a steady rate, a share
// of them over TCP. It samples CoreDNS after the warm-up, at the mark and at
// the end, each time with the load paused until no query is in flight, and
// prints a markdown table with the growth from the mark to the end. Targets:
// no growth in descriptors or goroutines, under 10% in resident memory.
//
// Everything is bounded: the load by -duration and by -max-queries, each
// wait by a timeout. The children are stopped by PID when the soak ends and
// get SIGKILL if it dies first.
//
//	make build && go build -o dotupstream ./cmd/dotupstream && go run ./bench/soak -duration 10m
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/dotstub/dotstub/bench/internal/benchkit"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// config is the soak's settings, from the flags.
type config struct {
	coredns, dotupstream string
	duration             time.Duration // of the load, warm-up included
	warmup, mark         time.Duration // when the first and the middle samples are taken
	every                time.Duration // progress lines, under load
	rate                 float64       // queries per second
	tcpEvery             int
	maxQueries           int
	closeAfter           int
	out                  string
}

func main() {
	var c config
	var tcpShare float64
	flag.StringVar(&c.coredns, "coredns", "./coredns", "the coredns binary (make build)")
	flag.StringVar(&c.dotupstream, "dotupstream", "./dotupstream", "the dotupstream binary (go build ./cmd/dotupstream)")
	flag.DurationVar(&c.duration, "duration", 10*time.Minute, "how long the load runs, warm-up included")
	flag.DurationVar(&c.warmup, "warmup", 0, "when the first sample is taken (default 10s, or half the mark if shorter)")
	flag.DurationVar(&c.mark, "mark", 0, "when the middle sample is taken; growth is measured from it to the end (default 2m, or half the duration if shorter)")
	flag.DurationVar(&c.every, "every", time.Minute, "how often to log a sample under load")
	flag.Float64Var(&c.rate, "rate", 500, "queries per second")
	flag.Float64Var(&tcpShare, "tcp", 0.1, "share of the queries sent over TCP, each on a connection of its own")
	flag.IntVar(&c.maxQueries, "max-queries", 0, "stop after this many queries (default: rate × duration)")
	flag.IntVar(&c.closeAfter, "close-after", 2000, "the upstream closes each connection after answering this many queries")
	flag.StringVar(&c.out, "out", "", "write the table to this file too")
	flag.Parse()
	log.SetFlags(log.Ltime)
	if err := c.check(tcpShare); err != nil {
		log.Fatal(err)
	}
	// Children are started from this goroutine; locked to its thread, that
	// thread lives until the process exits, which is what Pdeathsig watches.
	runtime.LockOSThread()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, c.duration+2*time.Minute) // start-up, pauses, stops
	defer cancel()
	md, err := run(ctx, c)
	if err != nil {
		log.Print(err)
		cancel()
		os.Exit(1) // deferred functions of run have stopped the children
	}
	fmt.Print(md)
	if c.out != "" {
		if err := os.WriteFile(c.out, []byte(md), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

func (c *config) check(tcpShare float64) error {
	if c.mark == 0 {
		c.mark = min(2*time.Minute, c.duration/2)
	}
	if c.warmup == 0 {
		c.warmup = min(10*time.Second, c.mark/2)
	}
	switch {
	case c.rate <= 0 || c.rate > 20000:
		return fmt.Errorf("-rate %g: want more than 0 and at most 20000", c.rate)
	case c.warmup <= 0 || c.warmup >= c.mark || c.mark >= c.duration:
		return fmt.Errorf("want 0 < -warmup (%s) < -mark (%s) < -duration (%s)", c.warmup, c.mark, c.duration)
	case tcpShare < 0 || tcpShare > 1:
		return fmt.Errorf("-tcp %g: want a share between 0 and 1", tcpShare)
	case c.closeAfter < 0 || c.maxQueries < 0:
		return fmt.Errorf("-close-after and -max-queries: want 0 or more")
	}
	if tcpShare > 0 {
		c.tcpEvery = max(1, int(1/tcpShare+0.5))
	}
	if c.maxQueries == 0 {
		c.maxQueries = int(c.rate * c.duration.Seconds())
	}
	return nil
}

// run starts the upstream and CoreDNS, runs the load and returns the report.
// Whatever it started is stopped when it returns.
func run(ctx context.Context, c config) (string, error) {
	dir, err := os.MkdirTemp("", "dotstub-soak-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	ps, err := freePorts()
	if err != nil {
		return "", err
	}
	up, err := startUpstream(ctx, dir, abs(c.dotupstream), c.closeAfter)
	if err != nil {
		return "", err
	}
	defer up.stop()
	addr := fmt.Sprintf("127.0.0.1:%d", ps.dns)
	cd, err := startCoreDNS(ctx, dir, abs(c.coredns), corefile(ps, up), addr)
	if err != nil {
		return "", err
	}
	defer cd.stop()
	log.Printf("soak: coredns pid %d on %s, upstream pid %d on %s closing connections after %d answers; %g queries/s for %s",
		cd.Cmd.Process.Pid, addr, up.Cmd.Process.Pid, up.addr, c.closeAfter, c.rate, c.duration)

	l := &load{addr: addr, rate: c.rate, tcpEvery: c.tcpEvery, max: c.maxQueries}
	sc := newScraper(ps)
	t0 := time.Now()
	lctx, stopLoad := context.WithDeadline(ctx, t0.Add(c.duration))
	defer stopLoad()
	loadDone := make(chan struct{})
	go func() { l.run(lctx); close(loadDone) }()

	var samples []sample
	quiet := func(at time.Duration) error {
		s, err := sc.takeQuiet(ctx, time.Since(t0), l)
		if err != nil {
			return fmt.Errorf("sample at %s: %v; coredns log:\n%s", at, err, cd.tail())
		}
		logSample(s)
		samples = append(samples, s)
		return nil
	}
	for _, at := range []time.Duration{c.warmup, c.mark} {
		if err := underLoad(ctx, sc, l, t0, at, c.every, loadDone); err != nil {
			return "", err
		}
		if err := quiet(at); err != nil {
			return "", err
		}
	}
	if err := underLoad(ctx, sc, l, t0, c.duration, c.every, loadDone); err != nil {
		return "", err
	}
	stopLoad()
	<-loadDone // every query answered or timed out
	if err := quiet(c.duration); err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	return report(c, cd, samples), nil
}

// underLoad waits until at (since t0) or the load's end, logging a sample
// every interval meanwhile.
func underLoad(ctx context.Context, sc *scraper, l *load, t0 time.Time, at, every time.Duration, done <-chan struct{}) error {
	t := time.NewTicker(every)
	defer t.Stop()
	until := time.NewTimer(time.Until(t0.Add(at)))
	defer until.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
			return nil
		case <-until.C:
			return nil
		case <-t.C:
			if s, err := sc.take(ctx, time.Since(t0), l); err == nil {
				logSample(s)
			} else {
				log.Printf("soak: scrape: %v", err)
			}
		}
	}
}

func logSample(s sample) {
	kind := "under load"
	if s.quiet {
		kind = "quiet"
	}
	log.Printf("soak: %6s %-10s rss %s, heap %s, fds %.0f, goroutines %.0f, upstream conns %.0f (readers %d), sent %d, skipped %d, failed %d, resends %.0f, read by coredns %.0f, udp drops %d",
		s.at.Round(time.Second), kind, mib(s.rss), mib(s.heap), s.fds, s.goroutines, s.conns, s.readLoops,
		s.load.sent, s.load.skipped, s.load.failed(), s.resends, s.received, s.udpDrops)
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }

// report is the markdown: what ran, the table, whether the targets are met.
func report(c config, cd *proc, s []sample) string {
	start, mid, end := s[0], s[1], s[2]
	col := func(at time.Duration) string { return "at " + short(at) }
	header := []string{"", col(start.at), col(mid.at), col(end.at), short(mid.at) + " → end"}
	cnt := func(v float64) string { return fmt.Sprintf("%.0f", v) }
	diff := func(a, b float64) string { return fmt.Sprintf("%+.0f", b-a) }
	failed := func(x counts) string {
		return fmt.Sprintf("%d (%d / %d / %d)", x.failed(), x.servfail, x.timeout, x.other)
	}
	row := func(name string, f func(sample) float64, growth func(a, b float64) string) []string {
		return []string{name, cnt(f(start)), cnt(f(mid)), cnt(f(end)), growth(f(mid), f(end))}
	}
	pct := func(a, b float64) string { return fmt.Sprintf("%+.1f%%", 100*(b-a)/a) }
	// What an open upstream connection holds: a descriptor, and a reader
	// and a writer goroutine. The pool grows and shrinks with the load, so
	// the figures less these are the ones that must not grow.
	fds := func(x sample) float64 { return x.fds - x.conns }
	gos := func(x sample) float64 { return x.goroutines - 2*x.conns }
	sent := func(x sample) string { return fmt.Sprintf("%d (%d)", x.load.sent, x.load.tcp) }
	rows := [][]string{
		{"resident memory (process_resident_memory_bytes)", mib(start.rss), mib(mid.rss), mib(end.rss), pct(mid.rss, end.rss)},
		{"Go heap in use (go_memstats_heap_inuse_bytes)", mib(start.heap), mib(mid.heap), mib(end.heap), pct(mid.heap, end.heap)},
		row("open descriptors (process_open_fds)", func(x sample) float64 { return x.fds }, diff),
		row("… less one per upstream connection", fds, diff),
		row("goroutines (go_goroutines)", func(x sample) float64 { return x.goroutines }, diff),
		row("… less two per upstream connection", gos, diff),
		row("upstream connections open (coredns_dotstub_conns)", func(x sample) float64 { return x.conns }, diff),
		row("upstream connections opened (dials_total ok)", func(x sample) float64 { return x.opened }, diff),
		row("queries resent after a connection closed (resends_total)", func(x sample) float64 { return x.resends }, diff),
		{"queries sent (of which over TCP)", sent(start), sent(mid), sent(end), fmt.Sprintf("%+d (%+d)", end.load.sent-mid.load.sent, end.load.tcp-mid.load.tcp)},
		{"failed: all (SERVFAIL / timeout / other)", failed(start.load), failed(mid.load), failed(end.load), diff(float64(mid.load.failed()), float64(end.load.failed()))},
		row("queries CoreDNS read (coredns_dns_requests_total)", func(x sample) float64 { return x.received }, diff),
		row("SERVFAIL CoreDNS sent (coredns_dns_responses_total)", func(x sample) float64 { return x.servfails }, diff),
		row("datagrams dropped on CoreDNS's UDP socket (/proc/net/udp)", func(x sample) float64 { return float64(x.udpDrops) }, diff),
		row("queries skipped (client behind schedule)", func(x sample) float64 { return float64(x.load.skipped) }, diff),
	}

	var b strings.Builder
	fmt.Fprintf(&b, "%s. %s. Command: `%s`. Load: %g queries/s (%.0f achieved), one A query per distinct name, %s, client timeout %s; the upstream closes each connection after %d answers. Samples are taken with the load paused until no query is in flight.\n\n",
		benchkit.Machine("client, CoreDNS and upstream"), benchkit.Version(c.coredns), command(), c.rate, float64(end.load.sent)/end.at.Seconds(), tcpText(c.tcpEvery), clientTimeout, c.closeAfter)
	b.WriteString(benchkit.Table(header, rows))
	fmt.Fprintf(&b, "\nTargets, %s to the end, less what the open upstream connections hold: descriptors %s (%s), goroutines %s (%s); resident memory %s (%s, under +10%%).\n",
		short(mid.at), diff(fds(mid), fds(end)), verdict(fds(end) <= fds(mid)), diff(gos(mid), gos(end)),
		verdict(gos(end) <= gos(mid)), pct(mid.rss, end.rss), verdict(end.rss < 1.1*mid.rss))
	for _, x := range s {
		if !x.quiet {
			fmt.Fprintf(&b, "The sample at %s was not quiet: queries were still in flight, or the figures kept moving.\n", short(x.at))
		}
		if float64(x.readLoops) != x.conns {
			fmt.Fprintf(&b, "At %s, %d goroutines read upstream connections, but coredns_dotstub_conns is %.0f.\n", short(x.at), x.readLoops, x.conns)
		}
	}
	if cd != nil {
		if lines := cd.grep(5, "[ERROR]", "[WARNING]"); len(lines) > 0 {
			fmt.Fprintf(&b, "CoreDNS logged errors or warnings; the first:\n\n~~~\n%s\n~~~\n", strings.Join(lines, "\n"))
		}
	}
	return b.String()
}

func tcpText(every int) string {
	if every == 0 {
		return "all over UDP"
	}
	return fmt.Sprintf("1 in %d over TCP (a connection each)", every)
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// short prints a duration to the second, without trailing zero units.
func short(d time.Duration) string {
	s := d.Round(time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func command() string {
	return strings.TrimSpace("go run ./bench/soak " + strings.Join(os.Args[1:], " "))
}
