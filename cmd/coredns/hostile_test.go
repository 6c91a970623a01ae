package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// The hostile-client tests run the coredns binary with a dotstub stanza in
// front of an in-process upstream, throw at it what a hostile or broken
// client sends, and check after each that the process is still running and
// answers a normal query over UDP and over TCP. Everything stays on 127.0.0.1.

// hostileBound bounds every wait in these tests: only a hang reaches it.
const hostileBound = 30 * time.Second

// rightIP is the address the upstream (dottest.Answer) gives every A query.
var rightIP = net.IPv4(192, 0, 2, 1)

func TestHostileClients(t *testing.T) {
	bin := buildCoreDNS(t)
	up := dottest.New(t, dottest.Options{})
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, up.CA.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	host, upPort, _ := net.SplitHostPort(up.Addr)
	port := freePort(t)
	runCoreDNS(t, bin, fmt.Sprintf(`.:%s {
    bind 127.0.0.1
    dotstub . tls://%s%%%s:%s {
        tls %s
    }
}
`, port, host, dottest.DefaultName, upPort, ca))
	addr := "127.0.0.1:" + port
	pid := pidOf(t, bin)

	serving := func(t *testing.T) {
		t.Helper()
		if err := running(pid); err != nil {
			t.Fatalf("coredns: %v", err)
		}
		for _, network := range []string{"udp", "tcp"} {
			if err := answersNormally(network, addr, "www.example.org."); err != nil {
				t.Errorf("over %s: %v", network, err)
			}
		}
		if err := running(pid); err != nil {
			t.Fatalf("coredns: %v", err)
		}
	}
	serving(t)

	for _, tc := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"random UDP payloads", func(t *testing.T) {
			udpFlood(t, addr, 300, func(int) []byte { return randomBytes(rand.IntN(600)) })
		}},
		{"truncated UDP queries", func(t *testing.T) {
			var wires [][]byte
			for _, m := range sampleQueries() {
				w, err := m.Pack()
				if err != nil {
					t.Fatal(err)
				}
				for n := range len(w) {
					wires = append(wires, w[:n])
				}
			}
			udpFlood(t, addr, len(wires), func(i int) []byte { return wires[i] })
		}},
		{"UDP queries with flipped bytes", func(t *testing.T) {
			qs := sampleQueries()
			udpFlood(t, addr, 300, func(i int) []byte {
				w, _ := qs[i%len(qs)].Pack()
				for range 1 + rand.IntN(4) {
					w[rand.IntN(len(w))] ^= byte(1 + rand.IntN(255))
				}
				return w
			})
		}},
		{"TCP clients that send half a frame and stop", func(t *testing.T) {
			w, err := sampleQueries()[0].Pack()
			if err != nil {
				t.Fatal(err)
			}
			stalledTCP(t, addr, 50, serving, binary.BigEndian.AppendUint16(nil, uint16(len(w))), w[:len(w)/2])
		}},
		{"TCP clients that open and idle", func(t *testing.T) {
			stalledTCP(t, addr, 100, serving)
		}},
		{"TCP clients that announce 65535 bytes and send few", func(t *testing.T) {
			stalledTCP(t, addr, 50, serving, []byte{0xff, 0xff}, randomBytes(100))
		}},
		{"500 TCP clients at once", func(t *testing.T) {
			manyTCP(t, addr, 500)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t)
			serving(t)
		})
	}
}

// answersNormally asks addr over network for name A and checks the answer.
// Over UDP it tries three times, as a stub resolver does: a datagram can be
// dropped when the server's socket buffer is full.
func answersNormally(network, addr, name string) error {
	var err error
	for range 3 {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		c := &dns.Client{Net: network, Timeout: hostileBound / 10}
		var a *dns.Msg
		if a, _, err = c.Exchange(m, addr); err == nil {
			return wrongAnswer(m, a)
		}
		if network != "udp" {
			break
		}
	}
	return err
}

// wrongAnswer says what is wrong with a as the answer to m, or nil.
func wrongAnswer(m, a *dns.Msg) error {
	q := m.Question[0]
	if a.Id != m.Id || a.Rcode != dns.RcodeSuccess || len(a.Question) != 1 || a.Question[0] != q || len(a.Answer) != 1 {
		return fmt.Errorf("wrong answer to %s:\n%s", q.Name, a)
	}
	if rr, ok := a.Answer[0].(*dns.A); !ok || rr.Hdr.Name != q.Name || !rr.A.Equal(rightIP) {
		return fmt.Errorf("wrong answer to %s: %v", q.Name, a.Answer[0])
	}
	return nil
}

