package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// buildCoreDNS builds this package into a temporary directory, once per run.
func buildCoreDNS(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the coredns binary")
	}
	bin := filepath.Join(t.TempDir(), "coredns")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// freePort returns a port free on 127.0.0.1 for both UDP and TCP just now.
func freePort(t *testing.T) string {
	t.Helper()
	port, err := dottest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(port)
}

// runCoreDNS starts bin with corefile and returns once it serves, that is,
// once it has printed its banner. It stops the process when t ends.
func runCoreDNS(t *testing.T, bin, corefile string) {
	t.Helper()
	dir := t.TempDir()
	conf := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(conf, []byte(corefile), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-conf", conf)
	cmd.Dir = dir
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	})
	started := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		var log []string
		for sc.Scan() {
			log = append(log, sc.Text())
			if strings.HasPrefix(sc.Text(), "CoreDNS-") {
				started <- nil
				break
			}
		}
		if len(log) > 0 && !strings.HasPrefix(log[len(log)-1], "CoreDNS-") {
			started <- fmt.Errorf("coredns exited:\n%s", strings.Join(log, "\n"))
		}
		for sc.Scan() { // keep draining so that coredns never blocks on its log
		}
	}()
	select {
	case err := <-started:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("coredns did not start within 30s")
	}
}

func TestEndToEnd(t *testing.T) {
	bin := buildCoreDNS(t)
	good := dottest.New(t, dottest.Options{})
	bad := dottest.New(t, dottest.Options{CA: good.CA}) // same CA, another key: fails the pin
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, good.CA.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	to := func(s *dottest.Server) string {
		host, port, _ := net.SplitHostPort(s.Addr)
		return fmt.Sprintf("tls://%s%%%s:%s", host, dottest.DefaultName, port)
	}
	port := freePort(t)
	runCoreDNS(t, bin, fmt.Sprintf(`.:%s {
    bind 127.0.0.1
    errors
    dotstub pinned.test %s {
        tls %s
        pin_sha256 %s
    }
    dotstub . %s {
        tls %s
        pin_sha256 %s %s
    }
}
`, port, to(bad), ca, good.Leaf.Pin(), to(good), ca, bad.Leaf.Pin(), good.CA.Pin()))
	addr := "127.0.0.1:" + port

	tests := []struct {
		name    string
		net     string
		qname   string
		qtype   uint16
		rcode   int
		answers int
		tc      bool
	}{
		{"A over UDP", "udp", "www.example.org.", dns.TypeA, dns.RcodeSuccess, 1, false},
		{"A over TCP", "tcp", "www.example.org.", dns.TypeA, dns.RcodeSuccess, 1, false},
		{"AAAA over UDP", "udp", "www.example.org.", dns.TypeAAAA, dns.RcodeSuccess, 1, false},
		{"NXDOMAIN over TCP", "tcp", "nx.example.org.", dns.TypeA, dns.RcodeNameError, 0, false},
		{"large TXT over UDP is truncated", "udp", "big.example.org.", dns.TypeTXT, dns.RcodeSuccess, -1, true},
		{"large TXT over TCP", "tcp", "big.example.org.", dns.TypeTXT, dns.RcodeSuccess, 40, false},
		{"pin mismatch gives SERVFAIL", "udp", "www.pinned.test.", dns.TypeA, dns.RcodeServerFailure, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := new(dns.Msg)
			m.SetQuestion(tc.qname, tc.qtype)
			c := &dns.Client{Net: tc.net, Timeout: 5 * time.Second}
			a, _, err := c.ExchangeContext(context.Background(), m, addr)
			if err != nil {
				t.Fatal(err)
			}
			if a.Id != m.Id || a.Rcode != tc.rcode || a.Truncated != tc.tc || tc.answers >= 0 && len(a.Answer) != tc.answers {
				t.Errorf("got rcode %s tc %v with %d answers, want %s tc %v with %d:\n%s",
					dns.RcodeToString[a.Rcode], a.Truncated, len(a.Answer), dns.RcodeToString[tc.rcode], tc.tc, tc.answers, a)
			}
		})
	}
	if n := good.Accepted(); n != 1 {
		t.Errorf("%d connections to the upstream for %d queries, want 1", n, len(tests)-1)
	}
	if bad.BytesRead() != 0 || bad.Queries() != 0 {
		t.Errorf("server that failed its pin received %d bytes, %d queries", bad.BytesRead(), bad.Queries())
	}
}

func TestBadCorefileFailsStartup(t *testing.T) {
	bin := buildCoreDNS(t)
	tests := []struct {
		name, stanza, want string
	}{
		{"bad pin", "dotstub . tls://192.0.2.1 {\n pin_sha256 abc=\n}", `Corefile:3 - Error during parsing: pin_sha256: "abc=" is not base64`},
		{"plaintext upstream", "dotstub . dns://192.0.2.1", `Corefile:2 - Error during parsing: TO: "dns://192.0.2.1" is not a tls:// upstream`},
		{"unknown option", "dotstub . 192.0.2.1 {\n force_udp\n}", `Corefile:3 - Error during parsing: unknown option "force_udp"`},
		{"negative duration", "dotstub . 192.0.2.1 {\n expire -1s\n}", `expire: -1s is less than 1ns`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			conf := filepath.Join(dir, "Corefile")
			os.WriteFile(conf, []byte(fmt.Sprintf(".:%s {\n%s\n}\n", freePort(t), tc.stanza)), 0o600)
			out, err := exec.Command(bin, "-conf", conf).CombinedOutput()
			if err == nil {
				t.Fatalf("coredns started with a broken Corefile:\n%s", out)
			}
			if !strings.Contains(string(out), "plugin/dotstub: ") || !strings.Contains(string(out), tc.want) {
				t.Errorf("output does not say %q:\n%s", tc.want, out)
			}
		})
	}
}
