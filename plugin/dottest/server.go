// Package dottest runs a DNS-over-TLS upstream in-process, on loopback, with a
// certificate authority made for the run. Tests of the pool and the plugin use
// it as the far end; the demo and benchmarks start it through cmd/dotupstream.
//
// The server reads frames itself rather than through miekg/dns's server, so a
// test can make it misbehave exactly: answer out of order, hold answers, close
// after some queries or when idle, or write raw bytes.
package dottest

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DefaultName is the name in the server certificate when Options.Names is empty.
const DefaultName = "dns.test"

// Options change the server; the zero value answers every query with Answer,
// concurrently, on 127.0.0.1 with a certificate for DefaultName.
type Options struct {
	Addr  string   // listen address; default "127.0.0.1:0"
	Names []string // certificate names (DNS names or IPs); default DefaultName
	CA    *CA      // issuer of the leaf; default a new CA
	Leaf  *Leaf    // certificate to present; default one issued by CA for Names

	// Handler answers one query; it runs in a goroutine of its own, so answers
	// can leave out of order. A nil reply sends nothing for that query.
	// Default: Answer.
	Handler func(q *dns.Msg) *dns.Msg

	// Wire, when set, answers one query instead of Handler, as Handler does
	// (in a goroutine of its own), with the bytes of the message to send:
	// the server frames them with their length as they are, so a test can
	// send any bytes as an answer. Nil sends nothing for that query.
	Wire func(q *dns.Msg) []byte

	// Raw, when set, receives every query frame (without its length prefix)
	// instead of Handler and may write anything to c. It runs on the
	// connection's reader; returning false closes the connection.
	Raw func(c net.Conn, frame []byte) bool

	// CloseAfter closes each connection once it has answered this many queries.
	// Zero never closes.
	CloseAfter int

	// IdleTimeout closes each connection on which no query has begun to
	// arrive for this long, answers pending or not, as upstreams do to
	// connections they find idle. Zero never closes.
	IdleTimeout time.Duration

	// Keepalive answers a query that carries edns-tcp-keepalive (RFC 7828)
	// with the option, stating IdleTimeout; zero asks the client to close
	// the connection. Handler's answers only.
	Keepalive bool
}

// Funcs are the functions on the stacks of a Server's goroutines, for leak
// checks (goleak.IgnoreAnyFunction) that must tell them from the client's: a
// Server runs until its test ends.
var Funcs = []string{
	"github.com/dotstub/dotstub/plugin/dottest.(*Server).serve",
	"github.com/dotstub/dotstub/plugin/dottest.(*Server).serveConn",
	"github.com/dotstub/dotstub/plugin/dottest.(*Server).answer",
}

// Server is a running DoT upstream.
type Server struct {
	Addr string // host:port it listens on
	CA   *CA
	Leaf *Leaf

	opts Options
	ln   net.Listener
	wg   sync.WaitGroup

	mu     sync.Mutex // guards conns, closed and idle
	conns  map[net.Conn]struct{}
	closed bool
	idle   []chan struct{} // closed when conns is next empty

	accepted   atomic.Int64
	handshakes atomic.Int64
	resumed    atomic.Int64
	queries    atomic.Int64
	bytesRead  atomic.Int64
}

// New starts a server for the test t and closes it when t ends.
func New(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// Start starts a server. The caller must Close it.
func Start(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if len(opts.Names) == 0 {
		opts.Names = []string{DefaultName}
	}
	if opts.Handler == nil {
		opts.Handler = Answer
	}
	var err error
	if opts.CA == nil {
		if opts.CA, err = NewCA("dottest CA"); err != nil {
			return nil, err
		}
	}
	if opts.Leaf == nil {
		if opts.Leaf, err = opts.CA.Issue(opts.Names, time.Time{}, time.Time{}); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: ln.Addr().String(), CA: opts.CA, Leaf: opts.Leaf, opts: opts, ln: ln, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// Accepted is the number of TCP connections accepted.
func (s *Server) Accepted() int { return int(s.accepted.Load()) }

// Handshakes is the number of completed TLS handshakes.
func (s *Server) Handshakes() int { return int(s.handshakes.Load()) }

// Resumed is the number of completed handshakes that resumed a session.
func (s *Server) Resumed() int { return int(s.resumed.Load()) }

// Queries is the number of query frames received.
func (s *Server) Queries() int { return int(s.queries.Load()) }

// BytesRead is the number of application-data bytes received over TLS, that
// is, bytes of DNS queries and their length prefixes.
func (s *Server) BytesRead() int { return int(s.bytesRead.Load()) }

// Idle returns a channel that is closed once no client connection is open: at
// once if none is, else when the last one open closes. A test waits on it for
// the server to have dropped its connections (IdleTimeout, CloseAfter).
func (s *Server) Idle() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{})
	if len(s.conns) == 0 {
		close(ch)
	} else {
		s.idle = append(s.idle, ch)
	}
	return ch
}

// CloseConns closes every open client connection, as an upstream does when it
// restarts or drops idle connections. The listener stays open.
func (s *Server) CloseConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}