// sampleQueries returns well-formed queries of several shapes: plain, with
// EDNS0 and DO, with a Client Subnet option, with a long name.
func sampleQueries() []*dns.Msg {
	plain := new(dns.Msg)
	plain.SetQuestion("www.example.org.", dns.TypeA)
	do := new(dns.Msg)
	do.SetQuestion("big.example.org.", dns.TypeTXT)
	do.SetEdns0(1232, true)
	ecs := new(dns.Msg)
	ecs.SetQuestion("www.example.net.", dns.TypeAAAA)
	ecs.SetEdns0(1232, false)
	ecs.IsEdns0().Option = append(ecs.IsEdns0().Option, &dns.EDNS0_SUBNET{
		Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(198, 51, 100, 0)})
	long := new(dns.Msg)
	long.SetQuestion(strings.Repeat("a123456789.", 20)+"example.org.", dns.TypeA)
	return []*dns.Msg{plain, do, ecs, long}
}

// udpFlood sends n datagrams, payload(i), to addr from one socket. Every 25
// datagrams it waits for the answer to a normal query from another socket:
// the server reads its socket in order, so the answer means it has read the
// datagrams sent before, and the socket buffer never overflows.
func udpFlood(t *testing.T, addr string, n int, payload func(i int) []byte) {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range n {
		if _, err := c.Write(payload(i)); err != nil {
			t.Fatal(err)
		}
		if i%25 == 24 || i == n-1 {
			if err := answersNormally("udp", addr, fmt.Sprintf("after%d.example.org.", i)); err != nil {
				t.Fatalf("after %d datagrams: %v", i+1, err)
			}
		}
	}
}

// stalledTCP opens n TCP connections to addr and writes each of the chunks
// on every one, then stops. With them all open the server must answer
// normally, and it must close every one of them in time (CoreDNS reads a
// query within its read timeout, 3s by default).
func stalledTCP(t *testing.T, addr string, n int, serving func(*testing.T), chunks ...[]byte) {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.DialTimeout("tcp", addr, hostileBound)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		for _, b := range chunks {
			if _, err := c.Write(b); err != nil {
				t.Fatal(err)
			}
		}
	}
	serving(t)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex // guards kept
		kept int
	)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(hostileBound))
			_, err := c.Read(make([]byte, 512))
			if ne := (net.Error)(nil); errors.As(err, &ne) && ne.Timeout() || err == nil {
				mu.Lock()
				kept++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if kept > 0 {
		t.Errorf("%d of %d stalled connections still open, or answered, after %s", kept, n, hostileBound)
	}
}

// manyTCP connects n clients to addr at once, then has each send a query for
// a name of its own. Every one must get a reply: the right answer, or
// SERVFAIL should the upstream be too slow for the load (a loaded machine
// running -race), but not all of them; never a wrong answer.
func manyTCP(t *testing.T, addr string, n int) {
	t.Helper()
	var (
		wg, dialed sync.WaitGroup
		start      = make(chan struct{})
		mu         sync.Mutex // guards failures and servfails
		failures   []error
		servfails  int
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, err)
	}
	for i := range n {
		wg.Add(1)
		dialed.Add(1)
		go func() {
			defer wg.Done()
			co, err := dns.DialTimeout("tcp", addr, hostileBound)
			dialed.Done()
			if err != nil {
				fail(err)
				return
			}
			defer co.Close()
			<-start
			co.SetDeadline(time.Now().Add(hostileBound))
			m := new(dns.Msg)
			m.SetQuestion(fmt.Sprintf("c%d.example.org.", i), dns.TypeA)
			if err := co.WriteMsg(m); err != nil {
				fail(err)
				return
			}
			a, err := co.ReadMsg()
			switch {
			case err != nil:
				fail(err)
			case a.Rcode == dns.RcodeServerFailure && a.Id == m.Id && len(a.Answer) == 0:
				mu.Lock()
				servfails++
				mu.Unlock()
			default:
				if err := wrongAnswer(m, a); err != nil {
					fail(err)
				}
			}
		}()
	}
	dialed.Wait() // every client connected before any sends
	close(start)
	wg.Wait()
	t.Logf("%d clients: %d SERVFAIL, %d failed", n, servfails, len(failures))
	if servfails == n {
		t.Errorf("all %d clients got SERVFAIL", n)
	}
	for i, err := range failures {
		if i == 10 {
			t.Errorf("... %d failures in all", len(failures))
			break
		}
		t.Error(err)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return b
}

// pidOf returns the pid of the process running bin, found by its command line:
// bin's path, in a directory of the test's own, names the coredns this test
// started and no other.
func pidOf(t *testing.T, bin string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc to find coredns in: %v", err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if arg0, _, _ := strings.Cut(string(cmdline), "\x00"); arg0 == bin {
			return pid
		}
	}
	t.Fatalf("no process runs %s", bin)
	return 0
}

// running returns an error unless process pid is running: it has not exited,
// and is not a zombie waiting for the test to reap it.
func running(pid int) error {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return fmt.Errorf("process %d is gone: %w", pid, err)
	}
	// "pid (comm) state ...": comm may hold spaces and parentheses.
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) == 0 {
		return fmt.Errorf("process %d: unreadable stat %q", pid, s)
	}
	if fields[0] == "Z" || fields[0] == "X" {
		return fmt.Errorf("process %d has exited (state %s)", pid, fields[0])
	}
	return nil
}
