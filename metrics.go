package dotstub

import (
	"crypto/tls"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	_ "github.com/coredns/coredns/plugin/pkg/proxy" // registers coredns_proxy_*, which dotstub shares (see shared)
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dotstub/dotstub/plugin/dot"
	"github.com/dotstub/dotstub/plugin/pin"
	"github.com/dotstub/dotstub/plugin/upstream"
)

var log = clog.NewWithPlugin(pluginName)

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
	failovers, hedges, connQueries, resends, badAnswers, certExpiry, maxConcurrentRejects, inflightCollector,
	pinReportOnlyMismatches, privateAnswers,
}

func init() { prometheus.MustRegister(collectors...) }

// logEvery bounds how often the same dial failure of one upstream is logged.
const logEvery = time.Minute

// expiryWarning is how long before its certificate expires an upstream is
// logged, once.
const expiryWarning = 14 * 24 * time.Hour

// poolEvents turns the events of to's pool into metrics and log lines. A dial
// failure is logged when its reason differs from the last one logged, and
// otherwise at most once per logEvery; a recovery is logged once.
func poolEvents(to string) dot.Events {
	var (
		mu        sync.Mutex // guards the fields below
		last      string     // reason last logged; "" when healthy
		lastLog   time.Time
		warned    time.Time // the expiry last warned of
		untrusted time.Time // when a connection closed for bad answers was last logged
	)
	return dot.Events{
		Dialed: func(err error, st *tls.ConnectionState) {
			reason := upstream.Reason(err)
			dials.WithLabelValues(to, reason).Inc()
			var expires time.Time
			if err == nil {
				conns.WithLabelValues(to).Inc()
				handshakes.WithLabelValues(to, strconv.FormatBool(st.DidResume)).Inc()
				if len(st.PeerCertificates) > 0 {
					expires = st.PeerCertificates[0].NotAfter
					certExpiry.WithLabelValues(to).Set(float64(expires.Unix()))
				}
			}
			mu.Lock()
			defer mu.Unlock()
			now := time.Now()
			if !expires.IsZero() && expires.Sub(now) < expiryWarning && !expires.Equal(warned) {
				log.Warningf("Upstream %s: its certificate expires on %s", to, expires.UTC().Format(time.RFC3339))
				warned = expires
			}
			switch {
			case err == nil && last != "":
				log.Infof("Upstream %s: connected again", to)
				last = ""
			case err != nil && (reason != last || now.Sub(lastLog) >= logEvery):
				log.Errorf("Upstream %s: connection failed (%s): %v", to, reason, err)
				last, lastLog = reason, now
			}
		},
		Closed: func(_ error, answered int) {
			conns.WithLabelValues(to).Dec()
			connQueries.WithLabelValues(to).Observe(float64(answered))
		},
		Resent: func() { resends.WithLabelValues(to).Inc() },
		Bad:    func(reason dot.BadReason) { badAnswers.WithLabelValues(to, string(reason)).Inc() },
		Untrusted: func() {
			mu.Lock()
			defer mu.Unlock()
			if now := time.Now(); now.Sub(untrusted) >= logEvery {
				log.Warningf("Upstream %s: most answers on a connection were bad (see %s); connection closed", to,
					"coredns_dotstub_bad_answers_total")
				untrusted = now
			}
		},
		Serial: func(on bool, why string) {
			if on {
				log.Warningf("Upstream %s: does not handle pipelined queries (%s); sending one query per connection for five minutes", to, why)
			} else {
				log.Infof("Upstream %s: trying pipelined queries again", to)
			}
		},
		Limit: func(n int) {
			log.Infof("Upstream %s: closes each connection after %d queries; sending at most %d on each", to, n, n)
		},
	}
}

// maxLoggedLeaves bounds the leaf pins remembered per upstream by
// pinMismatchReported.
const maxLoggedLeaves = 16

