package main

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// upstream is an in-process DoT upstream that the harness can break on cue:
// kill and restart it on the same address, stall its answers, stall its TLS
// handshakes, or slow it down. Every A answer carries its own address (ip),
// so the client can tell which upstream answered.
type upstream struct {
	name string // "A", "B": as reported in the tables
	ip   net.IP // the address in every A answer
	addr string // host:port; stays the same across restarts
	ca   *dottest.CA
	leaf *dottest.Leaf

	delay   atomic.Int64 // nanoseconds slept before each answer; 0 answers at once
	stalled atomic.Bool  // read queries, never answer

	mu   sync.Mutex      // guards the fields below
	srv  *dottest.Server // nil while killed or holding handshakes
	hold *holder         // non-nil while handshakes are stalled
}

// startUpstream starts an upstream on a fresh loopback port.
func startUpstream(name string, ip net.IP, ca *dottest.CA, leaf *dottest.Leaf) (*upstream, error) {
	u := &upstream{name: name, ip: ip, addr: "127.0.0.1:0", ca: ca, leaf: leaf}
	if err := u.start(); err != nil {
		return nil, err
	}
	u.addr = u.srv.Addr
	return u, nil
}

// start serves DoT on u.addr. Callers hold no lock; u.mu is taken here.
func (u *upstream) start() error {
	srv, err := dottest.Start(dottest.Options{Addr: u.addr, CA: u.ca, Leaf: u.leaf, Handler: u.answer})
	if err != nil {
		return err
	}
	u.mu.Lock()
	u.srv = srv
	u.mu.Unlock()
	return nil
}

// answer is the DoT handler. A nil reply makes dottest send nothing, which is
// exactly a stall: the query was read, and no answer will ever come.
func (u *upstream) answer(q *dns.Msg) *dns.Msg {
	if u.stalled.Load() {
		return nil
	}
	if d := time.Duration(u.delay.Load()); d > 0 {
		time.Sleep(d) // simulated service time
	}
	m := dottest.Answer(q)
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			a.A = u.ip
		}
	}
	return m
}

// kill closes the listener and every connection, as a crashed process would.
func (u *upstream) kill() {
	u.mu.Lock()
	srv := u.srv
	u.srv = nil
	u.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// restart serves again on the same address after kill.
func (u *upstream) restart() error { return u.start() }

// stall makes u read queries and never answer, or answer again.
func (u *upstream) stall(on bool) { u.stalled.Store(on) }

// setDelay makes every later answer wait d.
func (u *upstream) setDelay(d time.Duration) { u.delay.Store(int64(d)) }

// stallHandshakes closes u, so that every open connection dies and clients
// must dial, and puts in its place a TCP listener that accepts and never
// speaks TLS: each new connection hangs in the handshake.
func (u *upstream) stallHandshakes() error {
	u.kill()
	h, err := listenHold(u.addr)
	if err != nil {
		return err
	}
	u.mu.Lock()
	u.hold = h
	u.mu.Unlock()
	return nil
}

// resumeHandshakes undoes stallHandshakes: the held connections are closed
// and DoT is served again on the same address.
func (u *upstream) resumeHandshakes() error {
	u.mu.Lock()
	h := u.hold
	u.hold = nil
	u.mu.Unlock()
	if h != nil {
		h.close()
	}
	return u.start()
}

// close stops whatever u is running.
func (u *upstream) close() {
	u.kill()
	u.mu.Lock()
	h := u.hold
	u.hold = nil
	u.mu.Unlock()
	if h != nil {
		h.close()
	}
}

// holder accepts TCP connections and keeps them open without a byte in
// either direction, until close.
type holder struct {
	ln net.Listener
	wg sync.WaitGroup

	mu    sync.Mutex // guards conns
	conns []net.Conn
}

func listenHold(addr string) (*holder, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	h := &holder{ln: ln}
	h.wg.Add(1)
	go h.accept()
	return h, nil
}

func (h *holder) accept() {
	defer h.wg.Done()
	for {
		c, err := h.ln.Accept()
		if err != nil {
			return
		}
		h.mu.Lock()
		h.conns = append(h.conns, c)
		h.mu.Unlock()
	}
}

func (h *holder) close() {
	h.ln.Close()
	h.wg.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		c.Close()
	}
	h.conns = nil
}
