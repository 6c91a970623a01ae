package dotstub

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/coredns/coredns/plugin/metadata"
	"github.com/coredns/coredns/plugin/pkg/dnstest"
	"github.com/coredns/coredns/plugin/test"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// TestREADMEMetrics holds README's Metrics section to the code, one for one:
// every name and its labels.
func TestREADMEMetrics(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme)
	section = section[strings.Index(section, "## Metrics"):]
	section = section[:strings.Index(section[1:], "\n## ")+1]
	var documented []string
	for _, m := range regexp.MustCompile("(?m)^\\* `(coredns_dotstub_[a-z_]+)(?:\\{([a-z_, ]*)\\})?`").FindAllStringSubmatch(section, -1) {
		documented = append(documented, m[1]+"{"+strings.ReplaceAll(m[2], " ", "")+"}")
	}
	var code []string
	for _, c := range collectors {
		ch := make(chan *prometheus.Desc, 10)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			// Desc has no accessors; its String is stable:
			// Desc{fqName: "...", help: "...", constLabels: {}, variableLabels: {a,b}}
			m := regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`).FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot read %s", d)
			}
			code = append(code, m[1]+"{"+m[2]+"}")
		}
	}
	slices.Sort(documented)
	slices.Sort(code)
	if !slices.Equal(documented, code) {
		t.Errorf("README documents\n%s\nthe code has\n%s", strings.Join(documented, "\n"), strings.Join(code, "\n"))
	}
}

func TestReady(t *testing.T) {
	good := dottest.New(t, dottest.Options{})
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(good), caFile(t, good)))
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	if _, _, err := serve(t, d, false, m); err != nil {
		t.Fatal(err)
	}
	if !d.Ready() {
		t.Error("not ready after an answer over a verified connection")
	}

	other := dottest.New(t, dottest.Options{}) // its own CA: fails validation
	bad := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(other), caFile(t, good)))
	serve(t, bad, false, m)
	if bad.Ready() {
		t.Error("ready with its only upstream failing validation")
	}
}

// TestGaugesGoWithTheirUpstream: an upstream that a reload takes out leaves
// no health or expiry series behind to alert on.
func TestGaugesGoWithTheirUpstream(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(srv), caFile(t, srv)))
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	if _, _, err := serve(t, d, false, m); err != nil {
		t.Fatal(err)
	}
	series := func() (n int) {
		mfs, err := prometheus.DefaultGatherer.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "coredns_dotstub_upstream_healthy" && mf.GetName() != "coredns_dotstub_cert_expiry_timestamp_seconds" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "to" && l.GetValue() == upstreamFor(srv) {
						n++
					}
				}
			}
		}
		return n
	}
	if n := series(); n != 2 {
		t.Fatalf("%d series for the upstream while it runs, want 2 (health, expiry)", n)
	}
	d.OnShutdown()
	if n := series(); n != 0 {
		t.Errorf("%d series left for the upstream after shutdown", n)
	}
}

// counter returns the value of the counter name whose labels hold values, in
// the default registry; 0 if there is none yet.
func counter(t *testing.T, name string, values ...string) float64 {
	t.Helper()
	return seriesOf(t, name, values...).GetCounter().GetValue()
}

// seriesOf returns the series of name whose labels hold values, in the default
// registry; nil if there is none.
func seriesOf(t *testing.T, name string, values ...string) *dto.Metric {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, v := range values {
				found := false
				for _, l := range m.GetLabel() {
					found = found || l.GetValue() == v
				}
				if !found {
					continue next
				}
			}
			return m
		}
	}
	return nil
}

// TestForwardNames: what forward records under coredns_proxy_* and in the
// forward/upstream metadata, dotstub records too, so that CoreDNS's own
// dashboards, alerts and log templates keep working.
func TestForwardNames(t *testing.T) {
	good := dottest.New(t, dottest.Options{})
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(good), caFile(t, good)))
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	ctx := metadata.ContextWithMetadata(context.Background())
	rec := dnstest.NewRecorder(&test.ResponseWriter{})
	before := sampleCount(t, "coredns_proxy_request_duration_seconds", "dotstub", good.Addr, "NOERROR") // an earlier test's upstream may have had the port
	if rcode, err := d.ServeDNS(ctx, rec, m); err != nil || rcode != dns.RcodeSuccess {
		t.Fatalf("ServeDNS = %d, %v", rcode, err)
	}
	if f := metadata.ValueFunc(ctx, "dotstub/upstream"); f == nil || f() != good.Addr {
		t.Errorf("metadata dotstub/upstream is not %s", good.Addr)
	}
	if n := sampleCount(t, "coredns_proxy_request_duration_seconds", "dotstub", good.Addr, "NOERROR") - before; n != 1 {
		t.Errorf("coredns_proxy_request_duration_seconds{proxy_name=dotstub,to=%s,rcode=NOERROR} rose by %d, want 1", good.Addr, n)
	}

	other := dottest.New(t, dottest.Options{}) // its own CA: its probes fail
	bad := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(other), caFile(t, good)))
	failed := counter(t, "coredns_proxy_healthcheck_failures_total", "dotstub", other.Addr)
	if bad.upstreams[0].Probe() == nil {
		t.Fatal("a probe of an upstream that fails validation succeeded")
	}
	if n := counter(t, "coredns_proxy_healthcheck_failures_total", "dotstub", other.Addr) - failed; n != 1 {
		t.Errorf("coredns_proxy_healthcheck_failures_total rose by %v, want 1", n)
	}
}

// sampleCount returns the sample count of the histogram name whose labels
// hold values, in the default registry; 0 if there is none.
func sampleCount(t *testing.T, name string, values ...string) uint64 {
	t.Helper()
	return seriesOf(t, name, values...).GetHistogram().GetSampleCount()
}

// TestNoExpiryBeforeAHandshake: an upstream that never completed a handshake
// (here it fails validation) has no certificate expiry series, which would
// read 0, the epoch, and page as a certificate long expired.
func TestNoExpiryBeforeAHandshake(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	other := dottest.New(t, dottest.Options{}) // its own CA: srv fails validation against it
	d := newDotstub(t, fmt.Sprintf("dotstub . %s {\n tls %s\n}", upstreamFor(srv), caFile(t, other)))
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	serve(t, d, false, m)
	if s := seriesOf(t, "coredns_dotstub_cert_expiry_timestamp_seconds", upstreamFor(srv)); s != nil {
		t.Errorf("an upstream with no handshake has an expiry series: %v", s)
	}
	if s := seriesOf(t, "coredns_dotstub_dials_total", upstreamFor(srv), "verify_failed"); s == nil {
		t.Error("no failed dial counted: the test did not dial")
	}
}
