package dotstub

import (
	"errors"
	"slices"
	"sync"

	"github.com/coredns/coredns/plugin"
	_ "github.com/coredns/coredns/plugin/pkg/proxy" // registers coredns_proxy_*, which dotstub shares (see shared)
	"github.com/prometheus/client_golang/prometheus"
)

// Every metric of the plugin. Per-upstream series carry the block's labels
// (see block) and to, the upstream as configured, then rcode, result, reason
// (the closed set of upstream.Reason), resumed or outcome.
var (
	requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "request_duration_seconds",
		Buckets:   plugin.TimeBuckets,
		Help:      "Histogram of the time each answered upstream exchange took, by answer rcode.",
	}, perUpstream("rcode"))

	upstreamErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "upstream_errors_total",
		Help:      "Counter of upstream exchanges that brought no usable answer, by reason.",
	}, perUpstream("reason"))

	dials = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "dials_total",
		Help:      "Counter of connection attempts (TCP connect and TLS handshake), by result.",
	}, perUpstream("result"))

	handshakes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "handshakes_total",
		Help:      "Counter of completed TLS handshakes, by whether they resumed a session.",
	}, perUpstream("resumed"))

	healthcheckFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "healthcheck_failures_total",
		Help:      "Counter of failed health-check probes.",
	}, perUpstream())

	failovers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "failovers_total",
		Help:      "Counter of queries that the upstream did not answer (or answered with a failover RCODE), so that the next one was asked.",
	}, perUpstream())

	hedges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "hedges_total",
		Help:      "Counter of hedged queries sent to the upstream, by outcome: won (its answer was used) or lost.",
	}, perUpstream("outcome"))

	connQueries = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "conn_answers",
		Buckets:   []float64{0, 1, 10, 100, 1000, 10000, 100000, 1000000},
		Help:      "Histogram of the answers each upstream connection carried, observed when it closes.",
	}, perUpstream())

	resends = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "resends_total",
		Help:      "Counter of queries sent again to the same upstream after the connection carrying them died or brought a bad answer.",
	}, perUpstream())

	badAnswers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "bad_answers_total",
		Help:      "Counter of answers from the upstream dropped as bad, by reason: malformed, wrong_id or wrong_question.",
	}, perUpstream("reason"))

	certExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "cert_expiry_timestamp_seconds",
		Help:      "Gauge of when the certificate the upstream presented at its last handshake expires, in seconds since the Unix epoch.",
	}, perUpstream())

	maxConcurrentRejects = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "max_concurrent_rejects_total",
		Help:      "Counter of queries answered REFUSED because max_concurrent queries were in flight.",
	})

	privateAnswers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "private_answers_total",
		Help:      "Counter of queries for private names (localhost, local, home.arpa, private reverse zones, ...) answered here instead of forwarded, by zone.",
	}, []string{"server", "zone"})

	pinReportOnlyMismatches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "pin_report_only_mismatches_total",
		Help:      "Counter of handshakes whose verified chain matched no pin, the connection used anyway because of pin_report_only.",
	}, perUpstream())
)

// What forward records, under forward's names, shared with it: CoreDNS's
// dashboards and alerts built on coredns_proxy_* see dotstub's upstreams too,
// with proxy_name "dotstub" and to the upstream's IP:PORT.
var (
	proxyRequestDuration = shared(prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace:                   plugin.Namespace,
		Subsystem:                   "proxy",
		Name:                        "request_duration_seconds",
		Buckets:                     plugin.TimeBuckets,
		NativeHistogramBucketFactor: plugin.NativeHistogramBucketFactor,
		Help:                        "Histogram of the time each request took.",
	}, []string{"proxy_name", "to", "rcode"}))

	proxyHealthcheckFailures = shared(prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "proxy",
		Name:      "healthcheck_failures_total",
		Help:      "Counter of the number of failed healthchecks.",
	}, []string{"proxy_name", "to"}))
)

// shared registers c, or returns the collector already registered under its
// name: CoreDNS's proxy package (imported above, so registered first)
// registers coredns_proxy_* for forward, with the same help and labels.
func shared[C prometheus.Collector](c C) C {
	err := prometheus.Register(c)
	if are := (prometheus.AlreadyRegisteredError{}); errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	if err != nil {
		panic(err)
	}
	return c
}

