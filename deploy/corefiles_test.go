package deploy

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// A corefile is a Corefile to start: where it comes from, its text, the
// files beside it (from the Deployment's ConfigMap, the Corefile included),
// and the Secret files the pod would have mounted, by mount path.
type corefile struct {
	name    string
	text    string
	conf    map[string]string
	secrets map[string]map[string]string
}

// texts are the corefile's Corefile and every file it may import.
func (c corefile) texts() []string {
	out := []string{c.text}
	for _, data := range c.conf {
		out = append(out, data)
	}
	return append(out, secretTexts(c.secrets)...)
}

// fence opens a Corefile code block in README.md: ~~~ corefile or ```corefile.
var fence = regexp.MustCompile("^(~~~|```) ?corefile$")

// readmeCorefiles returns the Corefile code blocks of README.md and of the
// pages of docs/.
func readmeCorefiles(t *testing.T) []corefile {
	t.Helper()
	pages, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	var out []corefile
	for _, page := range append([]string{"../README.md"}, pages...) {
		out = append(out, pageCorefiles(t, page)...)
	}
	if len(out) == 0 {
		t.Fatal("no corefile blocks in README.md")
	}
	return out
}

// pageCorefiles returns the Corefile code blocks of the Markdown file page.
func pageCorefiles(t *testing.T, page string) []corefile {
	t.Helper()
	data, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	var out []corefile
	ls := strings.Split(string(data), "\n")
	for i := 0; i < len(ls); i++ {
		m := fence.FindStringSubmatch(strings.TrimSpace(ls[i]))
		if m == nil {
			continue
		}
		indent := ls[i][:len(ls[i])-len(strings.TrimLeft(ls[i], " "))] // a block in a list item
		start := i + 1
		var text strings.Builder
		for i++; i < len(ls) && strings.TrimSpace(ls[i]) != m[1]; i++ {
			text.WriteString(strings.TrimPrefix(ls[i], indent) + "\n")
		}
		out = append(out, corefile{name: fmt.Sprintf("%s:%d", strings.TrimPrefix(page, "../"), start), text: text.String()})
	}
	return out
}

// isStanza reports whether a Corefile block is a plugin's stanza alone, as
// README.md shows some options: it starts with a directive, not a server
// block. It runs inside a server block for the root zone.
func isStanza(text string) bool {
	for _, l := range lines(text) {
		if len(l.tokens) > 0 {
			return slices.Contains(dnsserver.Directives, l.tokens[0]) || l.tokens[0] == "dotstub"
		}
	}
	return false
}

// allCorefiles returns every Corefile a user is told to run: the Deployments'
// (from their ConfigMaps), any other under deploy/, README.md's, and
// Corefile.example. Each runs with
// the Secret files of the manifests mounted where the Deployments mount them,
// as in a pod.
func allCorefiles(t *testing.T) []corefile {
	t.Helper()
	objs := loadManifests(t)
	secrets := map[string]map[string]string{}
	var out []corefile
	seen := map[string]bool{}
	for _, d := range deployments(t, objs) {
		out = append(out, corefile{name: d.dir + "/" + d.Name, text: d.corefile, conf: d.confFiles})
		seen[d.corefile] = true
		for dir, files := range d.secretFiles() {
			secrets[dir] = files
		}
	}
	// A Corefile no Deployment mounts, in a ConfigMap or a file of its own.
	for _, o := range objs {
		if cm, ok := o.obj.(*corev1.ConfigMap); ok && cm.Data["Corefile"] != "" && !seen[cm.Data["Corefile"]] {
			out = append(out, corefile{name: o.file, text: cm.Data["Corefile"]})
		}
	}
	err := filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if _, err := os.Stat(filepath.Join(p, "kustomization.yaml")); err == nil {
				return filepath.SkipDir // its Corefile is in the ConfigMap it makes, run with its files above
			}
			return nil
		}
		if !strings.HasPrefix(d.Name(), "Corefile") {
			return nil
		}
		data, err := os.ReadFile(p)
		out = append(out, corefile{name: "deploy/" + filepath.ToSlash(p), text: string(data)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range readmeCorefiles(t) {
		if isStanza(c.text) {
			c.text = ". {\n    " + strings.ReplaceAll(strings.TrimSuffix(c.text, "\n"), "\n", "\n    ") + "\n}\n"
		}
		out = append(out, c)
	}
	example, err := os.ReadFile("../Corefile.example")
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, corefile{name: "Corefile.example", text: string(example)})
	for i := range out {
		out[i].secrets = secrets
	}
	return out
}

