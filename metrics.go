package dotstub

import (
	"errors"
	"sync"

	"github.com/coredns/coredns/plugin"
	_ "github.com/coredns/coredns/plugin/pkg/proxy" // registers coredns_proxy_*, which dotstub shares (see shared)
	"github.com/prometheus/client_golang/prometheus"
)

// Every metric of the plugin. Labels: server (the CoreDNS server block), to
// (an upstream as configured), rcode, result and reason (the closed set of
// upstream.Reason).
var (
	requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "request_duration_seconds",
		Buckets:   plugin.TimeBuckets,
		Help:      "Histogram of the time each answered upstream exchange took, by answer rcode.",
	}, []string{"server", "to", "rcode"})

	upstreamErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "upstream_errors_total",
		Help:      "Counter of upstream exchanges that brought no usable answer, by reason.",
	}, []string{"to", "reason"})

	dials = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "dials_total",
		Help:      "Counter of connection attempts (TCP connect and TLS handshake), by result.",
	}, []string{"to", "result"})

	handshakes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "handshakes_total",
		Help:      "Counter of completed TLS handshakes, by whether they resumed a session.",
	}, []string{"to", "resumed"})

	conns = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "conns",
		Help:      "Gauge of open, verified connections to each upstream.",
	}, []string{"to"})

	healthcheckFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "healthcheck_failures_total",
		Help:      "Counter of failed health-check probes.",
	}, []string{"to"})

	failovers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "failovers_total",
		Help:      "Counter of queries that the upstream did not answer (or answered with a failover RCODE), so that the next one was asked.",
	}, []string{"to"})

	hedges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "hedges_total",
		Help:      "Counter of hedged queries sent to the upstream, by outcome: won (its answer was used) or lost.",
	}, []string{"to", "outcome"})

	connQueries = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "conn_answers",
		Buckets:   []float64{0, 1, 10, 100, 1000, 10000, 100000, 1000000},
		Help:      "Histogram of the answers each upstream connection carried, observed when it closes.",
	}, []string{"to"})

	resends = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "resends_total",
		Help:      "Counter of queries sent again to the same upstream after the connection carrying them died or brought a bad answer.",
	}, []string{"to"})

	badAnswers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "bad_answers_total",
		Help:      "Counter of answers from the upstream dropped as bad, by reason: malformed, wrong_id or wrong_question.",
	}, []string{"to", "reason"})

	certExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "cert_expiry_timestamp_seconds",
		Help:      "Gauge of when the certificate the upstream presented at its last handshake expires, in seconds since the Unix epoch.",
	}, []string{"to"})

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
	}, []string{"to"})
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
	requestDuration, upstreamErrors, dials, handshakes, conns, healthcheckFailures,
	failovers, hedges, connQueries, resends, badAnswers, certExpiry, maxConcurrentRejects, liveUpstreams,
	pinReportOnlyMismatches, privateAnswers,
}

func init() { prometheus.MustRegister(collectors...) }

// live reports, at each scrape, the queries in flight on every upstream
// of every running dotstub, its health and its learned query limit, read from
// the state itself: without a cost per query, and never out of step with it.
type live struct {
	desc        *prometheus.Desc
	healthyDesc *prometheus.Desc
	limitDesc   *prometheus.Desc
	mu          sync.Mutex
	running     map[*Dotstub]struct{}
}

var liveUpstreams = &live{
	desc: prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "inflight"),
		"Gauge of the queries in flight to each upstream.", []string{"to"}, nil),
	healthyDesc: prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "upstream_healthy"),
		"Gauge of each upstream's health: 1 when it takes queries, 0 while it is marked down after max_fails failures.", []string{"to"}, nil),
	limitDesc: prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "conn_query_limit"),
		"Gauge of the queries the upstream answers per connection before it closes it, as learned; absent until learned.", []string{"to"}, nil),
	running: map[*Dotstub]struct{}{},
}

func (c *live) add(d *Dotstub) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.running[d] = struct{}{}
}

// remove forgets d and drops the gauges of its upstreams that no running
// dotstub names any more, so that an upstream a reload took out does not stay
// "down" or "expiring" on dashboards and alerts.
func (c *live) remove(d *Dotstub) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.running, d)
	for _, u := range d.upstreams {
		if !c.namedLocked(u.Name()) {
			certExpiry.DeleteLabelValues(u.Name())
		}
	}
}

func (c *live) namedLocked(to string) bool {
	for d := range c.running {
		for _, u := range d.upstreams {
			if u.Name() == to {
				return true
			}
		}
	}
	return false
}

// Describe implements prometheus.Collector.
func (c *live) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	ch <- c.healthyDesc
	ch <- c.limitDesc
}

// Collect implements prometheus.Collector. Two stanzas may name the same
// upstream: their queries in flight add up under one label, it is healthy
// when healthy in both, and the lower of their learned limits is reported.
func (c *live) Collect(ch chan<- prometheus.Metric) {
	sum, limit, healthy := map[string]int{}, map[string]int{}, map[string]bool{}
	c.mu.Lock()
	for d := range c.running {
		for _, u := range d.upstreams {
			s := u.Stats()
			sum[u.Name()] += s.Inflight
			if h, ok := healthy[u.Name()]; !ok || h {
				healthy[u.Name()] = !u.Down()
			}
			if l, ok := limit[u.Name()]; s.QueryLimit > 0 && (!ok || s.QueryLimit < l) {
				limit[u.Name()] = s.QueryLimit
			}
		}
	}
	c.mu.Unlock()
	for to, n := range sum {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), to)
	}
	for to, n := range limit {
		ch <- prometheus.MustNewConstMetric(c.limitDesc, prometheus.GaugeValue, float64(n), to)
	}
	for to, h := range healthy {
		v := 0.0
		if h {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.healthyDesc, prometheus.GaugeValue, v, to)
	}
}
