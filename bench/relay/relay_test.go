package main

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startServer serves handle on 127.0.0.1:0, closing each connection when
// handle returns; cleanup closes everything and waits for the handlers.
func startServer(t *testing.T, handle func(*net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = make(map[net.Conn]struct{})
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// echo writes back what it reads until EOF or an error, then returns, so
// that the connection is closed.
func echo(c *net.TCPConn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// startRelay runs a relay in-process on 127.0.0.1:0 to the address to;
// cleanup closes it and checks that serve returned nil.
func startRelay(t *testing.T, to string, delay time.Duration, onPairDone func()) (*relay, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := newRelay(to, delay)
	r.logf = t.Logf
	r.onPairDone = onPairDone
	served := make(chan error, 1)
	go func() { served <- r.serve(ln) }()
	t.Cleanup(func() {
		r.close()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return r, ln.Addr().String()
}

// pairDone returns a hook for startRelay and a channel that receives once
// per finished connection; n bounds the connections in the test.
func pairDone(n int) (func(), <-chan struct{}) {
	ch := make(chan struct{}, n)
	return func() { ch <- struct{}{} }, ch
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// roundTrip writes msg and reads back as many bytes.
func roundTrip(c net.Conn, msg []byte) error {
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echoed %q, want %q", got, msg)
	}
	return nil
}

// frames returns count frames of random bytes: mostly small, every 997th
// one large enough to take a whole read buffer.
func frames(seed uint64, count int) [][]byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	var key [32]byte
	key[0] = byte(seed)
	src := rand.NewChaCha8(key)
	out := make([][]byte, count)
	for i := range out {
		n := 1 + rng.IntN(300)
		if i%997 == 996 {
			n = 40<<10 + rng.IntN(60<<10)
		}
		out[i] = make([]byte, n)
		src.Read(out[i])
	}
	return out
}

// pipeline writes every frame with its own Write, as fast as it can, then
// half-closes, while reading the echoed stream to EOF; it checks that the
// stream read back is what was written.
func pipeline(c *net.TCPConn, fs [][]byte) error {
	written := make(chan error, 1)
	go func() {
		for _, f := range fs {
			if _, err := c.Write(f); err != nil {
				written <- err
				return
			}
		}
		written <- c.CloseWrite()
	}()
	got, rerr := io.ReadAll(c)
	if err := <-written; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("read: %w", rerr)
	}
	want := bytes.Join(fs, nil)
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		return fmt.Errorf("echoed %d bytes, want %d; first difference at offset %d", len(got), len(want), i)
	}
	return nil
}

func TestIntegrity(t *testing.T) {
	for _, delay := range []time.Duration{0, 2 * time.Millisecond} {
		t.Run(fmt.Sprint("delay=", delay), func(t *testing.T) {
			const conns, count = 8, 10000
			done, finished := pairDone(conns)
			r, addr := startRelay(t, startServer(t, echo), delay, done)
			errs := make(chan error, conns)
			total := 0
			for i := range conns {
				fs := frames(uint64(i), count)
				for _, f := range fs {
					total += len(f)
				}
				c := dial(t, addr)
				go func() { errs <- pipeline(c, fs) }()
			}
			for range conns {
				if err := <-errs; err != nil {
					t.Error(err)
				}
			}
			for range conns {
				<-finished
			}
			want := Stats{Accepted: conns, Open: 0, MaxOpen: r.stats().MaxOpen, BytesUp: int64(total), BytesDown: int64(total)}
			if got := r.stats(); got != want || got.MaxOpen < 1 || got.MaxOpen > conns {
				t.Errorf("stats %+v, want %+v with max_open in [1, %d]", got, want, conns)
			}
		})
	}
}

// TestBulk sends 16 MiB each way, more than a direction queues before it
// stops reading, so that the relay's backpressure is exercised.
func TestBulk(t *testing.T) {
	_, addr := startRelay(t, startServer(t, echo), 20*time.Millisecond, nil)
	data := make([]byte, 16<<20)
	rand.NewChaCha8([32]byte{1}).Read(data)
	var fs [][]byte
	for b := data; len(b) > 0; {
		n := min(len(b), 1<<20)
		fs, b = append(fs, b[:n]), b[n:]
	}
	if err := pipeline(dial(t, addr), fs); err != nil {
		t.Fatal(err)
	}
}

// TestManyConnections holds 1000 connections open at once, then pipelines
// frames on all of them.
func TestManyConnections(t *testing.T) {
	const conns, count = 1000, 20
	done, finished := pairDone(conns)
	r, addr := startRelay(t, startServer(t, echo), 5*time.Millisecond, done)
	var (
		established sync.WaitGroup
		start       = make(chan struct{})
		errs        = make(chan error, conns)
		total       int
	)
	established.Add(conns)
	for i := range conns {
		fs := make([][]byte, count)
		for j := range fs {
			fs[j] = []byte(fmt.Sprintf("<%d.%d>", i, j))
			total += len(fs[j])
		}
		ping := []byte(fmt.Sprintf("ping %d", i))
		total += len(ping)
		c := dial(t, addr)
		go func() {
			err := roundTrip(c, ping)
			established.Done()
			if err != nil {
				errs <- err
				return
			}
			<-start
			errs <- pipeline(c, fs)
		}()
	}
	established.Wait()
	if s := r.stats(); s.Accepted != conns || s.Open != conns || s.MaxOpen != conns {
		t.Errorf("with every connection open: stats %+v, want accepted, open and max_open %d", s, conns)
	}
	close(start)
	for range conns {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for range conns {
		<-finished
	}
	want := Stats{Accepted: conns, Open: 0, MaxOpen: conns, BytesUp: int64(total), BytesDown: int64(total)}
	if got := r.stats(); got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}
}

func TestRoundTripDelay(t *testing.T) {
	const delay = 30 * time.Millisecond
	_, addr := startRelay(t, startServer(t, echo), delay, nil)
	c := dial(t, addr)
	for i := range 5 {
		start := time.Now()
		if err := roundTrip(c, []byte(fmt.Sprint("ping ", i))); err != nil {
			t.Fatal(err)
		}
		if rtt := time.Since(start); rtt < 2*delay {
			t.Errorf("round trip %d took %v, want at least %v", i, rtt, 2*delay)
		}
	}
}

// TestPipelining sends messages back to back: each takes at least the
// round-trip delay, but they overlap instead of queueing behind each
// other's delay.
func TestPipelining(t *testing.T) {
	const delay, count = 50 * time.Millisecond, 20
	_, addr := startRelay(t, startServer(t, echo), delay, nil)
	c := dial(t, addr)
	var sent, back [count]time.Time
	for i := range count {
		sent[i] = time.Now()
		if _, err := fmt.Fprintf(c, "msg %04d", i); err != nil {
			t.Fatal(err)
		}
	}
	for i := range count {
		buf := make([]byte, 8)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		back[i] = time.Now()
		if want := fmt.Sprintf("msg %04d", i); string(buf) != want {
			t.Fatalf("read %q, want %q", buf, want)
		}
		if rtt := back[i].Sub(sent[i]); rtt < 2*delay {
			t.Errorf("message %d came back after %v, want at least %v", i, rtt, 2*delay)
		}
	}
	// Serialized behind each other's delay they would take count round
	// trips; overlapping, about one. The bound has a wide margin.
	if total := back[count-1].Sub(sent[0]); total >= count*2*delay {
		t.Errorf("%d pipelined messages took %v, want under %v: the delay held later messages back", count, total, count*2*delay)
	}
}

func TestCounters(t *testing.T) {
	done, finished := pairDone(16)
	r, addr := startRelay(t, startServer(t, echo), time.Millisecond, done)
	// Bytes are counted once written, which may be just after the peer has
	// read them; so they are checked only when every connection is done.
	check := func(what string, accepted, open, maxOpen int64) {
		t.Helper()
		if got := r.stats(); got.Accepted != accepted || got.Open != open || got.MaxOpen != maxOpen {
			t.Errorf("%s: stats %+v, want accepted %d, open %d, max_open %d", what, got, accepted, open, maxOpen)
		}
	}
	var cs []*net.TCPConn
	open := func(n int) {
		t.Helper()
		for range n {
			c := dial(t, addr)
			if err := roundTrip(c, []byte("ping")); err != nil {
				t.Fatal(err)
			}
			cs = append(cs, c)
		}
	}
	// finish half-closes the first n connections left, reads them to EOF
	// and waits until the relay has counted them out.
	finish := func(n int) {
		t.Helper()
		for _, c := range cs[:n] {
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if rest, err := io.ReadAll(c); err != nil || len(rest) > 0 {
				t.Fatalf("after half-close read %q, %v; want EOF", rest, err)
			}
		}
		for range n {
			<-finished
		}
		cs = cs[n:]
	}

	check("at start", 0, 0, 0)
	open(5)
	check("5 open", 5, 5, 5)
	finish(2)
	check("2 of 5 closed", 5, 3, 5)
	open(2)
	check("2 more", 7, 5, 5)
	open(1)
	check("1 more", 8, 6, 6)
	finish(len(cs))
	want := Stats{Accepted: 8, Open: 0, MaxOpen: 6, BytesUp: 32, BytesDown: 32}
	if got := r.stats(); got != want {
		t.Errorf("all closed: stats %+v, want %+v", got, want)
	}
}

// TestHalfClose: the client half-closes, the server sees EOF after what
// was sent, echoes and closes, and the client reads the echo then EOF.
func TestHalfClose(t *testing.T) {
	for _, delay := range []time.Duration{0, 10 * time.Millisecond} {
		t.Run(fmt.Sprint("delay=", delay), func(t *testing.T) {
			sawEOF := make(chan []byte, 1)
			server := startServer(t, func(c *net.TCPConn) {
				b, err := io.ReadAll(c)
				if err != nil {
					t.Errorf("server read: %v", err)
				}
				c.Write(b)
				sawEOF <- b
			})
			done, finished := pairDone(1)
			r, addr := startRelay(t, server, delay, done)
			c := dial(t, addr)
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if b := <-sawEOF; string(b) != "hello" {
				t.Errorf("server read %q before EOF, want %q", b, "hello")
			}
			if b, err := io.ReadAll(c); err != nil || string(b) != "hello" {
				t.Errorf("client read %q, %v before EOF; want %q", b, err, "hello")
			}
			<-finished
			if s := r.stats(); s.Open != 0 || s.BytesUp != 5 || s.BytesDown != 5 {
				t.Errorf("stats %+v, want open 0, 5 bytes each way", s)
			}
		})
	}
}

// TestHalfCloseFromUpstream: the server sends a banner and half-closes
// first; the client reads it to EOF and can still send.
func TestHalfCloseFromUpstream(t *testing.T) {
	for _, delay := range []time.Duration{0, 10 * time.Millisecond} {
		t.Run(fmt.Sprint("delay=", delay), func(t *testing.T) {
			serverRead := make(chan []byte, 1)
			server := startServer(t, func(c *net.TCPConn) {
				if _, err := c.Write([]byte("banner")); err != nil {
					t.Errorf("server write: %v", err)
				}
				if err := c.CloseWrite(); err != nil {
					t.Errorf("server half-close: %v", err)
				}
				b, err := io.ReadAll(c)
				if err != nil {
					t.Errorf("server read: %v", err)
				}
				serverRead <- b
			})
			done, finished := pairDone(1)
			_, addr := startRelay(t, server, delay, done)
			c := dial(t, addr)
			if b, err := io.ReadAll(c); err != nil || string(b) != "banner" {
				t.Fatalf("client read %q, %v before EOF; want %q", b, err, "banner")
			}
			if _, err := c.Write([]byte("after")); err != nil {
				t.Fatal(err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if b := <-serverRead; string(b) != "after" {
				t.Errorf("server read %q, want %q", b, "after")
			}
			<-finished
		})
	}
}

// TestDialFailure: when the upstream refuses, the client is closed.
func TestDialFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln.Addr().String()
	ln.Close()
	done, finished := pairDone(1)
	r, addr := startRelay(t, refused, 10*time.Millisecond, done)
	c := dial(t, addr)
	if b, err := io.ReadAll(c); len(b) > 0 {
		t.Errorf("read %q, %v; want nothing", b, err)
	}
	<-finished
	if s := r.stats(); s != (Stats{Accepted: 1, MaxOpen: 1}) {
		t.Errorf("stats %+v, want accepted 1, open 0", s)
	}
}

// TestClose: close ends connections with data still in flight.
func TestClose(t *testing.T) {
	r, addr := startRelay(t, startServer(t, echo), time.Hour, nil)
	c := dial(t, addr)
	if _, err := c.Write([]byte("never delivered")); err != nil {
		t.Fatal(err)
	}
	r.close()
	if b, _ := io.ReadAll(c); len(b) > 0 {
		t.Errorf("read %q after close, want nothing", b)
	}
	if s := r.stats(); s.Accepted != 1 || s.Open != 0 {
		t.Errorf("stats %+v, want accepted 1, open 0", s)
	}
}

func TestQueue(t *testing.T) {
	q := newQueue()
	t0 := time.Now()
	buf := make([]byte, maxPending)
	q.push(chunk{due: t0, buf: &buf, n: maxPending, class: bigClass})
	q.push(chunk{due: t0.Add(time.Second), eof: true})
	q.push(chunk{due: t0.Add(time.Second), buf: &buf, n: 1, class: bigClass})

	room := make(chan bool)
	go func() { room <- q.waitRoom() }()
	if due, ok := q.next(); !ok || !due.Equal(t0) {
		t.Fatalf("next: %v, %v; want %v, true", due, ok, t0)
	}
	if got := q.popDue(t0.Add(-time.Nanosecond), nil); len(got) != 0 {
		t.Fatalf("popDue before due: %d chunks, want 0", len(got))
	}
	if got := q.popDue(t0.Add(time.Second), nil); len(got) != 2 || got[0].n != maxPending || !got[1].eof {
		t.Fatalf("popDue: %+v; want the chunk then EOF, not the chunk after EOF", got)
	}
	if !<-room {
		t.Error("waitRoom after the queue drained: false, want true")
	}
	q.push(chunk{due: t0, buf: &buf, n: maxPending, class: bigClass})
	go func() { room <- q.waitRoom() }()
	q.close()
	q.close()
	if <-room {
		t.Error("waitRoom woken by close: true, want false")
	}
	if _, ok := q.next(); ok {
		t.Error("next after close: ok")
	}
	if q.waitRoom() {
		t.Error("waitRoom after close: true")
	}
	if q.push(chunk{n: 1}) {
		t.Error("push after close: true")
	}
}

func TestClassFor(t *testing.T) {
	for _, n := range []int{1, 511, 512, 513, 2048, 2049, 32 << 10, 32<<10 + 1, readSize} {
		c := classFor(n)
		if bufSizes[c] < n || (c > 0 && bufSizes[c-1] >= n) {
			t.Errorf("classFor(%d) = %d (size %d)", n, c, bufSizes[c])
		}
	}
}

// tlog writes run's log to the test log.
type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// TestRun drives the command: flags, -addr-file, SIGUSR1, SIGTERM and the
// stats written at exit. Signals go on an unbuffered channel, so once a
// send returns run has finished with any signal before it.
func TestRun(t *testing.T) {
	dir := t.TempDir()
	addrFile, statsFile := filepath.Join(dir, "addr"), filepath.Join(dir, "stats.json")
	upstream := startServer(t, echo)
	sigs := make(chan os.Signal)
	ran := make(chan error, 1)
	go func() {
		ran <- run([]string{"-listen", "127.0.0.1:0", "-to", upstream, "-delay", "5ms",
			"-stats", statsFile, "-addr-file", addrFile}, sigs, tlog{t})
	}()
	signal := func(s os.Signal) {
		t.Helper()
		select {
		case sigs <- s:
		case err := <-ran:
			t.Fatalf("run returned %v", err)
		}
	}
	readStats := func() string {
		t.Helper()
		b, err := os.ReadFile(statsFile)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	signal(syscall.SIGUSR1) // run is serving, so -addr-file is written
	b, err := os.ReadFile(addrFile)
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimSuffix(string(b), "\n")
	if host, _, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" || !strings.HasSuffix(string(b), "\n") {
		t.Fatalf("-addr-file holds %q, want 127.0.0.1:port and a newline", b)
	}
	c := dial(t, addr)
	if err := roundTrip(c, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	signal(syscall.SIGUSR1)
	signal(syscall.SIGUSR1) // the first has been handled
	if got, prefix := readStats(), `{"accepted":1,"open":1,"max_open":1,`; !strings.HasPrefix(got, prefix) {
		t.Errorf("stats on SIGUSR1: %q, want it to start %q", got, prefix)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(c); err != nil || len(rest) > 0 {
		t.Fatalf("after half-close read %q, %v; want EOF", rest, err)
	}
	signal(syscall.SIGTERM)
	if err := <-ran; err != nil {
		t.Fatalf("run: %v", err)
	}
	want := `{"accepted":1,"open":0,"max_open":1,"bytes_up":4,"bytes_down":4}` + "\n"
	if got := readStats(); got != want {
		t.Errorf("stats at exit: %q, want %q", got, want)
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("still accepting after SIGTERM")
	}
}

func TestRunFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-to", "127.0.0.1:1", "-delay", "-1s"},
		{"-to", "127.0.0.1:1", "extra"},
		{"-to", "127.0.0.1:1", "-listen", "not an address"},
		{"-nosuchflag"},
	} {
		if err := run(args, nil, io.Discard); err == nil {
			t.Errorf("run %q: nil error", args)
		}
	}
}