// TestCorefilesStart starts the real CoreDNS on every Corefile of deploy/, of
// README.md and Corefile.example, localized by a stage (corefile_test.go:
// loopback stand-ins for the upstreams and the Kubernetes API, free ports,
// files where the Corefile expects them), and checks that each serves: a
// name under each dotstub zone is answered by the stand-ins, a cluster name
// by the kubernetes plugin, and ready, health and metrics answer.
func TestCorefilesStart(t *testing.T) {
	bin := buildCoreDNS(t)
	for _, c := range allCorefiles(t) {
		t.Run(c.name, func(t *testing.T) {
			s := newStage(t, c.texts()...)
			p, addr := s.start(t, bin, c)
			s.check(t, p, addr)
		})
	}
}

// TestReadmeShowsTheDeployedCorefiles holds README.md's Kubernetes examples to
// the ConfigMaps: each Deployment's Corefile is a corefile block there, as is.
func TestReadmeShowsTheDeployedCorefiles(t *testing.T) {
	blocks := readmeCorefiles(t)
	for _, d := range deployments(t, loadManifests(t)) {
		found := false
		for _, b := range blocks {
			found = found || expandImports(b.text, "", nil) == d.expanded
		}
		if !found {
			t.Errorf("README.md and docs/ have no corefile block with the Corefile of %s/%s, its files beside it inlined:\n%s", d.dir, d.Name, d.expanded)
		}
	}
}

// TestPinsSecretReload follows README.md's account of a pin change: the
// Secret changes, the kubelet swaps the mounted files, and the reload plugin
// restarts the server with the new pins, in the same process. First the
// Secret as shipped, with its placeholders: that reload fails and the running
// configuration keeps answering. Then valid pins that match no key of the
// upstreams: that reload succeeds, and a name not yet cached gets SERVFAIL.
// The reload interval is cut to 2s (the default is 30s) so the test takes
// seconds.
func TestPinsSecretReload(t *testing.T) {
	bin := buildCoreDNS(t)
	c := deployedCorefile(t, "kubernetes/cluster-dns")
	s := newStage(t, c.texts()...)
	s.reload = "2s 0"
	p, addr := s.start(t, bin, c)
	s.check(t, p, addr)

	from := p.lineCount()
	for dir, files := range c.secrets {
		writeAtomic(t, s.path(dir), files) // placeholders and all
	}
	if _, err := p.waitLine(from, "plugin/reload: Corefile changed but reload failed", 20*time.Second); err != nil {
		t.Fatalf("%v; log:\n%s", err, p.log())
	}
	if a := query(t, addr, "during-bad-reload.example.org.", dns.TypeA); a.Rcode != dns.RcodeSuccess {
		t.Errorf("after a failed reload, got %s, want the running configuration's answer:\n%s", dns.RcodeToString[a.Rcode], a)
	}

	var others []string
	for _, name := range []string{"another leaf", "another CA"} {
		ca, err := dottest.NewCA(name)
		if err != nil {
			t.Fatal(err)
		}
		others = append(others, ca.Pin().String())
	}
	from = p.lineCount()
	for dir, files := range c.secrets {
		changed := map[string]string{}
		for name, data := range files {
			changed[name] = strings.NewReplacer(s.Leaf.Pin().String(), others[0], s.CA.Pin().String(), others[1]).
				Replace(s.secretFile(name, data))
		}
		writeAtomic(t, s.path(dir), changed)
	}
	if _, err := p.waitLine(from, "Reloading complete", 20*time.Second); err != nil {
		t.Fatalf("%v; log:\n%s", err, p.log())
	}
	if a := query(t, addr, "after-reload.example.org.", dns.TypeA); a.Rcode != dns.RcodeServerFailure {
		t.Errorf("after the pins changed, got %s, want SERVFAIL:\n%s", dns.RcodeToString[a.Rcode], a)
	}
}

