package dotstub

import (
	"strconv"
	"sync"
	"time"

	"github.com/coredns/coredns/plugin"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/dotstub/dotstub/plugin/dot"
	"github.com/dotstub/dotstub/plugin/upstream"
)

var log = clog.NewWithPlugin(pluginName)

// Every metric of the plugin. Labels: server (the CoreDNS server block), to
// (an upstream as configured), rcode, result and reason (the closed set of
// upstream.Reason).
var (
	requestDuration = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "request_duration_seconds",
		Buckets:   plugin.TimeBuckets,
		Help:      "Histogram of the time each answered upstream exchange took, by answer rcode.",
	}, []string{"server", "to", "rcode"})

	upstreamErrors = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "upstream_errors_total",
		Help:      "Counter of upstream exchanges that brought no usable answer, by reason.",
	}, []string{"to", "reason"})

	dials = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "dials_total",
		Help:      "Counter of connection attempts (TCP connect and TLS handshake), by result.",
	}, []string{"to", "result"})

	handshakes = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "handshakes_total",
		Help:      "Counter of completed TLS handshakes, by whether they resumed a session.",
	}, []string{"to", "resumed"})

	conns = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "conns",
		Help:      "Gauge of open, verified connections to each upstream.",
	}, []string{"to"})

	healthcheckFailures = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "healthcheck_failures_total",
		Help:      "Counter of failed health-check probes.",
	}, []string{"to"})

	healthy = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "upstream_healthy",
		Help:      "Gauge of each upstream's health: 1 when it takes queries, 0 while it is marked down after max_fails failures.",
	}, []string{"to"})

	failovers = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "failovers_total",
		Help:      "Counter of queries that the upstream did not answer (or answered with a failover RCODE), so that the next one was asked.",
	}, []string{"to"})

	hedges = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "hedges_total",
		Help:      "Counter of hedged queries sent to the upstream, by outcome: won (its answer was used) or lost.",
	}, []string{"to", "outcome"})

	maxConcurrentRejects = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: pluginName,
		Name:      "max_concurrent_rejects_total",
		Help:      "Counter of queries answered REFUSED because max_concurrent queries were in flight.",
	})
)

// logEvery bounds how often the same dial failure of one upstream is logged.
const logEvery = time.Minute

// poolEvents turns the events of to's pool into metrics and log lines. A dial
// failure is logged when its reason differs from the last one logged, and
// otherwise at most once per logEvery; a recovery is logged once.
func poolEvents(to string) dot.Events {
	var (
		mu      sync.Mutex // guards the fields below
		last    string     // reason last logged; "" when healthy
		lastLog time.Time
	)
	return dot.Events{
		Dialed: func(err error, resumed bool) {
			reason := upstream.Reason(err)
			dials.WithLabelValues(to, reason).Inc()
			if err == nil {
				conns.WithLabelValues(to).Inc()
				handshakes.WithLabelValues(to, strconv.FormatBool(resumed)).Inc()
			}
			mu.Lock()
			defer mu.Unlock()
			now := time.Now()
			switch {
			case err == nil && last != "":
				log.Infof("Upstream %s: connected again", to)
				last = ""
			case err != nil && (reason != last || now.Sub(lastLog) >= logEvery):
				log.Errorf("Upstream %s: connection failed (%s): %v", to, reason, err)
				last, lastLog = reason, now
			}
		},
		Closed: func(error) { conns.WithLabelValues(to).Dec() },
		Serial: func(on bool) {
			if on {
				log.Warningf("Upstream %s: does not handle pipelined queries (it closes connections that carry several, or works on one at a time); sending one query per connection for five minutes", to)
			} else {
				log.Infof("Upstream %s: trying pipelined queries again", to)
			}
		},
	}
}

// probed counts failed health probes of to.
func probed(to string) func(error) {
	return func(err error) {
		if err != nil {
			healthcheckFailures.WithLabelValues(to).Inc()
		}
	}
}

// changed logs to being marked down, with the failure that did it, and up
// again, once each, and keeps its health gauge.
func changed(to string) func(bool, error) {
	healthy.WithLabelValues(to).Set(1)
	return func(down bool, cause error) {
		if down {
			healthy.WithLabelValues(to).Set(0)
			log.Warningf("Upstream %s: marked down (%s): %v; other upstreams take its queries while it is probed", to, upstream.Reason(cause), cause)
			return
		}
		healthy.WithLabelValues(to).Set(1)
		log.Infof("Upstream %s: up again", to)
	}
}
