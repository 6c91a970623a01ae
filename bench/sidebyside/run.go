package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

const (
	peerPort  = 5300 // every peer serves here, one at a time
	delay     = 20 * time.Millisecond
	zoneNames = 10000
)

type bench struct {
	bin  string
	dur  time.Duration
	dir  string
	mode string // the upstream: "coredns" or "pipelining" (see upstreams)

	profile string // with -profile: the directory for dotstub's CPU and allocation profiles
	round   int    // the round running, for the profiles' names

	upstream string    // host:port of the DoT upstream
	relay    string    // host:port of the relay that delays it
	relayCmd *exec.Cmd // the relay, whose stats count upstream connections
	upCmd    *exec.Cmd
}

// result is one dnsperf run against one peer.
type result struct {
	qps, completed   float64 // answered queries per second; % of queries sent
	avg, p99         float64 // latency, ms; p99 < 0 when unknown
	opened, maxOpen  int     // upstream TLS connections opened over the run; open at once at most
	cpuPer100k, rssM float64 // forwarder CPU seconds per 100k answered queries; peak RSS, MiB
}

func (r result) String() string {
	return fmt.Sprintf("%.0f q/s, %.2f%% completed, avg %.2f ms, p99 %.2f ms, conns %d (max %d open), CPU %.2f s/100k, RSS %.0f MiB",
		r.qps, r.completed, r.avg, r.p99, r.opened, r.maxOpen, r.cpuPer100k, r.rssM)
}

func (b *bench) setup() error {
	var err error
	if b.dir, err = os.MkdirTemp("", "dotstub-bench-"); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(b.dir, "stubby-appdata"), 0o755); err != nil {
		return err
	}
	if err := writeZone(b.dir, zoneNames); err != nil {
		return err
	}
	upPort := freePort()
	b.upstream = net.JoinHostPort("127.0.0.1", strconv.Itoa(upPort))
	switch b.mode {
	case "coredns":
		if out, err := exec.Command(filepath.Join(b.bin, "dotupstream"), "-dir", b.dir, "-certs-only").CombinedOutput(); err != nil {
			return fmt.Errorf("dotupstream: %v: %s", err, out)
		}
		up := peer{name: "upstream", file: "Corefile.upstream", conf: upstreamConf, cmd: []string{"{{bin}}/coredns", "-conf", "{{conf}}"}}
		if b.upCmd, err = b.start(up, conf{Port: upPort}); err != nil {
			return err
		}
	case "pipelining":
		// dotupstream writes the certificates the peers trust, then serves.
		up := peer{name: "upstream", file: "dotupstream.args", cmd: []string{"{{bin}}/dotupstream", "-listen", b.upstream, "-dir", b.dir}}
		if b.upCmd, err = b.start(up, conf{}); err != nil {
			return err
		}
		if err := waitFile(filepath.Join(b.dir, "addr")); err != nil {
			return fmt.Errorf("dotupstream: %v", err)
		}
	default:
		return fmt.Errorf("upstream %q: want coredns or pipelining", b.mode)
	}
	if err := waitTLS(b.upstream); err != nil {
		return fmt.Errorf("upstream: %v", err)
	}
	addrFile := filepath.Join(b.dir, "relay.addr")
	b.relayCmd = command(filepath.Join(b.bin, "relay"), "-listen", "127.0.0.1:0", "-to", b.upstream,
		"-delay", delay.String(), "-addr-file", addrFile, "-stats", filepath.Join(b.dir, "relay.stats"))
	if err := b.relayCmd.Start(); err != nil {
		return err
	}
	if err := waitFile(addrFile); err != nil {
		return fmt.Errorf("relay: %v", err)
	}
	a, err := os.ReadFile(addrFile)
	b.relay = strings.TrimSpace(string(a))
	return err
}

func (b *bench) teardown() {
	for _, c := range []*exec.Cmd{b.relayCmd, b.upCmd} {
		if c != nil && c.Process != nil {
			stop(c)
		}
	}
	os.RemoveAll(b.dir)
}

