package dotstub

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

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
