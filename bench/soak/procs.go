package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/dotstub/dotstub/bench/internal/benchkit"
	"github.com/dotstub/dotstub/plugin/dottest"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/miekg/dns"
)

const startWait = 20 * time.Second // how long a child may take to come up

// proc is a child process: the upstream or CoreDNS.
type proc struct{ *benchkit.Proc }

func startProc(dir, name, bin string, args ...string) (*proc, error) {
	p, err := benchkit.Start(dir, name, bin, args...)
	if err != nil {
		return nil, err
	}
	return &proc{p}, nil
}

func (p *proc) stop()        { p.Stop() }
func (p *proc) tail() string { return p.Tail(3000) }

// grep returns the first n lines of the process's log that hold any of subs.
func (p *proc) grep(n int, subs ...string) []string {
	data, _ := os.ReadFile(p.Log)
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		for _, s := range subs {
			if strings.Contains(line, s) && len(out) < n {
				out = append(out, line)
				break
			}
		}
	}
	return out
}

// upstream is the DoT upstream as cmd/dotupstream describes itself in its
// directory.
type upstream struct {
	*proc
	addr   string // 127.0.0.1:port
	caFile string
	pins   []string // leaf, CA
}

// startUpstream starts cmd/dotupstream in dir, closing each connection after
// closeAfter answers, and waits until it has written its address.
func startUpstream(ctx context.Context, dir, bin string, closeAfter int) (*upstream, error) {
	p, err := startProc(dir, "dotupstream", bin, "-dir", dir, "-close-after", fmt.Sprint(closeAfter))
	if err != nil {
		return nil, err
	}
	u := &upstream{proc: p, caFile: filepath.Join(dir, "ca.pem")}
	err = poll(ctx, p, startWait, func() bool {
		data, err := os.ReadFile(filepath.Join(dir, "addr"))
		u.addr = strings.TrimSpace(string(data))
		return err == nil && u.addr != ""
	})
	for _, f := range []string{"leaf.pin", "ca.pin"} {
		if err != nil {
			break
		}
		var data []byte
		data, err = os.ReadFile(filepath.Join(dir, f))
		u.pins = append(u.pins, strings.TrimSpace(string(data)))
	}
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("dotupstream: %v; log:\n%s", err, p.tail())
	}
	return u, nil
}

// ports are the loopback ports CoreDNS listens on.
type ports struct{ dns, metrics, pprof int }

// corefile is CoreDNS's configuration: dotstub in front of u, the metrics
// and pprof endpoints, and errors consolidated so that a bad minute cannot
// fill the log.
func corefile(p ports, u *upstream) string {
	host, port, _ := net.SplitHostPort(u.addr)
	return fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    errors {
        consolidate 30s .*
    }
    prometheus 127.0.0.1:%d
    pprof 127.0.0.1:%d
    dotstub . tls://%s%%dns.test:%s {
        tls %s
        pin_sha256 %s
    }
}
`, p.dns, p.metrics, p.pprof, host, port, u.caFile, strings.Join(u.pins, " "))
}

// startCoreDNS writes conf into dir, starts bin on it and waits until it
// answers a query.
func startCoreDNS(ctx context.Context, dir, bin, conf, addr string) (*proc, error) {
	path := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	p, err := startProc(dir, "coredns", bin, "-conf", path)
	if err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	m.SetQuestion("ready.soak.test.", dns.TypeA)
	cl := &dns.Client{Timeout: 300 * time.Millisecond}
	err = poll(ctx, p, startWait, func() bool {
		a, _, err := cl.Exchange(m, addr)
		return err == nil && a.Rcode == dns.RcodeSuccess && len(a.Answer) == 1
	})
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("coredns did not answer: %v; log:\n%s", err, p.tail())
	}
	return p, nil
}

// poll checks cond every 50ms until it holds, p exits, ctx ends or wait
// passes.
func poll(ctx context.Context, p *proc, wait time.Duration, cond func() bool) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(wait)
	for !cond() {
		select {
		case <-p.Done():
			return errors.New(p.Name + " exited")
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return fmt.Errorf("not up after %s", wait)
		case <-t.C:
		}
	}
	return nil
}

// freePorts finds three distinct free ports.
func freePorts() (ports, error) {
	seen := map[int]bool{}
	var got []int
	for len(got) < 3 && len(seen) < 30 {
		p, err := dottest.FreePort()
		if err != nil {
			return ports{}, err
		}
		if !seen[p] {
			got = append(got, p)
		}
		seen[p] = true
	}
	if len(got) < 3 {
		return ports{}, errors.New("no free ports")
	}
	return ports{dns: got[0], metrics: got[1], pprof: got[2]}, nil
}