// start renders p's config for c and starts it, logging to a file.
func (b *bench) start(p peer, c conf) (*exec.Cmd, error) {
	c.Dir = b.dir
	cmd, err := render(p, b.bin, c)
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(b.dir, p.file+".log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	return cmd, cmd.Start()
}

// stop ends cmd: SIGTERM, then SIGKILL after 5 s.
func stop(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// run measures p under s: a fresh process, a one-second warm-up, one
// dnsperf run.
func (b *bench) run(p peer, s scenario) (result, error) {
	up := b.upstream
	if s.delay {
		up = b.relay
	}
	host, port, _ := net.SplitHostPort(up)
	c := conf{Port: peerPort, Upstream: up, UpHost: host, UpPort: port}
	if b.profile != "" && p.coredns() {
		c.Pprof = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort()))
	}
	cmd, err := b.start(p, c)
	if err != nil {
		return result{}, err
	}
	defer stop(cmd)
	portN, _ := strconv.Atoi(port)
	sampler := sampleConns(portN)
	defer sampler.stop()
	relayBefore := b.relayAccepted()
	network, warm := "udp", []string{"-c", "10", "-q", "50", "-l", "1"}
	if p.tcpOnly {
		network, warm = "tcp", append([]string{"-m", "tcp"}, warm...)
	}
	if err := waitDNS(peerPort, network); err != nil {
		return result{}, fmt.Errorf("%s did not answer: %v", p.name, err)
	}
	b.dnsperf("127.0.0.1", peerPort, warm, false) // warm-up
	var profiled chan error
	if c.Pprof != "" {
		profiled = make(chan error, 1)
		go func() { profiled <- b.fetchProfiles(c.Pprof, p, s) }()
	}
	cpu0 := cpuSeconds(cmd.Process.Pid)
	res, err := b.dnsperf("127.0.0.1", peerPort, s.args, s.verbose)
	if profiled != nil {
		if perr := <-profiled; perr != nil {
			log.Printf("profile: %v", perr)
		}
	}
	if err != nil {
		return res, err
	}
	cpu := cpuSeconds(cmd.Process.Pid) - cpu0
	if n := res.qps * s.seconds(b.dur); n > 0 {
		res.cpuPer100k = cpu / n * 1e5
	}
	res.rssM = peakRSS(cmd.Process.Pid)
	res.opened, res.maxOpen = sampler.stop()
	if s.delay {
		res.opened = b.relayAccepted() - relayBefore // exact: the relay counts them
	}
	return res, nil
}

// seconds is how long dnsperf runs under s: its -l, or d.
func (s scenario) seconds(d time.Duration) float64 {
	if i := slices.Index(s.args, "-l"); i >= 0 && i+1 < len(s.args) {
		if n, err := strconv.Atoi(s.args[i+1]); err == nil {
			return float64(n)
		}
	}
	return d.Seconds()
}

