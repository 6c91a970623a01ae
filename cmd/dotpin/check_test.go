package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"

	"github.com/dotstub/dotstub"
	"github.com/dotstub/dotstub/plugin/dottest"
	"github.com/dotstub/dotstub/plugin/pin"
)

// TestSeveralServers: the lines printed for servers of two operators, pasted
// into one block, pin each server to its own keys.
func TestSeveralServers(t *testing.T) {
	a := dottest.New(t, dottest.Options{Names: []string{"a.test"}})
	b := dottest.New(t, dottest.Options{CA: a.CA, Names: []string{"127.0.0.1"}})
	ca := writeFile(t, "ca.pem", a.CA.PEM)
	r := dotpin(t, "-ca", ca, toName(a, "a.test"), "tls://"+b.Addr)
	if r.code != exitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	var lines []string
	for _, l := range strings.Split(r.stdout, "\n") {
		if strings.HasPrefix(l, "pin_sha256 ") {
			lines = append(lines, l)
		}
	}
	want := []string{
		fmt.Sprintf("pin_sha256 a.test %s %s", a.Leaf.Pin(), a.CA.Pin()),
		fmt.Sprintf("pin_sha256 %s %s %s", b.Addr, b.Leaf.Pin(), b.CA.Pin()),
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("lines\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	block := fmt.Sprintf("dotstub . %s tls://%s {\n tls_ca %s\n %s\n}", toName(a, "a.test"), b.Addr, ca, strings.Join(lines, "\n "))
	ups, err := dotstub.Upstreams(caddy.NewTestController("dns", block))
	if err != nil {
		t.Fatalf("the pasted lines do not parse: %v\n%s", err, block)
	}
	for i, leaf := range []pin.Pin{a.Leaf.Pin(), b.Leaf.Pin()} {
		if pins := ups[i].Config().Pins; len(pins) != 2 || pins[0] != leaf {
			t.Errorf("upstream %d pinned to %v, want its own leaf %s first", i, pins, leaf)
		}
	}
}

func TestCheck(t *testing.T) {
	ca, err := dottest.NewCA("check CA")
	if err != nil {
		t.Fatal(err)
	}
	// dottest's CA and leaves are valid for a day; soon's leaf for two hours.
	soonLeaf, err := ca.Issue([]string{dottest.DefaultName}, time.Now().Add(-time.Hour), time.Now().Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	oldLeaf, err := ca.Issue([]string{dottest.DefaultName}, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	good := dottest.New(t, dottest.Options{CA: ca})
	stale := dottest.New(t, dottest.Options{CA: ca})                // its key is not the one pinned
	soon := dottest.New(t, dottest.Options{CA: ca, Leaf: soonLeaf}) // its pinned certificate expires in two hours
	unpinned := dottest.New(t, dottest.Options{CA: ca})

	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	stanza := fmt.Sprintf(`dotstub . tls://%[1]s tls://%[2]s tls://%[3]s tls://%[4]s {
    tls_servername %[5]s
    tls_ca %[6]s
    pin_sha256 %[1]s %[7]s %[8]s
    pin_sha256 %[2]s %[9]s
    pin_sha256 %[3]s %[10]s
    pin_sha256 %[4]s none
}
`, good.Addr, stale.Addr, soon.Addr, unpinned.Addr, dottest.DefaultName, caFile,
		good.Leaf.Pin(), ca.Pin(), oldLeaf.Pin(), soonLeaf.Pin())
	for name, data := range map[string]string{
		"ca.pem":       string(ca.PEM),
		"dotstub.conf": stanza,
		"Corefile":     ". {\n    log\n    import " + filepath.Join(dir, "dotstub.conf") + "\n}\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(dir, "Corefile")

	r := dotpin(t, "check", "-conf", conf, "-within", "12h")
	if r.code != exitFailed {
		t.Errorf("exit %d, want %d\n%s%s", r.code, exitFailed, r.stdout, r.stderr)
	}
	for _, want := range []string{
		"ok    tls://" + good.Addr + ": pins match leaf (pin " + good.Leaf.Pin().String(),
		"FAIL  tls://" + stale.Addr + ": the chain presented now matches none of its 1 pins",
		"FAIL  tls://" + soon.Addr + ": pins match leaf (pin " + soonLeaf.Pin().String(),
		"every pinned certificate expires within 12h0m0s",
		"skip  tls://" + unpinned.Addr + ": not pinned",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}

	r = dotpin(t, "check", "-conf", conf, "-within", "1h")
	if !strings.Contains(r.stdout, "ok    tls://"+soon.Addr) {
		t.Errorf("a certificate that expires in two hours failed -within 1h:\n%s", r.stdout)
	}
	for _, srv := range []*dottest.Server{good, stale, soon, unpinned} {
		if n := srv.BytesRead(); n != 0 {
			t.Errorf("%s received %d bytes of queries", srv.Addr, n)
		}
	}

	bad := filepath.Join(dir, "Bad")
	os.WriteFile(bad, []byte(". {\n    dotstub . tls://"+good.Addr+" {\n        pin_sha256 abc=\n    }\n}\n"), 0o600)
	if r := dotpin(t, "check", "-conf", bad); r.code != exitUsage || !strings.Contains(r.stderr, `pin_sha256: "abc=" is not base64`) {
		t.Errorf("a Corefile dotstub refuses: exit %d, stderr %q", r.code, r.stderr)
	}
}