// Close stops the listener, closes every connection and waits for the
// server's goroutines.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.ln.Close()
	s.CloseConns()
	s.wg.Wait()
}

func (s *Server) serve() {
	defer s.wg.Done()
	cfg := &tls.Config{Certificates: []tls.Certificate{s.Leaf.TLS}, MinVersion: tls.VersionTLS12}
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c, tls.Server(c, cfg))
	}
}

func (s *Server) serveConn(raw net.Conn, tc *tls.Conn) {
	defer s.wg.Done()
	var handlers sync.WaitGroup
	defer func() {
		raw.Close()
		handlers.Wait()
		s.mu.Lock()
		delete(s.conns, raw)
		if len(s.conns) == 0 {
			for _, ch := range s.idle {
				close(ch)
			}
			s.idle = nil
		}
		s.mu.Unlock()
	}()
	if err := tc.HandshakeContext(context.Background()); err != nil {
		return
	}
	s.handshakes.Add(1)
	if tc.ConnectionState().DidResume {
		s.resumed.Add(1)
	}

	var (
		wmu      sync.Mutex // serializes writes and guards answered
		answered int
	)
	write := func(buf []byte) {
		wmu.Lock()
		defer wmu.Unlock()
		if s.opts.CloseAfter > 0 && answered >= s.opts.CloseAfter {
			return
		}
		frame := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(buf)), uint16(len(buf)))
		tc.Write(append(frame, buf...))
		answered++
		if s.opts.CloseAfter > 0 && answered == s.opts.CloseAfter {
			raw.Close()
		}
	}

	var hdr [2]byte
	for {
		if s.opts.IdleTimeout > 0 {
			tc.SetReadDeadline(time.Now().Add(s.opts.IdleTimeout))
		}
		if _, err := io.ReadFull(tc, hdr[:]); err != nil {
			return
		}
		if s.opts.IdleTimeout > 0 {
			tc.SetReadDeadline(time.Time{}) // the rest of the frame, and Raw's reads, take their time
		}
		frame := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(tc, frame); err != nil {
			return
		}
		s.bytesRead.Add(int64(2 + len(frame)))
		s.queries.Add(1)
		if s.opts.Raw != nil {
			if !s.opts.Raw(tc, frame) {
				return
			}
			continue
		}
		q := new(dns.Msg)
		if err := q.Unpack(frame); err != nil {
			return
		}
		handlers.Add(1)
		go s.answer(q, write, &handlers)
	}
}

// answer answers q with write, in a goroutine of its own.
func (s *Server) answer(q *dns.Msg, write func([]byte), handlers *sync.WaitGroup) {
	defer handlers.Done()
	if s.opts.Wire != nil {
		if buf := s.opts.Wire(q); buf != nil {
			write(buf)
		}
		return
	}
	if a := s.opts.Handler(q); a != nil {
		if s.opts.Keepalive && askedKeepalive(q) {
			statesKeepalive(a, s.opts.IdleTimeout)
		}
		if buf, err := a.Pack(); err == nil {
			write(buf)
		}
	}
}

// askedKeepalive reports whether q carries edns-tcp-keepalive.
func askedKeepalive(q *dns.Msg) bool {
	if opt := q.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if o.Option() == dns.EDNS0TCPKEEPALIVE {
				return true
			}
		}
	}
	return false
}

// statesKeepalive adds to a an edns-tcp-keepalive option stating idle.
func statesKeepalive(a *dns.Msg, idle time.Duration) {
	opt := a.IsEdns0()
	if opt == nil {
		a.SetEdns0(1232, false)
		opt = a.IsEdns0()
	}
	opt.Option = append(opt.Option, &dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE, Timeout: uint16(idle / (100 * time.Millisecond))})
}