// collectors lists every collector of the plugin, for registration and for the
// test that holds README's Metrics section to them.
var collectors = []prometheus.Collector{
	requestDuration, upstreamErrors, dials, handshakes, healthcheckFailures,
	failovers, hedges, connQueries, resends, badAnswers, certExpiry, maxConcurrentRejects, liveUpstreams,
	pinReportOnlyMismatches, privateAnswers,
}

func init() { prometheus.MustRegister(collectors...) }

// perUpstream returns the labels of a per-upstream series: the block's, to,
// then more.
func perUpstream(more ...string) []string {
	return append([]string{"server", "zones", "view", "to"}, more...)
}

// live reports, at each scrape, the connections and queries in flight of
// every upstream of every running dotstub, its health and its learned query
// limit, read from the state itself: without a cost per query, and never out
// of step with it.
type live struct {
	descs   [4]*prometheus.Desc // conns, inflight, upstream_healthy, conn_query_limit
	mu      sync.Mutex
	running map[*Dotstub]struct{}
}

var liveUpstreams = &live{
	descs: [4]*prometheus.Desc{
		prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "conns"),
			"Gauge of open, verified connections to each upstream.", perUpstream(), nil),
		prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "inflight"),
			"Gauge of the queries in flight to each upstream.", perUpstream(), nil),
		prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "upstream_healthy"),
			"Gauge of each upstream's health: 1 when it takes queries, 0 while it is marked down after max_fails failures.", perUpstream(), nil),
		prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "conn_query_limit"),
			"Gauge of the queries the upstream answers per connection before it closes it, as learned; absent until learned.", perUpstream(), nil),
	},
	running: map[*Dotstub]struct{}{},
}

func (c *live) add(d *Dotstub) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.running[d] = struct{}{}
}

// remove forgets d, whose upstreams have stopped, ends the reports of its
// series, and drops the expiry gauges that no running dotstub reports any
// more, so that an upstream a reload took out does not stay "expiring" on
// dashboards and alerts.
func (c *live) remove(d *Dotstub) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.running, d)
	for _, u := range d.upstreams {
		lv := d.series[u].stop()
		if lv != nil && !c.reportedLocked(lv) {
			certExpiry.DeleteLabelValues(lv...)
		}
	}
}

func (c *live) reportedLocked(lv []string) bool {
	for d := range c.running {
		for _, s := range d.series {
			if ch := s.m.Load(); ch != nil && slices.Equal(ch.labels, lv) {
				return true
			}
		}
	}
	return false
}

// Describe implements prometheus.Collector.
func (c *live) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// liveKey is the labels of a series of live.
type liveKey struct{ server, zones, view, to string }

// liveFigures are what live reports under one liveKey.
type liveFigures struct {
	conns, inflight, limit int
	down                   bool
}

// Collect implements prometheus.Collector. During a reload the old and the
// new instance of a block run side by side: their connections and queries in
// flight add up under one label set, it is healthy when healthy in both, and
// the lower of their learned limits is reported.
func (c *live) Collect(ch chan<- prometheus.Metric) {
	figures := map[liveKey]*liveFigures{}
	c.mu.Lock()
	for d := range c.running {
		for _, u := range d.upstreams {
			lv := d.series[u].m.Load()
			if lv == nil {
				continue
			}
			k := liveKey{lv.labels[0], lv.labels[1], lv.labels[2], lv.labels[3]}
			f := figures[k]
			if f == nil {
				f = &liveFigures{}
				figures[k] = f
			}
			s := u.Stats()
			f.conns += s.Conns
			f.inflight += s.Inflight
			f.down = f.down || u.Down()
			if s.QueryLimit > 0 && (f.limit == 0 || s.QueryLimit < f.limit) {
				f.limit = s.QueryLimit
			}
		}
	}
	c.mu.Unlock()
	for k, f := range figures {
		lv := []string{k.server, k.zones, k.view, k.to}
		healthy := 1.0
		if f.down {
			healthy = 0
		}
		ch <- prometheus.MustNewConstMetric(c.descs[0], prometheus.GaugeValue, float64(f.conns), lv...)
		ch <- prometheus.MustNewConstMetric(c.descs[1], prometheus.GaugeValue, float64(f.inflight), lv...)
		ch <- prometheus.MustNewConstMetric(c.descs[2], prometheus.GaugeValue, healthy, lv...)
		if f.limit > 0 {
			ch <- prometheus.MustNewConstMetric(c.descs[3], prometheus.GaugeValue, float64(f.limit), lv...)
		}
	}
}
