// Command relay is a TCP relay that adds a fixed one-way delay in each
// direction. Benchmarks use it on loopback to put an upstream "delay away"
// on kernels without netem:
//
//	relay -listen 127.0.0.1:0 -addr-file relay.addr -to 127.0.0.1:8853 -delay 20ms -stats relay.json
//
// Every chunk read from one side is written to the other side exactly
// -delay after it was read, in order. Chunks are queued with their due time
// and a writer per direction sleeps until each one is due, so the delay is
// latency only: a chunk never waits behind an earlier chunk's delay, and
// pipelined traffic keeps its throughput. End of stream (FIN) is delayed the
// same way and passed on as a half-close. -delay 0 is a plain pass-through.
//
// With -stats FILE, SIGUSR1 and exit write one line of JSON to FILE:
//
//	{"accepted":N,"open":N,"max_open":N,"bytes_up":N,"bytes_down":N}
//
// accepted counts client connections accepted, open those not yet finished,
// max_open the most open at once, bytes_up the bytes delivered to the
// upstream and bytes_down the bytes delivered to clients. With -addr-file
// FILE, the address listened on is written to FILE once listening (for
// -listen with port 0). SIGINT and SIGTERM close everything and exit.
// Files are replaced atomically (written beside, then renamed).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// readSize is the most read from a connection at once.
	readSize = 64 << 10
	// maxPending is how many bytes a direction queues before it stops
	// reading until the writer catches up: backpressure, as a TCP window
	// would apply. 4 MiB per 20 ms is 200 MB/s per direction.
	maxPending = 4 << 20
	// maxBatch is the most chunks written with one writev.
	maxBatch = 256
	// dialTimeout bounds one dial of the upstream.
	dialTimeout = 10 * time.Second
)

// Buffers come from pools by size class. A chunk small enough for a smaller
// class is copied out of the read buffer into a buffer of that class; a
// larger one takes the read buffer itself, and the reader takes a fresh one.
// A buffer goes back to its pool only after its bytes have been written.
var (
	bufSizes = [...]int{512, 2 << 10, 8 << 10, 32 << 10, readSize}
	bufPools [len(bufSizes)]sync.Pool
)

const bigClass = len(bufSizes) - 1

func getBuf(class int) *[]byte {
	if p, ok := bufPools[class].Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, bufSizes[class])
	return &b
}

func putBuf(class int, p *[]byte) { bufPools[class].Put(p) }

// classFor returns the smallest size class that holds n bytes.
func classFor(n int) int {
	for i, s := range bufSizes {
		if n <= s {
			return i
		}
	}
	return bigClass
}

// Stats is what -stats writes.
type Stats struct {
	Accepted  int64 `json:"accepted"`
	Open      int64 `json:"open"`
	MaxOpen   int64 `json:"max_open"`
	BytesUp   int64 `json:"bytes_up"`
	BytesDown int64 `json:"bytes_down"`
}

// relay accepts connections, dials the upstream for each and copies both
// ways with the delay added. Set its fields before serve; close stops it.
type relay struct {
	to    string
	delay time.Duration
	logf  func(format string, args ...any)
	// onPairDone, if set, is called once a connection has finished and
	// been counted out of open (a test hook).
	onPairDone func()

	ctx    context.Context // canceled by close, to abort dials
	cancel context.CancelFunc

	accepted, open, maxOpen, bytesUp, bytesDown atomic.Int64

	mu     sync.Mutex
	closed bool
	lns    map[net.Listener]struct{}
	pairs  map[*pair]struct{}
	wg     sync.WaitGroup // serve loops and connection handlers
}

func newRelay(to string, delay time.Duration) *relay {
	ctx, cancel := context.WithCancel(context.Background())
	return &relay{
		to:     to,
		delay:  delay,
		logf:   func(string, ...any) {},
		ctx:    ctx,
		cancel: cancel,
		lns:    make(map[net.Listener]struct{}),
		pairs:  make(map[*pair]struct{}),
	}
}

