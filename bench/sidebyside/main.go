// Command sidebyside is the side-by-side benchmark of DNS-over-TLS
// forwarders: dotstub, CoreDNS forward, Unbound, Stubby and dnsdist, each in
// front of the same upstream (CoreDNS serving a synthetic zone over DoT on
// loopback), loaded by dnsperf, peers interleaved, several rounds, medians
// printed as markdown tables. A relay of its own puts the upstream 20 ms away
// for one scenario. Run it through `make bench`, which builds the binaries and
// runs it in a private network namespace, so nothing it sends can leave the
// machine.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// A scenario is one load and one network condition.
type scenario struct {
	name    string
	args    []string // dnsperf's load arguments
	delay   bool     // upstream behind the 20 ms relay
	verbose bool     // per-query latencies, for p99
	ceiling bool     // also measure dnsperf straight to the upstream over DoT
}

func main() {
	bin := flag.String("bin", "bench/out", "directory holding coredns, relay and dotupstream")
	rounds := flag.Int("rounds", 3, "rounds; each runs every peer once per scenario")
	dur := flag.Duration("duration", 8*time.Second, "length of one dnsperf run")
	only := flag.String("peers", "", "comma-separated peers to run (default all): a peer's whole name picks that peer, a part of names every peer whose name holds it")
	scen := flag.String("scenarios", "", "scenarios to run, by words of their names separated by '/' (default all)")
	out := flag.String("out", "", "write the markdown tables to this file too")
	ups := flag.String("upstreams", "coredns,pipelining", "upstreams to run every scenario against, in turn: coredns, pipelining")
	profile := flag.String("profile", "", "write CPU and allocation profiles of each CoreDNS peer (dotstub, forward, the floor) under each scenario into this directory (their Corefiles get pprof)")
	flag.Parse()
	log.SetFlags(log.Ltime)
	if *profile != "" {
		if err := os.MkdirAll(*profile, 0o755); err != nil {
			log.Fatal(err)
		}
	}
	abs, err := filepath.Abs(*bin)
	if err != nil {
		log.Fatal(err)
	}

	l := fmt.Sprint(int(dur.Seconds()))
	scenarios := []scenario{
		{name: "loopback, UDP clients, max throughput (dnsperf -c 30 -q 200)", args: []string{"-c", "30", "-q", "200", "-l", l}, verbose: true, ceiling: true},
		{name: "loopback, TCP clients, max throughput (dnsperf -m tcp -c 30 -q 200)", args: []string{"-m", "tcp", "-c", "30", "-q", "200", "-l", l}, verbose: true},
		{name: "loopback, UDP clients, fixed 60 queries/s (dnsperf -c 10 -Q 60)", args: []string{"-c", "10", "-Q", "60", "-l", l}, verbose: true},
		{name: "upstream 20 ms away, UDP clients, 1,000 in flight (dnsperf -c 30 -q 1000)", args: []string{"-c", "30", "-q", "1000", "-l", l}, delay: true, verbose: true, ceiling: true},
		// The design notes' own test, as they ran it: TCP clients at a fixed
		// rate for 30 s, whatever -duration says.
		{name: "the original test: loopback, TCP clients, fixed 60 queries/s for 30 s (dnsperf -m tcp -c 10 -Q 60 -l 30)", args: []string{"-m", "tcp", "-c", "10", "-Q", "60", "-l", "30"}, verbose: true},
	}
	if *scen != "" {
		scenarios = filter(scenarios, strings.Split(*scen, "/"), func(s scenario) string { return s.name })
	}
	ps := peers
	if *only != "" {
		ps = filter(ps, strings.Split(*only, ","), func(p peer) string { return p.name })
	}

	first := &bench{bin: abs, dur: *dur}
	var md strings.Builder
	fmt.Fprintf(&md, "Medians of %d rounds, %s per run; %s.\n\n", *rounds, dur, first.machine())
	for _, mode := range strings.Split(*ups, ",") {
		b := &bench{bin: abs, dur: *dur, mode: strings.TrimSpace(mode), profile: *profile}
		fmt.Fprintf(&md, "### Upstream: %s\n\n", upstreams[b.mode])
		md.WriteString(b.runAll(scenarios, ps, *rounds, *only))
	}
	md.WriteString(first.versions(ps))
	fmt.Print(md.String())
	if *out != "" {
		if err := os.WriteFile(*out, []byte(md.String()), 0o644); err != nil {
			log.Fatal(err)
		}
	}
}

