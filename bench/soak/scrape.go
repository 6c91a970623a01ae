package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// metrics is one scrape of a Prometheus text endpoint: each series, as
// name{labels}, and its value.
type metrics map[string]float64

// parseMetrics reads the Prometheus text format, skipping comments and
// lines it cannot read.
func parseMetrics(r io.Reader) (metrics, error) {
	m := metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, '}') // label values may hold spaces
		if i < 0 {
			i = strings.IndexByte(line, ' ')
		} else {
			i++
		}
		if i <= 0 || i >= len(line) {
			continue
		}
		fields := strings.Fields(line[i:]) // value, then an optional timestamp
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// sum adds up every series of the metric name whose labels contain each of
// the label pairs in match (written as in the format: `result="ok"`).
func (m metrics) sum(name string, match ...string) float64 {
	var total float64
	for series, v := range m {
		n, labels, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		all := true
		for _, l := range match {
			all = all && strings.Contains(labels, l)
		}
		if all {
			total += v
		}
	}
	return total
}

// countGoroutines counts, in a goroutine profile in pprof's debug=1 text
// format, the goroutines whose stack holds a frame of function fn.
func countGoroutines(profile, fn string) int {
	n, count := 0, 0
	for _, line := range strings.Split(profile, "\n") {
		if head, _, ok := strings.Cut(line, " @ "); ok && !strings.HasPrefix(line, "#") {
			count, _ = strconv.Atoi(head) // a new stack, held by count goroutines
			continue
		}
		if strings.HasPrefix(line, "#") && strings.Contains(line, "\t"+fn+"+") {
			n += count
			count = 0 // one frame per stack is enough
		}
	}
	return n
}

// scraper reads CoreDNS's metrics and goroutine profile.
type scraper struct {
	metricsURL, pprofURL string
	dnsPort              int
	client               http.Client
}

func newScraper(p ports) *scraper {
	return &scraper{
		dnsPort:    p.dns,
		metricsURL: fmt.Sprintf("http://127.0.0.1:%d/metrics", p.metrics),
		pprofURL:   fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/goroutine?debug=1", p.pprof),
		client:     http.Client{Timeout: 5 * time.Second},
	}
}

func (s *scraper) get(ctx context.Context, url string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return resp.Body, nil
}

func (s *scraper) metrics(ctx context.Context) (metrics, error) {
	body, err := s.get(ctx, s.metricsURL)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	return parseMetrics(body)
}

func (s *scraper) goroutines(ctx context.Context) (string, error) {
	body, err := s.get(ctx, s.pprofURL)
	if err != nil {
		return "", err
	}
	defer body.Close()
	b, err := io.ReadAll(io.LimitReader(body, 32<<20))
	return string(b), err
}

// sample is what the soak records at one moment.
type sample struct {
	at         time.Duration // since the load began
	rss, heap  float64       // bytes: resident set, Go heap in use
	fds        float64
	goroutines float64
	readLoops  int     // goroutines reading an upstream connection (pprof)
	conns      float64 // coredns_dotstub_conns
	opened     float64 // successful dials
	resends    float64
	received   float64 // queries CoreDNS read (coredns_dns_requests_total)
	servfails  float64 // SERVFAIL answers CoreDNS sent
	udpDrops   int64   // datagrams the kernel dropped on CoreDNS's UDP socket; -1 if unknown
	load       counts
	quiet      bool // taken with the load paused and nothing in flight
}

const readLoopFn = "github.com/dotstub/dotstub/plugin/dot.(*conn).readLoop"

// take scrapes CoreDNS once.
func (s *scraper) take(ctx context.Context, at time.Duration, l *load) (sample, error) {
	m, err := s.metrics(ctx)
	if err != nil {
		return sample{}, err
	}
	prof, err := s.goroutines(ctx)
	if err != nil {
		return sample{}, err
	}
	return sample{
		at:         at,
		rss:        m.sum("process_resident_memory_bytes"),
		heap:       m.sum("go_memstats_heap_inuse_bytes"),
		fds:        m.sum("process_open_fds"),
		goroutines: m.sum("go_goroutines"),
		readLoops:  countGoroutines(prof, readLoopFn),
		conns:      m.sum("coredns_dotstub_conns"),
		opened:     m.sum("coredns_dotstub_dials_total", `result="ok"`),
		resends:    m.sum("coredns_dotstub_resends_total"),
		received:   m.sum("coredns_dns_requests_total"),
		servfails:  m.sum("coredns_dns_responses_total", `rcode="SERVFAIL"`),
		udpDrops:   udpDrops(s.dnsPort),
		load:       l.counts(),
	}, nil
}

// udpDrops reads, from /proc/net/udp, how many datagrams the kernel dropped
// on the IPv4 sockets bound to 127.0.0.1:port (their receive buffer was
// full); -1 if it cannot tell.
func udpDrops(port int) int64 {
	data, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return -1
	}
	return parseUDPDrops(string(data), port)
}

func parseUDPDrops(table string, port int) int64 {
	local := fmt.Sprintf("0100007F:%04X", port)
	var drops int64 = -1
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) < 13 || f[1] != local {
			continue
		}
		n, err := strconv.ParseInt(f[len(f)-1], 10, 64)
		if err != nil {
			continue
		}
		drops = max(drops, 0) + n
	}
	return drops
}

// takeQuiet pauses the load until nothing is in flight, then scrapes until
// descriptors and goroutines read the same twice in a row 100ms apart (at
// most 30 scrapes), and resumes the load. Figures taken so do not depend on
// how many queries happened to be in flight.
func (s *scraper) takeQuiet(ctx context.Context, at time.Duration, l *load) (sample, error) {
	defer l.resume()
	idle := l.pause(ctx)
	var prev sample
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for i := range 30 {
		cur, err := s.take(ctx, at, l)
		if err != nil {
			return sample{}, err
		}
		if i > 0 && cur.fds == prev.fds && cur.goroutines == prev.goroutines {
			cur.quiet = idle
			return cur, nil
		}
		prev = cur
		select {
		case <-ctx.Done():
			return sample{}, ctx.Err()
		case <-t.C:
		}
	}
	return prev, nil // never steady: reported as not quiet
}