// stats returns the counters now.
func (r *relay) stats() Stats {
	return Stats{
		Accepted:  r.accepted.Load(),
		Open:      r.open.Load(),
		MaxOpen:   r.maxOpen.Load(),
		BytesUp:   r.bytesUp.Load(),
		BytesDown: r.bytesDown.Load(),
	}
}

// serve accepts connections on ln until ln fails or close is called; it
// returns nil after close. ln is closed when serve returns.
func (r *relay) serve(ln net.Listener) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		ln.Close()
		return nil
	}
	r.lns[ln] = struct{}{}
	r.wg.Add(1)
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.lns, ln)
		r.mu.Unlock()
		ln.Close()
		r.wg.Done()
	}()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			r.mu.Lock()
			closed := r.closed
			r.mu.Unlock()
			if closed {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of descriptors and the like: wait and retry, as
			// net/http does.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			r.logf("accept: %v; retrying in %v", err, backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		r.accepted.Add(1)
		raiseTo(&r.maxOpen, r.open.Add(1))
		p := &pair{r: r, client: c}
		if r.delay > 0 {
			p.up, p.down = newQueue(), newQueue()
		}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			c.Close()
			r.pairDone()
			return nil
		}
		r.pairs[p] = struct{}{}
		r.wg.Add(1)
		r.mu.Unlock()
		go p.handle()
	}
}

// raiseTo sets v to n if n is larger.
func raiseTo(v *atomic.Int64, n int64) {
	for {
		m := v.Load()
		if n <= m || v.CompareAndSwap(m, n) {
			return
		}
	}
}

// pairDone counts a finished connection out of open.
func (r *relay) pairDone() {
	r.open.Add(-1)
	if r.onPairDone != nil {
		r.onPairDone()
	}
}

// close stops accepting, closes every connection and waits until every
// goroutine of the relay has returned. It may be called more than once.
func (r *relay) close() {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		r.cancel()
		for ln := range r.lns {
			ln.Close()
		}
		for p := range r.pairs {
			p.abort()
		}
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// pair is one client connection and its upstream connection.
type pair struct {
	r        *relay
	client   net.Conn
	up, down *queue // client to upstream, upstream to client; nil without delay

	mu       sync.Mutex
	upstream net.Conn // nil until dialed
	aborted  bool
}

// handle dials the upstream and relays until both directions are done.
func (p *pair) handle() {
	r := p.r
	defer func() {
		p.client.Close()
		p.mu.Lock()
		if p.upstream != nil {
			p.upstream.Close()
		}
		p.mu.Unlock()
		r.mu.Lock()
		delete(r.pairs, p)
		r.mu.Unlock()
		r.pairDone()
		r.wg.Done()
	}()

	d := net.Dialer{Timeout: dialTimeout}
	up, err := d.DialContext(r.ctx, "tcp", r.to)
	if err != nil {
		if r.ctx.Err() == nil {
			r.logf("dial %s: %v", r.to, err)
		}
		return
	}
	p.mu.Lock()
	aborted := p.aborted
	if !aborted {
		p.upstream = up
	}
	p.mu.Unlock()
	if aborted {
		up.Close()
		return
	}
	setNoDelay(p.client)
	setNoDelay(up)

	var wg sync.WaitGroup
	if r.delay <= 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.copy(p.client, up, &r.bytesDown)
		}()
		p.copy(up, p.client, &r.bytesUp)
		wg.Wait()
		return
	}
	wg.Add(3)
	go func() {
		defer wg.Done()
		p.read(p.client, p.up)
	}()
	go func() {
		defer wg.Done()
		p.read(up, p.down)
	}()
	go func() {
		defer wg.Done()
		p.write(p.client, p.down, &r.bytesDown)
	}()
	p.write(up, p.up, &r.bytesUp)
	wg.Wait()
}

// abort closes both connections and both queues, which ends every
// goroutine of the pair.
func (p *pair) abort() {
	p.mu.Lock()
	if p.aborted {
		p.mu.Unlock()
		return
	}
	p.aborted = true
	up := p.upstream
	p.mu.Unlock()
	p.client.Close()
	if up != nil {
		up.Close()
	}
	if p.up != nil {
		p.up.close()
		p.down.close()
	}
}

