package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

const (
	readyWait = 15 * time.Second // how long CoreDNS may take to answer its first query
	stopWait  = 5 * time.Second  // SIGTERM, then SIGKILL after this
)

// corefile is the whole Corefile of one row: a server block on port in
// front of the upstreams, with the row's plugin and extra options.
func corefile(r row, port int, caFile string, ups []*upstream) string {
	var b strings.Builder
	fmt.Fprintf(&b, ".:%d {\n    bind 127.0.0.1\n", port)
	switch r.peer {
	case "dotstub":
		b.WriteString("    dotstub .")
		for _, u := range ups {
			host, p, _ := net.SplitHostPort(u.addr)
			fmt.Fprintf(&b, " tls://%s%%dns.test:%s", host, p)
		}
		fmt.Fprintf(&b, " {\n        tls %s\n", caFile)
	case "forward":
		b.WriteString("    forward .")
		for _, u := range ups {
			fmt.Fprintf(&b, " tls://%s", u.addr)
		}
		fmt.Fprintf(&b, " {\n        tls %s\n        tls_servername dns.test\n", caFile)
	}
	b.WriteString("        health_check 0.5s\n")
	for _, o := range r.opts {
		fmt.Fprintf(&b, "        %s\n", o)
	}
	b.WriteString("    }\n}\n")
	return b.String()
}

// coredns is one CoreDNS process started by the harness.
type coredns struct {
	cmd  *exec.Cmd
	addr string        // 127.0.0.1:port it serves
	log  string        // file holding its stdout and stderr
	done chan struct{} // closed when the process has exited and been waited for
}

// startCoreDNS writes conf to dir and starts bin/coredns on it, then waits
// until it answers a query. On error nothing is left running.
func startCoreDNS(ctx context.Context, bin, dir, name, conf string, port int) (*coredns, error) {
	path := filepath.Join(dir, name+".Corefile")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(filepath.Join(bin, "coredns"), "-conf", path)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &coredns{cmd: cmd, addr: fmt.Sprintf("127.0.0.1:%d", port), log: logf.Name(), done: make(chan struct{})}
	go func() { cmd.Wait(); close(c.done) }()
	if err := c.waitReady(ctx); err != nil {
		c.stop()
		return nil, fmt.Errorf("coredns did not answer: %v; log:\n%s", err, c.tail())
	}
	return c, nil
}

// waitReady sends queries until one is answered with an A record, the
// process exits, or readyWait passes.
func (c *coredns) waitReady(ctx context.Context) error {
	m := new(dns.Msg)
	m.SetQuestion("ready.failover.test.", dns.TypeA)
	cl := &dns.Client{Timeout: 300 * time.Millisecond}
	err := errors.New("no answer")
	for deadline := time.Now().Add(readyWait); time.Now().Before(deadline); {
		select {
		case <-c.done:
			return errors.New("coredns exited")
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		var a *dns.Msg
		if a, _, err = cl.Exchange(m, c.addr); err == nil && a.Rcode == dns.RcodeSuccess && len(a.Answer) == 1 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

// stop ends the process by its PID: SIGTERM, SIGKILL after stopWait, and
// waits for it.
func (c *coredns) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(stopWait):
		c.cmd.Process.Kill()
		<-c.done
	}
}

// tail is the end of the process's log, for error messages.
func (c *coredns) tail() string {
	data, _ := os.ReadFile(c.log)
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return string(data)
}

// freePort finds a loopback port free for both UDP and TCP, since CoreDNS
// binds both.
func freePort() (int, error) {
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err == nil {
			ln.Close()
			return port, nil
		}
	}
	return 0, errors.New("no free port")
}

// coreVersion is the first line of `coredns -version`.
func coreVersion(bin string) string {
	out, err := exec.Command(filepath.Join(bin, "coredns"), "-version").Output()
	if err != nil {
		return "coredns: " + err.Error()
	}
	return strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
}