// TestPinsSecretPrivateCA uncomments the tls_ca line of the Secret's
// pins.conf, as README.md tells a user of a private CA to, with the test CA
// in ca.pem and CoreDNS's system roots knowing nothing of it: the upstreams
// that line selects verify, the others never see a query.
func TestPinsSecretPrivateCA(t *testing.T) {
	bin := buildCoreDNS(t)
	c := deployedCorefile(t, "kubernetes/cluster-dns")
	uncommented := false
	for dir, files := range c.secrets {
		if conf, ok := files["pins.conf"]; ok {
			files = clone(files)
			files["pins.conf"] = strings.Replace(conf, "# tls_ca ", "tls_ca ", 1)
			uncommented = files["pins.conf"] != conf
			files["ca.pem"] = "" // filled in below, once the stage has a CA
			c.secrets = map[string]map[string]string{dir: files}
		}
	}
	if !uncommented {
		t.Fatal("no `# tls_ca` line in the Secret's pins.conf")
	}
	s := newStage(t, c.texts()...)
	for dir, files := range c.secrets {
		files["ca.pem"] = string(s.CA.PEM)
		c.secrets[dir] = files
	}
	unrelated, err := dottest.NewCA("public roots")
	if err != nil {
		t.Fatal(err)
	}
	s.roots = unrelated.PEM
	p, addr := s.start(t, bin, c)
	s.check(t, p, addr)
	for written, srv := range s.upstreams {
		host, _, _ := net.SplitHostPort(written)
		quad9 := host == "9.9.9.9" || host == "149.112.112.112"
		if !quad9 && srv.BytesRead() != 0 {
			t.Errorf("upstream %s, not selected by tls_ca and unknown to the system roots, received %d bytes", written, srv.BytesRead())
		}
	}
}

// deployedCorefile returns the Corefile of the Deployment in dir.
func deployedCorefile(t *testing.T, dir string) corefile {
	t.Helper()
	for _, c := range allCorefiles(t) {
		if strings.HasPrefix(c.name, dir+"/") {
			return c
		}
	}
	t.Fatalf("no Deployment in deploy/%s", dir)
	return corefile{}
}

func secretTexts(secrets map[string]map[string]string) []string {
	var out []string
	for _, files := range secrets {
		for _, data := range files {
			out = append(out, data)
		}
	}
	return out
}

