package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/dotstub/dotstub/bench/internal/benchkit"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/miekg/dns"
)

const (
	readyWait = 15 * time.Second // how long CoreDNS may take to answer its first query
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
	*benchkit.Proc
	addr string // 127.0.0.1:port it serves
}

// startCoreDNS writes conf to dir and starts bin/coredns on it, then waits
// until it answers a query. On error nothing is left running.
func startCoreDNS(ctx context.Context, bin, dir, name, conf string, port int) (*coredns, error) {
	path := filepath.Join(dir, name+".Corefile")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	p, err := benchkit.Start(dir, name, filepath.Join(bin, "coredns"), "-conf", path)
	if err != nil {
		return nil, err
	}
	c := &coredns{Proc: p, addr: fmt.Sprintf("127.0.0.1:%d", port)}
	if err := c.waitReady(ctx); err != nil {
		c.stop()
		return nil, fmt.Errorf("coredns did not answer: %v; log:\n%s", err, c.tail())
	}
	return c, nil
}

func (c *coredns) stop()        { c.Stop() }
func (c *coredns) tail() string { return c.Tail(2000) }

// waitReady sends queries until one is answered with an A record, the
// process exits, or readyWait passes.
func (c *coredns) waitReady(ctx context.Context) error {
	m := new(dns.Msg)
	m.SetQuestion("ready.failover.test.", dns.TypeA)
	cl := &dns.Client{Timeout: 300 * time.Millisecond}
	err := errors.New("no answer")
	for deadline := time.Now().Add(readyWait); time.Now().Before(deadline); {
		select {
		case <-c.Done():
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
