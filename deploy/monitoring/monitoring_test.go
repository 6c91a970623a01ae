// Package monitoring holds the Prometheus alerts and the Grafana dashboard for
// CoreDNS with dotstub; its tests hold them to promtool and to the metrics
// README.md documents.
package monitoring

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const (
	alertsFile    = "alerts.yaml"
	rulesTestFile = "rules_test.yaml"
	dashboardFile = "grafana-dashboard.json"
	readmeFile    = "../../README.md"
	monitoringDoc = "../../docs/monitoring.md"
	dsVariable    = "DS_PROMETHEUS"
)

// otherMetrics are the metrics not of dotstub that the alerts and the
// dashboard may use, with their labels: CoreDNS's (plugin/metrics/vars,
// plugin/cache) and the Go client's process and runtime collectors.
var otherMetrics = map[string][]string{
	"coredns_dns_requests_total":           {"server", "zone", "view", "proto", "family", "type"},
	"coredns_dns_responses_total":          {"server", "zone", "view", "rcode", "plugin"},
	"coredns_dns_request_duration_seconds": {"server", "zone", "view"},
	"coredns_cache_entries":                {"server", "type", "zones", "view"},
	"coredns_cache_requests_total":         {"server", "zones", "view"},
	"coredns_cache_hits_total":             {"server", "type", "zones", "view"},
	"coredns_cache_misses_total":           {"server", "zones", "view"},
	"process_resident_memory_bytes":        nil,
	"process_open_fds":                     nil,
	"process_max_fds":                      nil,
	"process_cpu_seconds_total":            nil,
	"go_goroutines":                        nil,
}

// targetLabels are added by Prometheus to every scraped series: job and
// instance always, cluster where the scrape configuration adds it, as
// multi-cluster setups do (where it does not, the dashboard's cluster
// variable is empty and matches every series).
var targetLabels = []string{"job", "instance", "cluster"}

// promtool returns promtool's path. Without it the test is skipped, except in
// CI, where `make test` installs it.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "" {
		t.Skip("promtool not found (Debian package prometheus; make test installs it)")
	}
	t.Fatalf("CI: promtool not found: %v", err)
	return ""
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
}

func TestPromtoolCheckRules(t *testing.T) {
	run(t, promtool(t), "check", "rules", alertsFile)
}

func TestPromtoolTestRules(t *testing.T) {
	run(t, promtool(t), "test", "rules", rulesTestFile)
}

// TestDashboardQueriesParse has promtool parse every query of the dashboard,
// as recording rules, with Grafana's variables replaced.
func TestDashboardQueriesParse(t *testing.T) {
	p := promtool(t)
	d := readDashboard(t)
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for _, q := range d.queries() {
		expr, err := json.Marshal(grafanaVars(q.expr, ".*")) // a JSON string is a YAML string
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "      - record: dashboard:%s\n        expr: %s\n", q.recordName(), expr)
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, p, "check", "rules", f)
}