// fetchProfiles takes a CPU profile of the peer's pprof at addr over the
// dnsperf run (less a second at each end), then its allocation profile, into
// b.profile, named by upstream, scenario and round, and by the peer when it
// is not dotstub.
func (b *bench) fetchProfiles(addr string, p peer, s scenario) error {
	name := fmt.Sprintf("%s-%s-r%d", b.mode, slug(s.name), b.round+1)
	if p.name != "dotstub" {
		name = slug(p.name) + "-" + name
	}
	secs := max(int(b.dur.Seconds())-2, 1)
	time.Sleep(time.Second) // dnsperf's ramp-up, not a synchronization
	for _, p := range []struct{ path, file string }{
		{fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), "cpu-" + name + ".pprof"},
		{"/debug/pprof/allocs", "allocs-" + name + ".pprof"},
	} {
		resp, err := http.Get("http://" + addr + p.path)
		if err != nil {
			return err
		}
		f, err := os.Create(filepath.Join(b.profile, p.file))
		if err == nil {
			_, err = io.Copy(f, resp.Body)
			f.Close()
		}
		resp.Body.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// slug shortens a scenario's name for a file name: "loopback, UDP clients, max
// throughput (...)" is "udp-max-throughput".
func slug(name string) string {
	name, _, _ = strings.Cut(name, " (")
	name = strings.TrimPrefix(name, "loopback, ")
	name = strings.NewReplacer(",", "", " clients", "", " ", "-").Replace(strings.ToLower(name))
	return name
}

// ceiling measures the upstream alone: dnsperf straight to it over DoT.
func (b *bench) ceiling(s scenario) (result, error) {
	up := b.upstream
	if s.delay {
		up = b.relay
	}
	host, port, _ := net.SplitHostPort(up)
	portN, _ := strconv.Atoi(port)
	args := slices.Clone(s.args)
	if i := slices.Index(args, "-m"); i >= 0 {
		args = slices.Delete(args, i, i+2)
	}
	sampler := sampleConns(portN)
	res, err := b.dnsperf(host, portN, append([]string{"-m", "dot"}, args...), s.verbose)
	res.opened, res.maxOpen = sampler.stop()
	res.cpuPer100k, res.rssM = -1, -1
	return res, err
}

// dnsperf runs dnsperf against host:port with args and parses its report.
func (b *bench) dnsperf(host string, port int, args []string, verbose bool) (result, error) {
	all := append([]string{"-s", host, "-p", strconv.Itoa(port), "-d", filepath.Join(b.dir, "queries.txt"), "-t", "5"}, args...)
	if verbose {
		all = append(all, "-v")
	}
	cmd := command("dnsperf", all...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return result{}, err
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	res := result{p99: -1}
	var lat []float64
	var report []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "> ") { // > RCODE name type latency
			f := strings.Fields(line)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil && f[1] != "T" {
				lat = append(lat, v)
			}
			continue
		}
		report = append(report, line)
	}
	if err := cmd.Wait(); err != nil {
		return res, fmt.Errorf("dnsperf %s: %v\n%s", strings.Join(all, " "), err, strings.Join(report, "\n"))
	}
	for _, line := range report {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseFloat(f[0], 64)
		switch k {
		case "Queries per second":
			res.qps = n
		case "Queries completed":
			if len(f) > 1 {
				res.completed, _ = strconv.ParseFloat(strings.Trim(f[1], "(%)"), 64)
			}
		case "Average Latency (s)":
			res.avg = n * 1e3
		}
	}
	if len(lat) > 0 { // average and p99 from the same per-query latencies
		sort.Float64s(lat)
		res.p99 = lat[min(len(lat)-1, len(lat)*99/100)] * 1e3
		sum := 0.0
		for _, v := range lat {
			sum += v
		}
		res.avg = sum / float64(len(lat)) * 1e3
	}
	return res, nil
}

