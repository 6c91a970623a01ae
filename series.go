package dotstub

import (
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metadata"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dotstub/dotstub/plugin/upstream"
)

// block names a server block in metrics as CoreDNS's own per-block metrics
// do, so that two blocks that ask the same upstream, on one port or several,
// never share a series.
type block struct {
	server string // its listen address, the server label of coredns_dns_*: "dns://:53"; comma-separated when it binds several
	zones  string // its zones, comma-separated: "example.org.,example.net."
	view   string // its view; "" without one
}

// blockOf reads the block of cfg, whose keys are keys, once CoreDNS has made
// its servers (the view is set then).
func blockOf(cfg *dnsserver.Config, keys []string) block {
	var servers, zones []string
	for _, h := range cfg.ListenHosts {
		hp := net.JoinHostPort(h, cfg.Port)
		if a, err := net.ResolveTCPAddr("tcp", hp); err == nil { // as CoreDNS names its servers
			hp = a.String()
		}
		servers = append(servers, cfg.Transport+"://"+hp)
	}
	for _, k := range keys {
		zones = append(zones, plugin.Host(k).NormalizeExact()...)
	}
	if len(zones) == 0 && cfg.Zone != "" {
		zones = []string{cfg.Zone}
	}
	return block{server: strings.Join(servers, ","), zones: strings.Join(zones, ","), view: cfg.ViewName}
}

// series is what one block reports of one upstream. Its metrics are resolved
// when the block starts, never at parse (a Corefile that fails to load leaves
// no series), and dropped when it stops, after the upstream has stopped: in
// between, every report lands in the block's own series, and outside, none.
type series struct {
	to, addr string        // the upstream as configured, and its IP:PORT
	address  metadata.Func // returns addr, for the metadata plugin
	m        atomic.Pointer[children]
}

func newSeries(to, addr string) *series {
	return &series{to: to, addr: addr, address: func() string { return addr }}
}

// children are the series' metrics, with every label but the last bound.
type children struct {
	labels                        []string               // server, zones, view, to
	duration, proxyDuration       prometheus.ObserverVec // by rcode
	errors, dials, bad            *prometheus.CounterVec // by reason, result, reason
	fresh, resumed                prometheus.Counter     // handshakes
	failovers, resends            prometheus.Counter
	probeFailures, proxyProbeFail prometheus.Counter
	pinMismatches                 prometheus.Counter
	hedgeWon, hedgeLost           prometheus.Counter
	certExpiry                    *prometheus.GaugeVec // fully curried: made at the first handshake, so no 0 "expires at the epoch" before it
	connAnswers                   prometheus.Observer

	// byRcode caches, for each RCODE of the header (0-15), its two
	// histograms: an answer's metrics cost two observations, not two label
	// lookups. Filled on first use.
	byRcode [16]atomic.Pointer[rcodeObservers]
}

// rcodeObservers are the histograms of one RCODE.
type rcodeObservers struct{ duration, proxyDuration prometheus.Observer }

func (s *series) start(b block) {
	lv := []string{b.server, b.zones, b.view, s.to}
	l := prometheus.Labels{"server": b.server, "zones": b.zones, "view": b.view, "to": s.to}
	proxy := prometheus.Labels{"proxy_name": pluginName, "to": s.addr}
	s.m.Store(&children{
		labels:         lv,
		duration:       requestDuration.MustCurryWith(l),
		proxyDuration:  proxyRequestDuration.MustCurryWith(proxy),
		errors:         upstreamErrors.MustCurryWith(l),
		dials:          dials.MustCurryWith(l),
		bad:            badAnswers.MustCurryWith(l),
		fresh:          handshakes.WithLabelValues(append(lv, "false")...),
		resumed:        handshakes.WithLabelValues(append(lv, "true")...),
		failovers:      failovers.WithLabelValues(lv...),
		resends:        resends.WithLabelValues(lv...),
		probeFailures:  healthcheckFailures.WithLabelValues(lv...),
		proxyProbeFail: proxyHealthcheckFailures.With(proxy),
		pinMismatches:  pinReportOnlyMismatches.WithLabelValues(lv...),
		hedgeWon:       hedges.WithLabelValues(append(lv, "won")...),
		hedgeLost:      hedges.WithLabelValues(append(lv, "lost")...),
		certExpiry:     certExpiry.MustCurryWith(l),
		connAnswers:    connQueries.WithLabelValues(lv...),
	})
}

// stop ends the reports, and returns the labels the series had; nil if it had
// not started.
func (s *series) stop() []string {
	if c := s.m.Swap(nil); c != nil {
		return c.labels
	}
	return nil
}

// answered records an answer with rcode that took took.
func (s *series) answered(rcode int, took time.Duration) {
	c := s.m.Load()
	if c == nil {
		return
	}
	o := c.observers(rcode)
	o.duration.Observe(took.Seconds())
	o.proxyDuration.Observe(took.Seconds())
}

// observers returns the histograms of rcode, from the cache when it has them.
func (c *children) observers(rcode int) *rcodeObservers {
	cached := rcode >= 0 && rcode < len(c.byRcode)
	if cached {
		if o := c.byRcode[rcode].Load(); o != nil {
			return o
		}
	}
	rc := dns.RcodeToString[rcode]
	if rc == "" {
		rc = strconv.Itoa(rcode)
	}
	o := &rcodeObservers{duration: c.duration.WithLabelValues(rc), proxyDuration: c.proxyDuration.WithLabelValues(rc)}
	if cached {
		c.byRcode[rcode].Store(o)
	}
	return o
}

// failed records an exchange that brought no usable answer.
func (s *series) failed(err error) {
	if c := s.m.Load(); c != nil {
		c.errors.WithLabelValues(upstream.Reason(err)).Inc()
	}
}

// failover records a query passed on to the next upstream.
func (s *series) failover() {
	if c := s.m.Load(); c != nil {
		c.failovers.Inc()
	}
}

// hedged records a hedged query sent to this upstream, and whether its answer
// was used.
func (s *series) hedged(won bool) {
	if c := s.m.Load(); c != nil {
		if won {
			c.hedgeWon.Inc()
		} else {
			c.hedgeLost.Inc()
		}
	}
}

// probed records the outcome of a health probe.
func (s *series) probed(err error) {
	if c := s.m.Load(); c != nil && err != nil {
		c.probeFailures.Inc()
		c.proxyProbeFail.Inc()
	}
}