func setNoDelay(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true) // Go's default; made explicit
	}
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("connection cannot half-close")
}

// copy relays src to dst with no delay. At EOF it half-closes dst; on any
// error it aborts the pair.
func (p *pair) copy(dst, src net.Conn, count *atomic.Int64) {
	buf := getBuf(bigClass)
	defer putBuf(bigClass, buf)
	for {
		n, err := src.Read(*buf)
		if n > 0 {
			m, werr := dst.Write((*buf)[:n])
			count.Add(int64(m))
			if werr != nil {
				p.abort()
				return
			}
		}
		if err != nil {
			if err != io.EOF || closeWrite(dst) != nil {
				p.abort()
			}
			return
		}
	}
}

// read queues what it reads from src, each chunk due delay after it was
// read, then an EOF marker due delay after EOF. On an error it aborts.
func (p *pair) read(src net.Conn, q *queue) {
	delay := p.r.delay
	buf := getBuf(bigClass)
	defer func() { putBuf(bigClass, buf) }()
	for {
		if !q.waitRoom() {
			return
		}
		n, err := src.Read(*buf)
		if n > 0 {
			c := chunk{due: time.Now().Add(delay), n: n}
			if class := classFor(n); class < bigClass {
				c.class, c.buf = class, getBuf(class)
				copy(*c.buf, (*buf)[:n])
			} else {
				c.class, c.buf = bigClass, buf
				buf = getBuf(bigClass)
			}
			if !q.push(c) {
				putBuf(c.class, c.buf)
				return
			}
		}
		if err != nil {
			if err == io.EOF {
				q.push(chunk{due: time.Now().Add(delay), eof: true})
			} else {
				p.abort()
			}
			return
		}
	}
}

// write sleeps until the first queued chunk is due, then writes it and
// every other chunk due by then with one writev. At the EOF marker it
// half-closes dst and returns; on an error it aborts the pair.
func (p *pair) write(dst net.Conn, q *queue, count *atomic.Int64) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var (
		batch []chunk
		vec   [][]byte
	)
	for {
		due, ok := q.next()
		if !ok {
			return
		}
		if wait := time.Until(due); wait > 0 {
			// Timers are synchronous since Go 1.23: after Stop or
			// Reset no stale tick can be received.
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-q.done:
				timer.Stop()
				return
			}
		}
		batch = q.popDue(time.Now(), batch[:0])
		eof := false
		vec = vec[:0]
		for _, c := range batch {
			if c.eof {
				eof = true
			} else {
				vec = append(vec, (*c.buf)[:c.n])
			}
		}
		var err error
		if len(vec) > 0 {
			bufs := net.Buffers(vec) // WriteTo consumes bufs, not vec
			var n int64
			n, err = bufs.WriteTo(dst)
			count.Add(n)
			clear(vec)
		}
		for i, c := range batch {
			if !c.eof {
				putBuf(c.class, c.buf)
			}
			batch[i] = chunk{}
		}
		if err == nil && eof {
			err = closeWrite(dst)
		}
		if err != nil {
			p.abort()
			return
		}
		if eof {
			return
		}
	}
}

// chunk is bytes read, or the end of the stream, with when to deliver it.
type chunk struct {
	due   time.Time
	buf   *[]byte // pooled, class class; bytes are (*buf)[:n]
	n     int
	class int
	eof   bool
}

// queue holds one direction's chunks in order of due time, which is the
// order read since the delay is constant and time.Now is monotonic.
type queue struct {
	mu       sync.Mutex
	nonEmpty sync.Cond // the writer waits for a chunk
	hasRoom  sync.Cond // the reader waits for pending < maxPending
	items    []chunk   // items[head:] are queued
	head     int
	pending  int // bytes queued
	closed   bool
	done     chan struct{} // closed by close
}

