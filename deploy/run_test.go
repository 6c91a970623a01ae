package deploy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// buildCoreDNS builds CoreDNS with dotstub by scripts/build-static.sh, the
// build step of the image (scripts/image.sh), so the Corefiles run on the image's binary.
func buildCoreDNS(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the coredns binary")
	}
	bin := filepath.Join(t.TempDir(), "coredns")
	if out, err := exec.Command("../scripts/build-static.sh", bin).CombinedOutput(); err != nil {
		t.Fatalf("scripts/build-static.sh: %v\n%s", err, out)
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

// process is a running CoreDNS whose log a test can wait on.
type process struct {
	cmd *exec.Cmd

	mu    sync.Mutex    // guards the fields below
	lines []string      // the log so far
	wake  chan struct{} // closed, and replaced, at each new line and at the end
	ended bool
}

// startCoreDNS runs bin on the Corefile at conf, in dir, and returns once it
// serves, that is, once it has printed its banner. It stops the process when
// t ends.
func startCoreDNS(t *testing.T, bin, conf, dir string, env []string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(bin, "-conf", conf), wake: make(chan struct{})}
	p.cmd.Dir, p.cmd.Env = dir, env
	r, w := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		w.Close()
	}()
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			p.add(sc.Text(), false)
		}
		p.add("", true)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill() // not Interrupt: health's lameduck would hold it for seconds
		p.waitEnd()
	})
	if _, err := p.waitLine(0, "CoreDNS-", 30*time.Second); err != nil {
		t.Fatalf("%v; its log:\n%s", err, p.log())
	}
	return p
}

func (p *process) add(s string, end bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if end {
		p.ended = true
	} else {
		p.lines = append(p.lines, s)
	}
	close(p.wake)
	p.wake = make(chan struct{})
}

// waitLine waits for a line of the log, from line from on, that starts with
// prefix or contains it after "] ", and returns the index after it.
func (p *process) waitLine(from int, prefix string, d time.Duration) (int, error) {
	deadline := time.After(d)
	for {
		p.mu.Lock()
		for i := from; i < len(p.lines); i++ {
			if strings.HasPrefix(p.lines[i], prefix) || strings.Contains(p.lines[i], "] "+prefix) {
				p.mu.Unlock()
				return i + 1, nil
			}
		}
		from = len(p.lines)
		ended, wake := p.ended, p.wake
		p.mu.Unlock()
		if ended {
			return 0, fmt.Errorf("coredns ended before printing %q", prefix)
		}
		select {
		case <-wake:
		case <-deadline:
			return 0, fmt.Errorf("coredns did not print %q within %s", prefix, d)
		}
	}
}

func (p *process) waitEnd() {
	for {
		p.mu.Lock()
		ended, wake := p.ended, p.wake
		p.mu.Unlock()
		if ended {
			return
		}
		<-wake
	}
}

func (p *process) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// lineCount is the number of log lines so far.
func (p *process) lineCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// query asks addr for name over UDP and returns the answer.
func query(t *testing.T, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Timeout: 5 * time.Second}
	a, _, err := c.ExchangeContext(context.Background(), m, addr)
	if err != nil {
		t.Fatalf("%s %s: %v", name, dns.TypeToString[qtype], err)
	}
	return a
}

// get fetches an HTTP URL on loopback and returns its status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// writeAtomic writes files into dir the way the kubelet writes a ConfigMap or
// Secret volume: into a fresh timestamped directory that the symbolic link
// ..data then points to, swapped in one rename, with each file a link through
// ..data. A reader sees either the old files or the new ones, never a mix.
func writeAtomic(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ts, err := os.MkdirTemp(dir, ".."+time.Now().UTC().Format("2006_01_02_15_04_05."))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(ts, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}