// TestMetricNames holds every metric and label that the alerts and the
// dashboard use to README's Metrics section and to otherMetrics.
func TestMetricNames(t *testing.T) {
	known := readmeMetrics(t)
	if len(known) == 0 {
		t.Fatal("no coredns_dotstub_ metric found in README's Metrics section")
	}
	for name, labels := range otherMetrics {
		known[name] = labels
	}
	check := func(where, expr string) {
		t.Helper()
		if err := checkExpr(expr, known); err != nil {
			t.Errorf("%s: %v\n%s", where, err, expr)
		}
	}
	for _, r := range readAlerts(t) {
		check(alertsFile+" "+r.Alert, r.Expr)
	}
	d := readDashboard(t)
	for _, q := range d.queries() {
		check(fmt.Sprintf("%s panel %q target %s", dashboardFile, q.panel, q.refID), q.expr)
	}
	labelValues := regexp.MustCompile(`^\s*label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("%s variable %s: want label_values(SELECTOR, LABEL), have %q", dashboardFile, v.Name, v.Definition)
			continue
		}
		check(dashboardFile+" variable "+v.Name, fmt.Sprintf("count by (%s) (%s)", m[2], m[1]))
	}
}

func TestAlerts(t *testing.T) {
	rules := readAlerts(t)
	if len(rules) == 0 {
		t.Fatal("no alerts")
	}
	seen := map[string]bool{}
	for _, r := range rules {
		if seen[r.Alert] {
			t.Errorf("alert %s defined twice", r.Alert)
		}
		seen[r.Alert] = true
		if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
			t.Errorf("alert %s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
		}
		for _, a := range []string{"summary", "description"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("alert %s: no %s annotation", r.Alert, a)
			}
		}
	}
}

// TestEveryAlertTested asserts that rules_test.yaml evaluates every alert at
// least once where it fires and once where it does not.
func TestEveryAlertTested(t *testing.T) {
	b, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string
				ExpAlerts []any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		}
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.RuleFiles, []string{alertsFile}) {
		t.Errorf("%s: rule_files %q, want [%s]", rulesTestFile, f.RuleFiles, alertsFile)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range f.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for _, r := range readAlerts(t) {
		if !fires[r.Alert] {
			t.Errorf("%s: no test where %s fires", rulesTestFile, r.Alert)
		}
		if !quiet[r.Alert] {
			t.Errorf("%s: no test where %s does not fire", rulesTestFile, r.Alert)
		}
	}
}

func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	ds := datasource{Type: "prometheus", UID: "${" + dsVariable + "}"}

	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Name == dsVariable && v.Query != "prometheus" {
			t.Errorf("variable %s: query %v, want prometheus", dsVariable, v.Query)
		}
		if v.Type == "query" && (v.Datasource == nil || *v.Datasource != ds) {
			t.Errorf("variable %s: datasource %v, want %v", v.Name, v.Datasource, ds)
		}
	}
	for name, typ := range map[string]string{dsVariable: "datasource", "instance": "query", "to": "query"} {
		if vars[name] != typ {
			t.Errorf("variable %s: type %q, want %q", name, vars[name], typ)
		}
	}

	ids, titles := map[int]bool{}, map[string]bool{}
	var boxes []panel
	for _, p := range d.all() {
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q: id %d is zero or not unique", p.Title, p.ID)
		}
		ids[p.ID] = true
		if titles[p.Title] || p.Title == "" {
			t.Errorf("panel title %q is empty or not unique", p.Title)
		}
		titles[p.Title] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v out of the 24-column grid", p.Title, g)
		}
		for _, o := range boxes {
			h := o.GridPos
			if g.X < h.X+h.W && h.X < g.X+g.W && g.Y < h.Y+h.H && h.Y < g.Y+g.H {
				t.Errorf("panels %q and %q overlap", o.Title, p.Title)
			}
		}
		boxes = append(boxes, p)
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || *p.Datasource != ds {
			t.Errorf("panel %q: datasource %v, want %v", p.Title, p.Datasource, ds)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no query", p.Title)
		}
		refs := map[string]bool{}
		for _, q := range p.Targets {
			if q.Datasource != nil && *q.Datasource != ds {
				t.Errorf("panel %q target %s: datasource %v, want %v", p.Title, q.RefID, q.Datasource, ds)
			}
			if q.RefID == "" || refs[q.RefID] {
				t.Errorf("panel %q: refId %q empty or not unique", p.Title, q.RefID)
			}
			refs[q.RefID] = true
			if strings.TrimSpace(q.Expr) == "" {
				t.Errorf("panel %q target %s: no expr", p.Title, q.RefID)
			}
		}
	}
}

// TestMonitoringDoc holds docs/monitoring.md to the alerts, one
// line each, and to the files it points to.
func TestMonitoringDoc(t *testing.T) {
	section := docSection(t, monitoringDoc, "## Monitoring")
	var listed []string
	for _, m := range regexp.MustCompile("(?m)^\\* `([A-Za-z]+)`").FindAllStringSubmatch(section, -1) {
		listed = append(listed, m[1])
	}
	var alerts []string
	for _, r := range readAlerts(t) {
		alerts = append(alerts, r.Alert)
	}
	slices.Sort(listed)
	slices.Sort(alerts)
	if !slices.Equal(listed, alerts) {
		t.Errorf("docs/monitoring.md lists\n%s\nalerts.yaml has\n%s", strings.Join(listed, "\n"), strings.Join(alerts, "\n"))
	}
	for _, f := range []string{alertsFile, rulesTestFile, dashboardFile} {
		if !strings.Contains(section, "deploy/monitoring/"+f) {
			t.Errorf("docs/monitoring.md does not name deploy/monitoring/%s", f)
		}
	}
}

func TestCheckExpr(t *testing.T) {
	known := map[string][]string{
		"coredns_dotstub_dials_total":              {"to", "result"},
		"coredns_dotstub_request_duration_seconds": {"server", "to", "rcode"},
		"go_goroutines":                            nil,
	}
	for _, tc := range []struct {
		name, expr, wantErr string
	}{
		{"plain", `go_goroutines`, ""},
		{"selector", `coredns_dotstub_dials_total{instance=~"$instance", result="ok"}`, ""},
		{"histogram", `histogram_quantile(0.99, sum by (to, le) (rate(coredns_dotstub_request_duration_seconds_bucket{to=~"$to"}[$__rate_interval])))`, ""},
		{"numbers and offset", `go_goroutines offset 5m > 1e3 * 14 * 86400`, ""},
		{"operators", `sum by (job, instance, to) (rate(coredns_dotstub_dials_total[5m])) / on (job, instance) group_left sum by (job, instance) (go_goroutines) unless go_goroutines`, ""},
		{"unknown", `rate(coredns_dotstub_dial_total[5m])`, "unknown metric coredns_dotstub_dial_total"},
		{"not dotstub", `up == 0`, "unknown metric up"},
		{"counter with histogram suffix", `coredns_dotstub_dials_total_count`, "unknown metric coredns_dotstub_dials_total_count"},
		{"label", `coredns_dotstub_dials_total{reason="timeout"}`, "has no label reason"},
		{"le on count", `coredns_dotstub_request_duration_seconds_count{le="1"}`, "has no label le"},
		{"grouping", `sum by (rcode) (rate(coredns_dotstub_dials_total[5m]))`, "grouping by rcode"},
		{"no metric", `vector(1)`, "no metric"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkExpr(tc.expr, known)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("checkExpr(%q): %v", tc.expr, err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("checkExpr(%q) = %v, want an error with %q", tc.expr, err, tc.wantErr)
			}
		})
	}
}

type rule struct {
	Alert       string
	Expr        string
	Labels      map[string]string
	Annotations map[string]string
}

func readAlerts(t *testing.T) []rule {
	t.Helper()
	b, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct{ Rules []rule }
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	var rules []rule
	for _, g := range f.Groups {
		rules = append(rules, g.Rules...)
	}
	return rules
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int
	Type       string
	Title      string
	Datasource *datasource
	GridPos    struct{ X, Y, W, H int }
	Targets    []struct {
		Expr       string
		RefID      string `json:"refId"`
		Datasource *datasource
	}
	Panels []panel // of a collapsed row
}

type dashboard struct {
	Templating struct {
		List []struct {
			Name       string
			Type       string
			Query      any
			Definition string
			Datasource *datasource
		}
	}
	Panels []panel
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// all returns every panel, those of collapsed rows included.
func (d dashboard) all() []panel {
	var ps []panel
	for _, p := range d.Panels {
		ps = append(ps, p)
		ps = append(ps, p.Panels...)
	}
	return ps
}

type query struct {
	panel, refID string
	id           int
	expr         string
}

func (q query) recordName() string { return fmt.Sprintf("panel_%d_%s", q.id, q.refID) }

func (d dashboard) queries() []query {
	var qs []query
	for _, p := range d.all() {
		for _, tg := range p.Targets {
			qs = append(qs, query{panel: p.Title, refID: tg.RefID, id: p.ID, expr: tg.Expr})
		}
	}
	return qs
}

var grafanaVar = regexp.MustCompile(`\$(?:\{(\w+)\}|(\w+))`)

// grafanaVars replaces Grafana's interval variables by durations and the
// dashboard's own variables by other.
func grafanaVars(expr, other string) string {
	return grafanaVar.ReplaceAllStringFunc(expr, func(v string) string {
		switch strings.Trim(v, "${}") {
		case "__rate_interval", "__interval", "__range":
			return "5m"
		}
		return other
	})
}

// docSection returns the section of the Markdown file from heading to the
// next "## ".
func docSection(t *testing.T, file, heading string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("%s has no %q section", file, heading)
	}
	s = s[i+1:]
	if j := strings.Index(s[1:], "\n## "); j >= 0 {
		s = s[:j+1]
	}
	return s
}

// readmeMetrics reads the metrics and labels of README's Metrics section, as
// the root package's TestREADMEMetrics does.
func readmeMetrics(t *testing.T) map[string][]string {
	t.Helper()
	known := map[string][]string{}
	re := regexp.MustCompile("(?m)^\\* `(coredns_dotstub_[a-z_]+)(?:\\{([a-z_, ]*)\\})?`")
	for _, m := range re.FindAllStringSubmatch(docSection(t, readmeFile, "## Metrics"), -1) {
		var labels []string
		if m[2] != "" {
			labels = strings.Split(strings.ReplaceAll(m[2], " ", ""), ",")
		}
		known[m[1]] = labels
	}
	return known
}

var (
	stringLit  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	selector   = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}`)
	matcher    = regexp.MustCompile(`^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*""\s*$`)
	grouping   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	rangeSel   = regexp.MustCompile(`\[[^\]]*\]`)
	identifier = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	keywords   = []string{"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
		"group_right", "offset", "bool", "inf", "nan", "atan2"}
)