// relayAccepted asks the relay for its count of accepted connections.
func (b *bench) relayAccepted() int {
	path := filepath.Join(b.dir, "relay.stats")
	os.Remove(path)
	b.relayCmd.Process.Signal(syscall.SIGUSR1)
	for range 100 {
		if data, err := os.ReadFile(path); err == nil && len(data) > 0 {
			var s struct{ Accepted int }
			if json.Unmarshal(data, &s) == nil {
				return s.Accepted
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return -1
}

// connSampler reads /proc/net/tcp every 50 ms, noting every established
// connection to a port: the network namespace holds only the benchmark's.
type connSampler struct {
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	seen    map[string]bool
	maxOpen int
}

func sampleConns(port int) *connSampler {
	s := &connSampler{done: make(chan struct{}), seen: map[string]bool{}}
	hexPort := fmt.Sprintf(":%04X", port)
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			data, _ := os.ReadFile("/proc/net/tcp")
			open := 0
			s.mu.Lock()
			for _, line := range strings.Split(string(data), "\n")[1:] {
				f := strings.Fields(line)
				if len(f) > 3 && f[3] == "01" && strings.HasSuffix(f[2], hexPort) {
					open++
					s.seen[f[1]] = true
				}
			}
			s.maxOpen = max(s.maxOpen, open)
			s.mu.Unlock()
			select {
			case <-s.done:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *connSampler) stop() (seen, maxOpen int) {
	s.once.Do(func() { close(s.done) })
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen), s.maxOpen
}

// cpuSeconds is the user and system CPU time of pid.
func cpuSeconds(pid int) float64 {
	var sum float64
	for _, p := range tree(pid) {
		f := stat(p)
		if len(f) < 15 {
			continue
		}
		for _, i := range []int{11, 12, 13, 14} { // utime, stime, and those of its children that ended
			v, _ := strconv.ParseFloat(f[i], 64)
			sum += v
		}
	}
	return sum / 100 // USER_HZ
}

// stat returns the fields of /proc/PID/stat from the third on.
func stat(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(data)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
}

// tree returns pid and the processes under it, live: a forwarder that forks
// (nginx's workers, socat's child per connection) is all of them.
func tree(pid int) []int {
	parent := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := stat(p); len(f) > 1 {
			pp, _ := strconv.Atoi(f[1])
			parent[pp] = append(parent[pp], p)
		}
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, parent[out[i]]...)
	}
	return out
}

// peakRSS is the peak resident set size of pid and the processes under it,
// added up, MiB.
func peakRSS(pid int) float64 {
	var sum float64
	for _, p := range tree(pid) {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				kb, _ := strconv.ParseFloat(strings.Fields(v)[0], 64)
				sum += kb / 1024
			}
		}
	}
	return sum
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitDNS waits up to 15 s for a UDP answer on port.
func waitDNS(port int, network string) error {
	m := new(dns.Msg)
	m.SetQuestion("name0.bench.test.", dns.TypeA)
	c := &dns.Client{Net: network, Timeout: 500 * time.Millisecond}
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var a *dns.Msg
		if a, _, err = c.Exchange(m, fmt.Sprintf("127.0.0.1:%d", port)); err == nil && a.Rcode == dns.RcodeSuccess && len(a.Answer) == 1 {
			return nil
		}
	}
	return err
}

// waitFile waits for path, which a process writes once it serves.
func waitFile(path string) error {
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if st, err := os.Stat(path); err == nil && st.Size() > 0 {
			return nil
		}
	}
	return fmt.Errorf("no %s within 15s", path)
}

// waitTLS waits up to 15 s for the upstream to accept connections.
func waitTLS(addr string) error {
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var c net.Conn
		if c, err = (&net.Dialer{}).DialContext(context.Background(), "tcp", addr); err == nil {
			c.Close()
			return nil
		}
	}
	return err
}

// table prints the median of each column over the rounds, one row a peer.
func table(res map[string][]result, order []string) string {
	var s strings.Builder
	s.WriteString("| peer | answered q/s | completed | avg latency | p99 latency | upstream conns opened | open at most | CPU s per 100k q | peak RSS |\n")
	s.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, name := range order {
		rs := res[name]
		if len(rs) == 0 {
			continue
		}
		med := func(f func(result) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			sort.Float64s(v)
			return v[len(v)/2]
		}
		opt := func(v float64, format string) string {
			if v < 0 {
				return "–"
			}
			return fmt.Sprintf(format, v)
		}
		fmt.Fprintf(&s, "| %s | %.0f | %.2f%% | %.2f ms | %s | %.0f | %.0f | %s | %s |\n", name,
			med(func(r result) float64 { return r.qps }),
			med(func(r result) float64 { return r.completed }),
			med(func(r result) float64 { return r.avg }),
			opt(med(func(r result) float64 { return r.p99 }), "%.2f ms"),
			med(func(r result) float64 { return float64(r.opened) }),
			med(func(r result) float64 { return float64(r.maxOpen) }),
			opt(med(func(r result) float64 { return r.cpuPer100k }), "%.2f"),
			opt(med(func(r result) float64 { return r.rssM }), "%.0f MiB"))
	}
	return s.String()
}

// machine describes where the benchmark ran.
func (b *bench) machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("%d cores (%s), load generator, forwarder and upstream on the same machine, %s", runtime.NumCPU(), model, time.Now().Format("2006-01-02"))
}

// command is exec.Command for a process that must not outlive the bench: the
// kernel kills it when the bench dies, however it dies.
func command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}