func clone(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

// secretFile is a Secret's file as the stage writes it: Corefile snippets
// (.conf) localized, anything else as it is.
func (s *stage) secretFile(name, data string) string {
	if filepath.Ext(name) == ".conf" {
		return s.localize(data)
	}
	return data
}

// start lays out c on the stage, as the kubelet would lay out a pod's volumes,
// checks that nothing in it leaves loopback, and starts CoreDNS on it. It
// returns the process and the address of the Corefile's first server.
func (s *stage) start(t *testing.T, bin string, c corefile) (*process, string) {
	t.Helper()
	local := s.localize(c.text)
	for dir, files := range c.secrets {
		out := map[string]string{}
		for name, data := range files {
			out[name] = s.secretFile(name, data)
		}
		writeAtomic(t, s.path(dir), out)
	}
	conf := map[string]string{"Corefile": local}
	for name, data := range c.conf { // the ConfigMap's files: .conf inside a server block, .server whole ones
		switch filepath.Ext(name) {
		case ".conf":
			conf[name] = s.localizeSnippet(data)
		case ".server":
			conf[name] = s.localize(data)
		default:
			if name != "Corefile" {
				conf[name] = data
			}
		}
	}
	writeAtomic(t, s.path("/etc/coredns"), conf)
	confPath := s.path("/etc/coredns/Corefile")
	for _, data := range conf {
		s.materialize(data)
	}
	s.guard(confPath)
	t.Logf("localized Corefile:\n%s", local)
	p := startCoreDNS(t, bin, confPath, s.root, s.env())
	port := ""
	for _, l := range lines(local) {
		if l.depth == 0 && l.opens() && port == "" {
			_, _, port = splitKey(l.tokens[0])
		}
	}
	return p, "127.0.0.1:" + port
}

// check asks the running Corefile what a user and the kubelet would ask.
func (s *stage) check(t *testing.T, p *process, addr string) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("coredns log:\n%s", p.log())
			if s.api != nil && len(s.api.Unknown()) > 0 {
				t.Logf("requests the fake Kubernetes API did not know: %q", s.api.Unknown())
			}
		}
	}()
	if len(s.fromZones) == 0 && len(s.fwdZones) == 0 {
		t.Fatal("neither dotstub nor forward in the Corefile") // a NodeLocal DNSCache Corefile has forward alone
	}
	for _, zone := range s.fromZones {
		name := "www.example.org."
		if zone != "." {
			name = "www." + dns.Fqdn(zone)
		}
		a := query(t, addr, name, dns.TypeA)
		if a.Rcode != dns.RcodeSuccess || len(a.Answer) == 0 || a.Answer[len(a.Answer)-1].(*dns.A).A.String() != "192.0.2.1" {
			t.Errorf("%s: want the stand-in upstream's 192.0.2.1, got:\n%s", name, a)
		}
	}
	for _, zone := range s.fwdZones {
		name := "www." + dns.Fqdn(zone)
		if zone == "." {
			name = "www.example.org."
		}
		if a := query(t, addr, name, dns.TypeA); len(a.Answer) != 1 || a.Answer[0].(*dns.A).A.String() != forwardIP {
			t.Errorf("%s: want the forward stanza's stand-in's %s, got:\n%s", name, forwardIP, a)
		}
	}
	queries := 0
	for _, srv := range s.upstreams {
		queries += srv.Queries()
	}
	if queries == 0 && len(s.fromZones) > 0 {
		t.Error("no query reached the stand-in upstreams")
	}
	if s.api != nil {
		name := "kubernetes.default.svc." + dns.Fqdn(s.k8sZones[0])
		a := query(t, addr, name, dns.TypeA)
		if a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1 || a.Answer[0].(*dns.A).A.String() != kubernetesIP {
			t.Errorf("%s: want %s from the kubernetes plugin, got:\n%s", name, kubernetesIP, a)
		}
	}
	// An answer came back through a verified handshake, so dotstub is
	// ready by now, and the kubernetes plugin synced before the banner.
	if hp, ok := s.listen["ready"]; ok {
		if code, body := get(t, "http://"+hp+"/ready"); code != 200 {
			t.Errorf("/ready: %d %s", code, body)
		}
	}
	if hp, ok := s.listen["health"]; ok {
		if code, body := get(t, "http://"+hp+"/health"); code != 200 {
			t.Errorf("/health: %d %s", code, body)
		}
	}
	if hp, ok := s.listen["prometheus"]; ok && len(s.fromZones) > 0 {
		_, body := get(t, "http://"+hp+"/metrics")
		for _, m := range []string{"coredns_dotstub_request_duration_seconds_count", "coredns_dotstub_conns"} {
			if !strings.Contains(body, m) {
				t.Errorf("/metrics has no %s", m)
			}
		}
	}
}