// upstreams names the upstream modes of the benchmark: CoreDNS answers the
// queries of one connection one at a time, in order, as every miekg/dns
// server does; dotupstream (plugin/dottest) answers each in a goroutine of
// its own, concurrently and out of order, as Unbound, Cloudflare, Quad9 and
// Google do.
var upstreams = map[string]string{
	"coredns":    "CoreDNS serving the zone over DoT (one connection's queries answered one at a time, in order)",
	"pipelining": "dotupstream (one connection's queries answered concurrently, out of order)",
}

// runAll runs every scenario against every peer for rounds, with b's
// upstream, and returns the tables.
func (b *bench) runAll(scenarios []scenario, ps []peer, rounds int, only string) string {
	if err := b.setup(); err != nil {
		log.Fatal(err)
	}
	defer b.teardown()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the peers die with the bench; the work directory goes too
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(sig)
		select {
		case <-sig:
			b.teardown()
			os.Exit(1)
		case <-stop:
		}
	}()
	log.Printf("upstream: %s", upstreams[b.mode])
	results := map[string]map[string][]result{} // scenario, peer -> one per round
	for r := range rounds {
		b.round = r
		for _, s := range scenarios {
			if results[s.name] == nil {
				results[s.name] = map[string][]result{}
			}
			order := slices.Clone(ps)
			rotate(order, r) // interleave: each round starts with another peer
			for _, p := range order {
				if p.tcpOnly && !slices.Contains(s.args, "tcp") {
					continue // a byte-level proxy takes TCP clients only
				}
				res, err := b.run(p, s)
				if err != nil {
					log.Printf("round %d, %s, %s: %v", r+1, s.name, p.name, err)
					continue
				}
				log.Printf("round %d, %s, %s: %s", r+1, s.name, p.name, res)
				results[s.name][p.name] = append(results[s.name][p.name], res)
			}
			if s.ceiling && (only == "" || slices.Contains(strings.Split(only, ","), "ceiling")) {
				res, err := b.ceiling(s)
				if err == nil {
					log.Printf("round %d, %s, ceiling: %s", r+1, s.name, res)
					results[s.name]["ceiling"] = append(results[s.name]["ceiling"], res)
				} else {
					log.Printf("round %d, %s, ceiling: %v", r+1, s.name, err)
				}
			}
		}
	}

	var md strings.Builder
	for _, s := range scenarios {
		fmt.Fprintf(&md, "**%s**\n\n", s.name)
		md.WriteString(table(results[s.name], append(names(ps), "ceiling")))
		if !slices.Contains(s.args, "tcp") {
			var tcp []string
			for _, p := range ps {
				if p.tcpOnly {
					tcp = append(tcp, p.name)
				}
			}
			if len(tcp) > 0 {
				fmt.Fprintf(&md, "\n%s take TCP clients only: not in this table.\n", strings.Join(tcp, ", "))
			}
		}
		md.WriteString("\n")
	}
	return md.String()
}

func names(ps []peer) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.name)
	}
	return out
}

func filter[T any](xs []T, keep []string, name func(T) string) []T {
	exact := make(map[string]bool) // words that are a whole name match that name only
	for _, k := range keep {
		for _, x := range xs {
			exact[strings.TrimSpace(k)] = exact[strings.TrimSpace(k)] || name(x) == strings.TrimSpace(k)
		}
	}
	var out []T
	for _, x := range xs {
		for _, k := range keep {
			k = strings.TrimSpace(k)
			if name(x) == k || !exact[k] && strings.Contains(name(x), k) {
				out = append(out, x)
				break
			}
		}
	}
	return out
}

func rotate[T any](xs []T, n int) {
	if len(xs) > 0 {
		n %= len(xs)
		slices.Reverse(xs[:n])
		slices.Reverse(xs[n:])
		slices.Reverse(xs)
	}
}

// versions lists the version of every peer that came from a package.
func (b *bench) versions(ps []peer) string {
	var s strings.Builder
	s.WriteString("Versions: ")
	out, _ := exec.Command(filepath.Join(b.bin, "coredns"), "-version").Output()
	s.WriteString(strings.SplitN(string(out), "\n", 2)[0])
	seen := map[string]bool{}
	for _, p := range ps {
		if p.pkg == "" || seen[p.pkg] {
			continue
		}
		seen[p.pkg] = true
		v, _ := exec.Command("dpkg-query", "-W", "-f", "${Version}", p.pkg).Output()
		fmt.Fprintf(&s, ", %s %s", p.pkg, v)
	}
	v, _ := exec.Command("dpkg-query", "-W", "-f", "${Version}", "dnsperf").Output()
	fmt.Fprintf(&s, ", dnsperf %s.\n", v)
	return s.String()
}