// pinMismatchReported counts the handshakes of to whose verified chain matched
// no pin, let through by pin_report_only, and logs each leaf pin once with
// logf: a server key that every reconnect meets is one line, not one per
// connection, and a new key (a rotation) is a new line.
func pinMismatchReported(to string, logf func(format string, args ...any)) func(error) {
	var (
		mu     sync.Mutex // guards logged
		logged = map[pin.Pin]bool{}
	)
	return func(err error) {
		pinReportOnlyMismatches.WithLabelValues(to).Inc()
		var leaf pin.Pin
		if me := (*pin.MismatchError)(nil); errors.As(err, &me) {
			leaf = me.Leaf
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case logged[leaf] || len(logged) > maxLoggedLeaves:
		case len(logged) == maxLoggedLeaves:
			logged[leaf] = true // len > maxLoggedLeaves: logs no more
			logf("Upstream %s: %d leaf keys matched no pin; further ones are counted in %s, not logged (pin_report_only)",
				to, maxLoggedLeaves, "coredns_dotstub_pin_report_only_mismatches_total")
		default:
			logged[leaf] = true
			logf("Upstream %s: %v; connection used anyway (pin_report_only)", to, err)
		}
	}
}

// probed counts failed health probes of to, at addr.
func probed(to, addr string) func(error) {
	return func(err error) {
		if err != nil {
			healthcheckFailures.WithLabelValues(to).Inc()
			proxyHealthcheckFailures.WithLabelValues(pluginName, addr).Inc()
		}
	}
}

// changed logs to being marked down, with the failure that did it, and up
// again, once each. The health gauge reads the state itself, at each scrape
// (see live).
func changed(to string) func(bool, error) {
	return func(down bool, cause error) {
		if down {
			log.Warningf("Upstream %s: marked down (%s): %v; other upstreams take its queries while it is probed", to, upstream.Reason(cause), cause)
			return
		}
		log.Infof("Upstream %s: up again", to)
	}
}

// inflight reports, at each scrape, the queries in flight on every upstream
// of every running dotstub, its health and its learned query limit, read from
// the state itself: without a cost per query, and never out of step with it.
type inflight struct {
	desc        *prometheus.Desc
	healthyDesc *prometheus.Desc
	limitDesc   *prometheus.Desc
	mu          sync.Mutex
	live        map[*Dotstub]struct{}
}

var inflightCollector = &inflight{
	desc: prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "inflight"),
		"Gauge of the queries in flight to each upstream.", []string{"to"}, nil),
	healthyDesc: prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "upstream_healthy"),
		"Gauge of each upstream's health: 1 when it takes queries, 0 while it is marked down after max_fails failures.", []string{"to"}, nil),
	limitDesc: prometheus.NewDesc(prometheus.BuildFQName(plugin.Namespace, pluginName, "conn_query_limit"),
		"Gauge of the queries the upstream answers per connection before it closes it, as learned; absent until learned.", []string{"to"}, nil),
	live: map[*Dotstub]struct{}{},
}

func (c *inflight) add(d *Dotstub) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.live[d] = struct{}{}
}

// remove forgets d and drops the gauges of its upstreams that no running
// dotstub names any more, so that an upstream a reload took out does not stay
// "down" or "expiring" on dashboards and alerts.
func (c *inflight) remove(d *Dotstub) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.live, d)
	for _, u := range d.upstreams {
		if !c.namedLocked(u.Name()) {
			certExpiry.DeleteLabelValues(u.Name())
		}
	}
}

func (c *inflight) namedLocked(to string) bool {
	for d := range c.live {
		for _, u := range d.upstreams {
			if u.Name() == to {
				return true
			}
		}
	}
	return false
}

// Describe implements prometheus.Collector.
func (c *inflight) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	ch <- c.healthyDesc
	ch <- c.limitDesc
}

// Collect implements prometheus.Collector. Two stanzas may name the same
// upstream: their queries in flight add up under one label, it is healthy
// when healthy in both, and the lower of their learned limits is reported.
func (c *inflight) Collect(ch chan<- prometheus.Metric) {
	sum, limit, healthy := map[string]int{}, map[string]int{}, map[string]bool{}
	c.mu.Lock()
	for d := range c.live {
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
