package dotstub

import (
	"crypto/tls"
	"errors"
	"sync"
	"time"

	clog "github.com/coredns/coredns/plugin/pkg/log"

	"github.com/dotstub/dotstub/plugin/dot"
	"github.com/dotstub/dotstub/plugin/pin"
	"github.com/dotstub/dotstub/plugin/upstream"
)

// What the plugin logs, and the observers that turn what happens to the
// upstreams and their pools into metrics (metrics.go) and log lines.

var log = clog.NewWithPlugin(pluginName)

// logEvery bounds how often the same dial failure of one upstream is logged.
const logEvery = time.Minute

// expiryWarning is how long before its certificate expires an upstream is
// logged, once.
const expiryWarning = 14 * 24 * time.Hour

// poolEvents turns the events of an upstream's pool into s's metrics and log
// lines. A dial failure is logged when its reason differs from the last one
// logged, and otherwise at most once per logEvery; a recovery is logged once.
func poolEvents(s *series) dot.Events {
	to := s.to
	var (
		mu        sync.Mutex // guards the fields below
		last      string     // reason last logged; "" when healthy
		lastLog   time.Time
		warned    time.Time // the expiry last warned of
		untrusted time.Time // when a connection closed for bad answers was last logged
		spread    sync.Once
	)
	return dot.Events{
		Dialed: func(err error, st *tls.ConnectionState) {
			reason := upstream.Reason(err)
			var expires time.Time
			if err == nil && len(st.PeerCertificates) > 0 {
				expires = st.PeerCertificates[0].NotAfter
			}
			if c := s.m.Load(); c != nil {
				c.dials.WithLabelValues(reason).Inc()
				switch {
				case err != nil:
				case st.DidResume:
					c.resumed.Inc()
				default:
					c.fresh.Inc()
				}
				if !expires.IsZero() {
					c.certExpiry.WithLabelValues().Set(float64(expires.Unix()))
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
			if c := s.m.Load(); c != nil {
				c.connAnswers.Observe(float64(answered))
			}
		},
		Resent: func() {
			if c := s.m.Load(); c != nil {
				c.resends.Inc()
			}
		},
		Bad: func(reason dot.BadReason) {
			if c := s.m.Load(); c != nil {
				c.bad.WithLabelValues(string(reason)).Inc()
			}
		},
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
		Spread: func(conns int) {
			spread.Do(func() {
				log.Infof("Upstream %s: answers the queries of a connection one at a time; spreading them over up to %d connections when they queue", to, conns)
			})
		},
	}
}

// maxLoggedLeaves bounds the leaf pins remembered per upstream by
// pinMismatchReported.
const maxLoggedLeaves = 16

// pinMismatchReported counts in s the handshakes whose verified chain matched
// no pin, let through by pin_report_only, and logs each leaf pin once with
// logf: a server key that every reconnect meets is one line, not one per
// connection, and a new key (a rotation) is a new line.
func pinMismatchReported(s *series, logf func(format string, args ...any)) func(error) {
	to := s.to
	var (
		mu     sync.Mutex // guards logged
		logged = map[pin.Pin]bool{}
	)
	return func(err error) {
		if c := s.m.Load(); c != nil {
			c.pinMismatches.Inc()
		}
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
