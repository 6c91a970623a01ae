// Command failover measures, side by side, how dotstub and CoreDNS forward
// (both in the same coredns binary) behave when their DoT upstreams fail:
// an upstream killed and restarted, one that reads queries and never
// answers, one that never completes a TLS handshake, all of them stalled,
// and one slower than the other. For each scenario and each Corefile
// variant it starts two in-process DoT upstreams (A answers every A query
// with 192.0.2.1, B with 192.0.2.2, so the client knows who answered), a
// fresh CoreDNS in front of them, and a client sending UDP queries at a
// fixed rate; the upstream fails at a fixed time of the load. It prints one
// markdown table per scenario.
//
// Everything listens on 127.0.0.1, every load is bounded in queries and
// time, and each CoreDNS is stopped by its PID when its run ends. The whole
// run takes about three minutes:
//
//	go build -o bench/out/coredns ./cmd/coredns && go run ./bench/failover
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/dotstub/dotstub/bench/internal/benchkit"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// budget bounds the whole run, so that a hang anywhere cannot keep it going:
// a row still running when it passes is cut short and reported as such.
const budget = 290 * time.Second

func main() {
	bin := flag.String("bin", "bench/out", "directory holding coredns")
	rate := flag.Float64("rate", 2000, "queries per second of the steady loads")
	peers := flag.String("peers", "dotstub,forward", "comma-separated plugins to run")
	only := flag.String("scenarios", "", "comma-separated scenarios to run: kill, stall, stall-handshake, all-stalled, policies (default all)")
	out := flag.String("out", "", "write the markdown tables to this file too")
	records := flag.String("records", "", "write every query of every run to a CSV file in this directory")
	flag.Parse()
	log.SetFlags(log.Ltime)
	if *rate <= 0 || *rate > 50000 {
		log.Fatalf("-rate %g: want more than 0 and at most 50000", *rate)
	}
	scs, err := pick(scenarios(), *only, strings.Split(*peers, ","))
	if err != nil {
		log.Fatal(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()

	h, err := newHarness(*bin, *rate)
	if err != nil {
		log.Fatal(err)
	}
	defer h.close()
	h.records = *records

	var md strings.Builder
	fmt.Fprintf(&md, "%s. Command: `%s`. %s. Steady loads: %g queries/s over UDP from one client, client timeout %s; one run per row.\n\n",
		benchkit.Machine("client, CoreDNS and upstreams"), command(), benchkit.Version(filepath.Join(h.bin, "coredns")), *rate, clientTimeout)
	for _, sc := range scs {
		md.WriteString(h.runScenario(ctx, sc))
	}
	fmt.Print(md.String())
	if *out != "" {
		if err := os.WriteFile(*out, []byte(md.String()), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

// pick keeps the scenarios named in only (all when empty) and, in each, the
// rows of the given peers.
func pick(all []scenario, only string, peers []string) ([]scenario, error) {
	var out []scenario
	for _, sc := range all {
		if only != "" && !slices.Contains(splitTrim(only), sc.name) {
			continue
		}
		var rows []row
		for _, r := range sc.rows {
			if slices.Contains(splitTrim(strings.Join(peers, ",")), r.peer) {
				rows = append(rows, r)
			}
		}
		if len(rows) > 0 {
			sc.rows = rows
			out = append(out, sc)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no scenario matches -scenarios %q and -peers %q", only, strings.Join(peers, ","))
	}
	return out, nil
}

func splitTrim(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// command is how this run was started, for the report.
func command() string {
	return strings.TrimSpace("go run ./bench/failover " + strings.Join(os.Args[1:], " "))
}

// harness holds what every run shares: the coredns binary, a work
// directory and the CA that issues the upstreams' certificates.
type harness struct {
	bin    string
	rate   float64
	dir    string // Corefiles, logs, ca.pem; removed by close
	ca     *dottest.CA
	caFile string
	// records, if set, is a directory that gets one CSV file per run, a
	// line per query: what the tables summarize, for a closer look.
	records string
}

func newHarness(bin string, rate float64) (*harness, error) {
	abs, err := filepath.Abs(bin)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(abs, "coredns")); err != nil {
		return nil, fmt.Errorf("%v (build it: go build -o %s/coredns ./cmd/coredns)", err, bin)
	}
	dir, err := os.MkdirTemp("", "dotstub-failover-")
	if err != nil {
		return nil, err
	}
	h := &harness{bin: abs, rate: rate, dir: dir, caFile: filepath.Join(dir, "ca.pem")}
	if h.ca, err = dottest.NewCA("failover bench CA"); err == nil {
		err = os.WriteFile(h.caFile, h.ca.PEM, 0o644)
	}
	if err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

func (h *harness) close() { os.RemoveAll(h.dir) }

// runScenario runs every row of sc and returns its markdown: title, what was
// done, the table. A row that fails is reported in the table, not fatal.
func (h *harness) runScenario(ctx context.Context, sc scenario) string {
	var rows [][]string
	for i, r := range sc.rows {
		cells, err := h.runRow(ctx, sc, i, r)
		if err != nil {
			log.Printf("%s, %s: %v", sc.name, r.label, err)
			cells = []string{fmt.Sprintf("error: %v", oneLine(err))}
		} else {
			log.Printf("%s, %s: %s", sc.name, r.label, strings.Join(cells, ", "))
		}
		rows = append(rows, append([]string{r.label}, cells...))
	}
	return fmt.Sprintf("**%s**\n\n%s\n\n%s\n", sc.title, sc.about, benchkit.Table(sc.header, rows))
}

// runRow starts the upstreams and a CoreDNS for r, runs sc's load and
// summarizes it. Everything it starts is stopped before it returns:
// CoreDNS first, then the upstreams.
func (h *harness) runRow(ctx context.Context, sc scenario, i int, r row) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	a, b, err := h.startUpstreams()
	if err != nil {
		return nil, err
	}
	defer a.close()
	defer b.close()
	if sc.prepare != nil {
		sc.prepare(a, b)
	}
	port, err := dottest.FreePort()
	if err != nil {
		return nil, err
	}
	conf := corefile(r, port, h.caFile, []*upstream{a, b})
	cd, err := startCoreDNS(ctx, h.bin, h.dir, fmt.Sprintf("%s-%d", sc.name, i), conf, port)
	if err != nil {
		return nil, err
	}
	defer cd.stop()
	who := map[string]string{a.ip.String(): a.name, b.ip.String(): b.name}
	recs, err := runLoad(ctx, cd.addr, sc.plan(h.rate, a, b), who)
	if err != nil {
		return nil, err
	}
	if h.records != "" {
		if err := writeRecords(filepath.Join(h.records, fmt.Sprintf("%s-%d.csv", sc.name, i)), r.label, recs); err != nil {
			log.Printf("%s, %s: %v", sc.name, r.label, err)
		}
	}
	return sc.cells(recs), nil
}

// writeRecords writes recs as CSV: send time and latency in milliseconds,
// rcode (-1 for no answer), upstream.
func writeRecords(path, label string, recs []record) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\nsent_ms,latency_ms,rcode,from\n", label)
	for _, r := range recs {
		fmt.Fprintf(&b, "%.3f,%.3f,%d,%s\n", r.sent.Seconds()*1e3, r.latency.Seconds()*1e3, r.rcode, r.from)
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// startUpstreams starts A and B, each with a certificate for dns.test from
// the harness's CA.
func (h *harness) startUpstreams() (a, b *upstream, err error) {
	start := func(name, ip string) (*upstream, error) {
		leaf, err := h.ca.Issue([]string{dottest.DefaultName}, time.Time{}, time.Time{})
		if err != nil {
			return nil, err
		}
		return startUpstream(name, net.ParseIP(ip), h.ca, leaf)
	}
	if a, err = start("A", "192.0.2.1"); err != nil {
		return nil, nil, err
	}
	if b, err = start("B", "192.0.2.2"); err != nil {
		a.close()
		return nil, nil, err
	}
	return a, b, nil
}

func oneLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