func newQueue() *queue {
	q := &queue{done: make(chan struct{})}
	q.nonEmpty.L = &q.mu
	q.hasRoom.L = &q.mu
	return q
}

// waitRoom waits until fewer than maxPending bytes are queued. It reports
// false if the queue was closed.
func (q *queue) waitRoom() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.pending >= maxPending && !q.closed {
		q.hasRoom.Wait()
	}
	return !q.closed
}

// push queues c. It reports false if the queue was closed.
func (q *queue) push(c chunk) bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	if q.head > 0 && len(q.items) == cap(q.items) {
		// Reuse the space of chunks already taken instead of growing.
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	q.items = append(q.items, c)
	q.pending += c.n
	wasEmpty := len(q.items)-q.head == 1
	q.mu.Unlock()
	if wasEmpty {
		q.nonEmpty.Signal()
	}
	return true
}

// next waits for a chunk and returns when the first is due. It reports
// false if the queue was closed.
func (q *queue) next() (time.Time, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.head == len(q.items) && !q.closed {
		q.nonEmpty.Wait()
	}
	if q.closed {
		return time.Time{}, false
	}
	return q.items[q.head].due, true
}

// popDue takes the chunks due by now, in order, appending them to dst: at
// most maxBatch, and none after an EOF marker.
func (q *queue) popDue(now time.Time, dst []chunk) []chunk {
	q.mu.Lock()
	before := q.pending
	for q.head < len(q.items) && len(dst) < maxBatch {
		c := q.items[q.head]
		if c.due.After(now) {
			break
		}
		q.items[q.head] = chunk{}
		q.head++
		q.pending -= c.n
		dst = append(dst, c)
		if c.eof {
			break
		}
	}
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
	room := before >= maxPending && q.pending < maxPending
	q.mu.Unlock()
	if room {
		q.hasRoom.Signal()
	}
	return dst
}

// close drops what is queued and wakes both waiters for good.
func (q *queue) close() {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.closed = true
	clear(q.items)
	q.items, q.head, q.pending = nil, 0, 0
	close(q.done)
	q.mu.Unlock()
	q.nonEmpty.Broadcast()
	q.hasRoom.Broadcast()
}

// writeFileAtomic writes data to a temporary file beside path and renames
// it over path, so that a reader sees the old contents or the new, whole.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

func writeStats(path string, s Stats) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'))
}

// run is the command: it parses args, relays until SIGINT or SIGTERM
// arrives on sigs, and writes stats on SIGUSR1 and before it returns.
func run(args []string, sigs <-chan os.Signal, stderr io.Writer) error {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	to := fs.String("to", "", "upstream address to relay to (required)")
	delay := fs.Duration("delay", 0, "one-way delay added in each direction; 0 passes through")
	statsFile := fs.String("stats", "", "file to write JSON counters to on SIGUSR1 and at exit")
	addrFile := fs.String("addr-file", "", "file to write the address listened on to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	case *to == "":
		return errors.New("-to is required")
	case *delay < 0:
		return fmt.Errorf("-delay %v is negative", *delay)
	}
	logger := log.New(stderr, "relay: ", log.LstdFlags)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	r := newRelay(*to, *delay)
	r.logf = logger.Printf
	if *addrFile != "" {
		if err := writeFileAtomic(*addrFile, []byte(ln.Addr().String()+"\n")); err != nil {
			ln.Close()
			return err
		}
	}
	logger.Printf("listening on %s, relaying to %s with %v each way", ln.Addr(), *to, *delay)
	dump := func() error {
		if *statsFile == "" {
			return nil
		}
		return writeStats(*statsFile, r.stats())
	}

	served := make(chan error, 1)
	go func() { served <- r.serve(ln) }()
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGUSR1 {
				if err := dump(); err != nil {
					logger.Printf("stats: %v", err)
				}
				continue
			}
			r.close()
			<-served
			return dump()
		case err := <-served:
			r.close()
			return errors.Join(fmt.Errorf("serve: %w", err), dump())
		}
	}
}

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGUSR1)
	if err := run(os.Args[1:], sigs, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(2)
	}
}
