package dot

import (
	"context"
	"crypto/tls"
	"errors"
	"time"
)

// Dials are single-flight: at most one is under way per pool. One that fails
// backs the pool off, doubling from minBackoff up to maxBackoff, or up to
// maxAuthBackoff when the server failed authentication.
const (
	minBackoff     = 250 * time.Millisecond
	maxBackoff     = 5 * time.Second
	maxAuthBackoff = time.Minute
)

// Retry lets the next Exchange dial at once, even while the pool backs off
// after a failed dial, unless that dial failed to authenticate the server.
// It is for health probes, which are paced already: an upstream that comes
// back is found by the next probe, not after the backoff.
func (p *Pool) Retry() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dialErr != nil && (p.cfg.IsAuth == nil || !p.cfg.IsAuth(p.dialErr)) {
		p.retryAt = time.Time{}
	}
}

// dialSoon starts a dial if the pool may open another connection now.
func (p *Pool) dialSoon() {
	if p.dialing.Load() || len(*p.conns.Load()) >= p.maxConns() { // the common case, without the lock
		return
	}
	p.mu.Lock()
	if p.canDialLocked() {
		p.startDialLocked()
	}
	p.mu.Unlock()
}

// canDialLocked reports whether the pool may start a dial now.
func (p *Pool) canDialLocked() bool {
	return !p.closed && !p.dialing.Load() && len(*p.conns.Load()) < p.maxConns() && !time.Now().Before(p.retryAt)
}

func (p *Pool) startDialLocked() {
	p.dialing.Store(true)
	p.wg.Add(1)
	go p.dial()
}

// dial opens one connection and adds it to the pool.
func (p *Pool) dial() {
	defer p.wg.Done()
	c, err := p.dialConn()
	var st *tls.ConnectionState
	if err == nil {
		cs := c.tc.ConnectionState()
		st = &cs
	}

	p.mu.Lock()
	p.dialing.Store(false)
	switch {
	case p.closed:
		if c != nil {
			c.raw.Close()
		}
		err = ErrClosed
	case err != nil:
		p.dialErr = err
		ceiling := maxBackoff
		if p.cfg.IsAuth != nil && p.cfg.IsAuth(err) {
			ceiling = maxAuthBackoff
		}
		p.backoff = min(max(2*p.backoff, minBackoff), ceiling)
		p.retryAt = time.Now().Add(p.backoff)
	default:
		p.dialErr, p.backoff, p.retryAt = nil, 0, time.Time{}
		conns := *p.conns.Load()
		p.conns.Store(new(append(conns[:len(conns):len(conns)], c)))
		p.wg.Add(2) // before Close can wait; started below
	}
	p.wakeLocked()
	p.mu.Unlock()

	if p.cfg.Events.Dialed != nil && !errors.Is(err, ErrClosed) {
		p.cfg.Events.Dialed(err, st)
	}
	if err == nil { // after Dialed, so that Closed cannot come first
		go func() {
			defer p.wg.Done()
			c.readLoop()
		}()
		go func() {
			defer p.wg.Done()
			c.writeLoop()
		}()
	}
}

// dialConn connects and completes the TLS handshake, so that nothing is ever
// written to a server that has not been verified.
func (p *Pool) dialConn() (*conn, error) {
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.Timeout)
	defer cancel()
	raw, err := p.dialTCP(ctx, "tcp", p.cfg.Addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, p.cfg.TLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return newConn(p, raw, tc, p.cfg.Timeout, p.cfg.MaxAge), nil
}