// checkExpr finds the metric names and label names of a PromQL expression
// and checks each against known (metric name to labels). A name may carry a
// histogram's suffix (_bucket, with the label le; _count, _sum) if it is not a
// counter. It is a scanner, not a parser: promtool checks the syntax.
func checkExpr(expr string, known map[string][]string) error {
	e := stringLit.ReplaceAllString(grafanaVars(expr, "x"), `""`)
	labelsOf := func(name string) ([]string, bool) {
		if l, ok := known[name]; ok {
			return l, true
		}
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			base, ok := strings.CutSuffix(name, suffix)
			if l, found := known[base]; ok && found && !strings.HasSuffix(base, "_total") {
				if suffix == "_bucket" {
					l = append(slices.Clone(l), "le")
				}
				return l, true
			}
		}
		return nil, false
	}

	var errs []string
	var names []string
	var inExpr []string // every label of every metric in expr
	add := func(name string) bool {
		l, ok := labelsOf(name)
		if !ok {
			errs = append(errs, fmt.Sprintf("unknown metric %s", name))
			return false
		}
		names = append(names, name)
		inExpr = append(inExpr, l...)
		return true
	}

	// Selectors with matchers.
	for _, m := range selector.FindAllStringSubmatch(e, -1) {
		if m[1] == "" {
			errs = append(errs, "selector without a metric name")
			continue
		}
		if !add(m[1]) {
			continue
		}
		l, _ := labelsOf(m[1])
		for _, item := range strings.Split(m[2], ",") {
			if strings.TrimSpace(item) == "" {
				continue
			}
			mm := matcher.FindStringSubmatch(item)
			if mm == nil {
				errs = append(errs, fmt.Sprintf("cannot read matcher %q of %s", item, m[1]))
				continue
			}
			if !slices.Contains(l, mm[1]) && !slices.Contains(targetLabels, mm[1]) {
				errs = append(errs, fmt.Sprintf("%s has no label %s", m[1], mm[1]))
			}
		}
	}
	e = selector.ReplaceAllString(e, " ")
	e = rangeSel.ReplaceAllString(e, " ")
	var grouped []string
	for _, m := range grouping.FindAllStringSubmatch(e, -1) {
		for _, l := range strings.Split(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				grouped = append(grouped, l)
			}
		}
	}
	e = grouping.ReplaceAllString(e, " ")

	// Bare names: identifiers that are neither functions, keywords, nor
	// the unit of a number or duration (5m, 1e3).
	for _, loc := range identifier.FindAllStringIndex(e, -1) {
		name := e[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsRune("0123456789.", rune(e[loc[0]-1])) {
			continue
		}
		if strings.HasPrefix(strings.TrimLeft(e[loc[1]:], " \t\n"), "(") || slices.Contains(keywords, name) {
			continue
		}
		add(name)
	}
	if len(names) == 0 && len(errs) == 0 {
		errs = append(errs, "no metric")
	}
	for _, l := range grouped {
		if len(names) == 0 {
			break
		}
		if !slices.Contains(inExpr, l) && !slices.Contains(targetLabels, l) {
			errs = append(errs, fmt.Sprintf("grouping by %s, a label none of %s has", l, strings.Join(names, ", ")))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}
