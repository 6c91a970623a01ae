package pin_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
	"github.com/dotstub/dotstub/plugin/pin"
)

// sample is a fixed pin: the bytes 0..31.
var sample = func() pin.Pin {
	var p pin.Pin
	for i := range p {
		p[i] = byte(i)
	}
	return p
}()

func b64(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }

func TestParse(t *testing.T) {
	s := base64.StdEncoding.EncodeToString(sample[:])
	tests := []struct {
		name    string
		input   string
		want    pin.Pin
		wantErr string // substring; empty means success
	}{
		{name: "valid", input: s, want: sample},
		{name: "sha256 prefix", input: "sha256/" + s, want: sample},
		{name: "all zero", input: b64(32), want: pin.Pin{}},
		{name: "empty", input: "", wantErr: "is not base64 of a 32-byte SHA-256 digest"},
		{name: "prefix only", input: "sha256/", wantErr: "is not base64"},
		{name: "prefix twice", input: "sha256/sha256/" + s, wantErr: "is not base64"},
		{name: "upper-case prefix", input: "SHA256/" + s, wantErr: "is not base64"},
		{name: "31 bytes", input: b64(31), wantErr: "32-byte"},
		{name: "33 bytes", input: b64(33), wantErr: "32-byte"},
		{name: "sha1 length", input: b64(20), wantErr: "32-byte"},
		{name: "not base64", input: "not a pin!", wantErr: "is not base64"},
		{name: "bad character", input: "*" + s[1:], wantErr: "is not base64"},
		{name: "unpadded", input: strings.TrimRight(s, "="), wantErr: "is not base64"},
		{name: "url alphabet", input: base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb, 0xff}, 16)), wantErr: "is not base64"},
		{name: "trailing garbage", input: s + "AAAA", wantErr: "32-byte"},
		{name: "space padded", input: " " + s, wantErr: "is not base64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pin.Parse(tc.input)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("Parse(%q) = %v, want error containing %q", tc.input, got, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q) error %q, want it to contain %q", tc.input, err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.input)) {
					t.Errorf("Parse(%q) error %q does not quote the input", tc.input, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.input, err)
			}
			if got != tc.want {
				t.Fatalf("Parse(%q) = %v, want %v", tc.input, got, tc.want)
			}
		})
	}
}

func TestStringRoundTrip(t *testing.T) {
	var random pin.Pin
	if _, err := rand.Read(random[:]); err != nil {
		t.Fatal(err)
	}
	for _, p := range []pin.Pin{{}, sample, random} {
		s := p.String()
		if len(s) != 44 || !strings.HasSuffix(s, "=") {
			t.Errorf("String() = %q, want 44 characters of padded base64", s)
		}
		if want := base64.StdEncoding.EncodeToString(p[:]); s != want {
			t.Errorf("String() = %q, want %q", s, want)
		}
		for _, in := range []string{s, "sha256/" + s} {
			got, err := pin.Parse(in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", in, err)
			}
			if got != p {
				t.Errorf("Parse(%q) = %v, want %v", in, got, p)
			}
		}
	}
}

// TestOf checks Of against an independent encoding of the public key, so the
// pin is of the SubjectPublicKeyInfo and not of the whole certificate.
func TestOf(t *testing.T) {
	ca, err := dottest.NewCA(t.Name())
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue([]string{"of.test"}, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	for _, cert := range []*x509.Certificate{ca.Cert, leaf.Cert} {
		spki, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := pin.Of(cert), pin.Pin(sha256.Sum256(spki)); got != want {
			t.Errorf("Of(%s) = %v, want %v", cert.Subject, got, want)
		}
		if pin.Of(cert) == pin.Pin(sha256.Sum256(cert.Raw)) {
			t.Errorf("Of(%s) hashes the whole certificate", cert.Subject)
		}
	}
	if ca.Pin() == leaf.Pin() {
		t.Error("CA and leaf have the same pin")
	}
}

func TestParseSet(t *testing.T) {
	a := sample.String()
	var other pin.Pin
	other[0] = 0xff
	b := other.String()
	tests := []struct {
		name    string
		input   []string
		want    pin.Set
		wantErr string
	}{
		{name: "nil", input: nil, want: pin.Set{}},
		{name: "one", input: []string{a}, want: pin.Set{sample}},
		{name: "two in order", input: []string{b, "sha256/" + a}, want: pin.Set{other, sample}},
		{name: "duplicate", input: []string{a, b, a}, wantErr: fmt.Sprintf("%q is given twice", a)},
		{name: "duplicate across prefix", input: []string{a, "sha256/" + a}, wantErr: fmt.Sprintf("%q is given twice", "sha256/"+a)},
		{name: "bad element", input: []string{a, "nope"}, wantErr: `"nope" is not base64`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pin.ParseSet(tc.input)
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseSet(%q) = %v, want error containing %q", tc.input, got, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseSet(%q) error %q, want it to contain %q", tc.input, err, tc.wantErr)
				}
				if got != nil {
					t.Errorf("ParseSet(%q) returned %v with its error", tc.input, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSet(%q): %v", tc.input, err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("ParseSet(%q) = %v, want %v", tc.input, got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("ParseSet(%q) = %v, want %v", tc.input, got, tc.want)
				}
			}
		})
	}
}

// randomPin is a pin of no certificate.
func randomPin(t *testing.T) pin.Pin {
	t.Helper()
	var p pin.Pin
	if _, err := rand.Read(p[:]); err != nil {
		t.Fatal(err)
	}
	return p
}

// clientConfig is the configuration a DoT client uses for srv, trusting roots.
func clientConfig(roots *x509.CertPool, set pin.Set) *tls.Config {
	cfg := &tls.Config{RootCAs: roots, ServerName: dottest.DefaultName, MinVersion: tls.VersionTLS12}
	set.Apply(cfg)
	return cfg
}

// handshake connects to addr and completes a TLS handshake with cfg. On
// success the connection is closed when the test ends; on failure it is closed
// before handshake returns.
func handshake(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	// A deadline, not a sleep: a hung handshake fails the test instead of
	// stalling it.
	if err := raw.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, cfg)
	if err := c.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c, nil
}

// exchange sends one A query over c and checks the answer. Reading the answer
// also makes the client process any TLS 1.3 session ticket sent before it.
// It returns the number of bytes written.
func exchange(t *testing.T, c *tls.Conn) int {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion("pin.test.", dns.TypeA)
	buf, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	frame := binary.BigEndian.AppendUint16(nil, uint16(len(buf)))
	frame = append(frame, buf...)
	if _, err := c.Write(frame); err != nil {
		t.Fatal(err)
	}
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatal(err)
	}
	a := new(dns.Msg)
	if err := a.Unpack(body); err != nil {
		t.Fatal(err)
	}
	if a.Id != q.Id || len(a.Answer) != 1 {
		t.Fatalf("answer %v does not answer %v", a, q)
	}
	if rr, ok := a.Answer[0].(*dns.A); !ok || !rr.A.Equal(net.IPv4(192, 0, 2, 1)) {
		t.Fatalf("answer %v, want A 192.0.2.1", a.Answer[0])
	}
	return len(frame)
}

func TestVerifyHandshake(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	leaf, ca := srv.Leaf.Pin(), srv.CA.Pin()
	tests := []struct {
		name     string
		set      pin.Set
		mismatch bool
	}{
		{name: "no pins", set: nil},
		{name: "leaf pin", set: pin.Set{leaf}},
		{name: "CA pin", set: pin.Set{ca}},
		{name: "backup leaf pin", set: pin.Set{randomPin(t), leaf}},
		{name: "backup CA pin", set: pin.Set{randomPin(t), randomPin(t), ca}},
		{name: "leaf and CA", set: pin.Set{leaf, ca}},
		{name: "mismatch", set: pin.Set{randomPin(t)}, mismatch: true},
		{name: "mismatch of two", set: pin.Set{randomPin(t), randomPin(t)}, mismatch: true},
	}
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, tc := range tests {
			t.Run(fmt.Sprintf("%s/%s", tls.VersionName(version), tc.name), func(t *testing.T) {
				cfg := clientConfig(srv.CA.Pool, tc.set)
				cfg.MaxVersion = version
				c, err := handshake(t, srv.Addr, cfg)
				if tc.mismatch {
					if !errors.Is(err, pin.ErrMismatch) {
						t.Fatalf("handshake error %v, want %v", err, pin.ErrMismatch)
					}
					if !strings.Contains(err.Error(), leaf.String()) {
						t.Errorf("error %q does not name the leaf pin %s", err, leaf)
					}
					return
				}
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				if got := c.ConnectionState().Version; got != version {
					t.Errorf("negotiated %s, want %s", tls.VersionName(got), tls.VersionName(version))
				}
				exchange(t, c)
			})
		}
	}
}

// TestVerifyUntrustedChain: the server presents a leaf of CA B, the client
// trusts only CA A. Pins of B's certificates, which the server does send, do
// not rescue the connection: chain verification fails before pins are looked at.
func TestVerifyUntrustedChain(t *testing.T) {
	caA, err := dottest.NewCA("CA A")
	if err != nil {
		t.Fatal(err)
	}
	caB, err := dottest.NewCA("CA B")
	if err != nil {
		t.Fatal(err)
	}
	leafB, err := caB.Issue([]string{dottest.DefaultName}, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	srv := dottest.New(t, dottest.Options{CA: caB, Leaf: leafB})
	for _, tc := range []struct {
		name string
		set  pin.Set
	}{
		{name: "leaf pin", set: pin.Set{leafB.Pin()}},
		{name: "CA pin", set: pin.Set{caB.Pin()}},
		{name: "both", set: pin.Set{caA.Pin(), leafB.Pin(), caB.Pin()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &tls.Config{RootCAs: caA.Pool, ServerName: dottest.DefaultName, MinVersion: tls.VersionTLS12}
			called := 0
			cfg.VerifyConnection = func(tls.ConnectionState) error { called++; return nil }
			tc.set.Apply(cfg)
			_, err := handshake(t, srv.Addr, cfg)
			if err == nil {
				t.Fatal("handshake with an untrusted chain succeeded")
			}
			if errors.Is(err, pin.ErrMismatch) {
				t.Fatalf("handshake error %v, want a chain verification error", err)
			}
			var unknown x509.UnknownAuthorityError
			if !errors.As(err, &unknown) {
				t.Fatalf("handshake error %v (%T), want x509.UnknownAuthorityError", err, err)
			}
			if called != 0 {
				t.Errorf("VerifyConnection ran %d times for an unverified chain", called)
			}
		})
	}
}

// TestVerifySentButUnverifiedCert: the server's chain verifies to CA A but it
// also sends CA B's certificate. A pin of CA B must not match, because B is
// not in the verified chain.
func TestVerifySentButUnverifiedCert(t *testing.T) {
	caA, err := dottest.NewCA("CA A")
	if err != nil {
		t.Fatal(err)
	}
	caB, err := dottest.NewCA("CA B")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := caA.Issue([]string{dottest.DefaultName}, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	extra := *leaf
	extra.TLS.Certificate = append(append([][]byte(nil), leaf.TLS.Certificate...), caB.Cert.Raw)
	srv := dottest.New(t, dottest.Options{CA: caA, Leaf: &extra})

	for _, tc := range []struct {
		name     string
		set      pin.Set
		mismatch bool
	}{
		{name: "pin of the sent extra CA", set: pin.Set{caB.Pin()}, mismatch: true},
		{name: "pin of the verified CA", set: pin.Set{caA.Pin()}},
		{name: "pin of the leaf", set: pin.Set{leaf.Pin()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &tls.Config{RootCAs: caA.Pool, ServerName: dottest.DefaultName, MinVersion: tls.VersionTLS12}
			sentB := false
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				for _, c := range cs.PeerCertificates {
					sentB = sentB || c.Equal(caB.Cert)
				}
				return nil
			}
			tc.set.Apply(cfg)
			_, err := handshake(t, srv.Addr, cfg)
			if !sentB {
				t.Fatal("the server did not send CA B's certificate; the test proves nothing")
			}
			if tc.mismatch {
				if !errors.Is(err, pin.ErrMismatch) {
					t.Fatalf("handshake error %v, want %v", err, pin.ErrMismatch)
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
		})
	}
}

// TestVerifyOnlyVerifiedChains calls Verify directly with connection states
// that no handshake produces, to pin down which certificates count.
func TestVerifyOnlyVerifiedChains(t *testing.T) {
	caA, err := dottest.NewCA("CA A")
	if err != nil {
		t.Fatal(err)
	}
	caB, err := dottest.NewCA("CA B")
	if err != nil {
		t.Fatal(err)
	}
	leafA, err := caA.Issue([]string{"a.test"}, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	leafB, err := caB.Issue([]string{"b.test"}, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	chainA := []*x509.Certificate{leafA.Cert, caA.Cert}
	chainB := []*x509.Certificate{leafB.Cert, caB.Cert}
	tests := []struct {
		name     string
		set      pin.Set
		cs       tls.ConnectionState
		mismatch bool
		leafPin  string // in the mismatch error
	}{
		{
			name: "empty set accepts anything",
			set:  nil,
			cs:   tls.ConnectionState{},
		},
		{
			name:     "sent but no verified chain",
			set:      pin.Set{leafB.Pin(), caB.Pin()},
			cs:       tls.ConnectionState{PeerCertificates: chainB},
			mismatch: true,
			leafPin:  leafB.Pin().String(),
		},
		{
			name:     "sent leaf not in verified chain",
			set:      pin.Set{leafB.Pin()},
			cs:       tls.ConnectionState{PeerCertificates: chainB, VerifiedChains: [][]*x509.Certificate{chainA}},
			mismatch: true,
			leafPin:  leafB.Pin().String(),
		},
		{
			name:     "sent intermediate not in verified chain",
			set:      pin.Set{caB.Pin()},
			cs:       tls.ConnectionState{PeerCertificates: append([]*x509.Certificate{leafA.Cert, caB.Cert}, caA.Cert), VerifiedChains: [][]*x509.Certificate{chainA}},
			mismatch: true,
			leafPin:  leafA.Pin().String(),
		},
		{
			name:     "no certificates at all",
			set:      pin.Set{caA.Pin()},
			cs:       tls.ConnectionState{},
			mismatch: true,
			leafPin:  "none",
		},
		{
			name: "verified leaf",
			set:  pin.Set{leafA.Pin()},
			cs:   tls.ConnectionState{PeerCertificates: chainA, VerifiedChains: [][]*x509.Certificate{chainA}},
		},
		{
			name: "verified root",
			set:  pin.Set{caA.Pin()},
			cs:   tls.ConnectionState{PeerCertificates: chainA[:1], VerifiedChains: [][]*x509.Certificate{chainA}},
		},
		{
			name: "match in second verified chain",
			set:  pin.Set{caB.Pin()},
			cs:   tls.ConnectionState{PeerCertificates: chainA, VerifiedChains: [][]*x509.Certificate{chainA, {leafA.Cert, caB.Cert}}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.set.Verify(tc.cs)
			if !tc.mismatch {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			if !errors.Is(err, pin.ErrMismatch) {
				t.Fatalf("Verify error %v, want %v", err, pin.ErrMismatch)
			}
			if want := "(leaf pin " + tc.leafPin + ")"; !strings.Contains(err.Error(), want) {
				t.Errorf("Verify error %q, want it to contain %q", err, want)
			}
		})
	}
}

// TestVerifyResumed checks that pins hold on resumed sessions, which skip
// certificate verification (and VerifyPeerCertificate) altogether.
func TestVerifyResumed(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			srv := dottest.New(t, dottest.Options{})

			// config returns a client configuration sharing cache, with a hook
			// that runs before the pins and records what the handshake saw.
			type seen struct{ verifyConn, verifyPeer, didResume int }
			config := func(cache tls.ClientSessionCache, set pin.Set, s *seen) *tls.Config {
				cfg := &tls.Config{
					RootCAs:            srv.CA.Pool,
					ServerName:         dottest.DefaultName,
					MinVersion:         tls.VersionTLS12,
					MaxVersion:         version,
					ClientSessionCache: cache,
					VerifyPeerCertificate: func([][]byte, [][]*x509.Certificate) error {
						s.verifyPeer++
						return nil
					},
					VerifyConnection: func(cs tls.ConnectionState) error {
						s.verifyConn++
						if cs.DidResume {
							s.didResume++
						}
						return nil
					},
				}
				set.Apply(cfg)
				return cfg
			}
			// prime makes a full handshake with a matching pin and reads an
			// answer, so the session ticket is stored in a fresh cache.
			prime := func(t *testing.T) tls.ClientSessionCache {
				cache := tls.NewLRUClientSessionCache(4)
				var s seen
				c, err := handshake(t, srv.Addr, config(cache, pin.Set{srv.Leaf.Pin()}, &s))
				if err != nil {
					t.Fatalf("first handshake: %v", err)
				}
				if c.ConnectionState().DidResume {
					t.Fatal("first handshake resumed")
				}
				exchange(t, c)
				if s != (seen{verifyConn: 1, verifyPeer: 1}) {
					t.Fatalf("first handshake: %+v", s)
				}
				if cs, ok := cache.Get(dottest.DefaultName); !ok || cs == nil {
					t.Fatal("no session stored after the first handshake")
				}
				return cache
			}

			t.Run("matching set resumes", func(t *testing.T) {
				cache := prime(t)
				resumedBefore := srv.Resumed()
				var s seen
				c, err := handshake(t, srv.Addr, config(cache, pin.Set{randomPin(t), srv.CA.Pin()}, &s))
				if err != nil {
					t.Fatalf("second handshake: %v", err)
				}
				if !c.ConnectionState().DidResume {
					t.Fatal("second handshake did not resume")
				}
				exchange(t, c) // the server counted the handshake before it read the query
				if got := srv.Resumed() - resumedBefore; got != 1 {
					t.Errorf("server counted %d resumed handshakes, want 1", got)
				}
				if s != (seen{verifyConn: 1, didResume: 1}) {
					t.Errorf("resumed handshake: %+v, want VerifyConnection only", s)
				}
			})

			t.Run("mismatching set fails on resumption", func(t *testing.T) {
				cache := prime(t)
				var s seen
				_, err := handshake(t, srv.Addr, config(cache, pin.Set{randomPin(t)}, &s))
				if !errors.Is(err, pin.ErrMismatch) {
					t.Fatalf("resumed handshake error %v, want %v", err, pin.ErrMismatch)
				}
				if s != (seen{verifyConn: 1, didResume: 1}) {
					t.Errorf("failed handshake: %+v, want one resumed VerifyConnection and no certificate verification", s)
				}
			})
		})
	}
}

func TestApplyKeepsVerifyConnection(t *testing.T) {
	ca, err := dottest.NewCA(t.Name())
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue([]string{"apply.test"}, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	chain := []*x509.Certificate{leaf.Cert, ca.Cert}
	cs := tls.ConnectionState{PeerCertificates: chain, VerifiedChains: [][]*x509.Certificate{chain}}
	errPrev := errors.New("previous check failed")

	tests := []struct {
		name    string
		prevErr error
		set     pin.Set
		wantErr error
	}{
		{name: "both pass", set: pin.Set{leaf.Pin()}},
		{name: "previous fails first", prevErr: errPrev, set: pin.Set{randomPin(t)}, wantErr: errPrev},
		{name: "previous fails, pin matches", prevErr: errPrev, set: pin.Set{leaf.Pin()}, wantErr: errPrev},
		{name: "previous passes, pin fails", set: pin.Set{randomPin(t)}, wantErr: pin.ErrMismatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			cfg := &tls.Config{VerifyConnection: func(got tls.ConnectionState) error {
				calls++
				if len(got.VerifiedChains) != 1 || !got.VerifiedChains[0][0].Equal(leaf.Cert) {
					t.Errorf("previous VerifyConnection got another state: %+v", got)
				}
				return tc.prevErr
			}}
			tc.set.Apply(cfg)
			err := cfg.VerifyConnection(cs)
			if calls != 1 {
				t.Errorf("previous VerifyConnection ran %d times, want 1", calls)
			}
			if tc.wantErr == nil && err != nil {
				t.Fatalf("VerifyConnection: %v", err)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("VerifyConnection error %v, want %v", err, tc.wantErr)
			}
			// The previous check's error is returned as is, not as a mismatch.
			if tc.wantErr == errPrev && err != errPrev {
				t.Errorf("VerifyConnection error %v, want exactly %v", err, errPrev)
			}
		})
	}
}

func TestApplyEmptySet(t *testing.T) {
	for _, set := range []pin.Set{nil, {}} {
		cfg := &tls.Config{}
		set.Apply(cfg)
		if cfg.VerifyConnection != nil {
			t.Errorf("Apply(%#v) set VerifyConnection", set)
		}

		called := false
		cfg = &tls.Config{VerifyConnection: func(tls.ConnectionState) error { called = true; return nil }}
		set.Apply(cfg)
		if err := cfg.VerifyConnection(tls.ConnectionState{}); err != nil || !called {
			t.Errorf("Apply(%#v) replaced an existing VerifyConnection (err %v, called %v)", set, err, called)
		}
	}
}

// TestMismatchSendsNoApplicationData: a client whose pins do not match never
// finishes the handshake, so the server reads no query bytes from it. The pool
// relies on this: a query is never written to an unpinned server.
func TestMismatchSendsNoApplicationData(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			t.Run("mismatch", func(t *testing.T) {
				srv := dottest.New(t, dottest.Options{})
				cfg := clientConfig(srv.CA.Pool, pin.Set{randomPin(t)})
				cfg.MaxVersion = version
				if _, err := handshake(t, srv.Addr, cfg); !errors.Is(err, pin.ErrMismatch) {
					t.Fatalf("handshake error %v, want %v", err, pin.ErrMismatch)
				}
				srv.Close() // waits for the server's connection goroutine
				if got := srv.Accepted(); got != 1 {
					t.Errorf("Accepted() = %d, want 1", got)
				}
				if got := srv.Handshakes(); got != 0 {
					t.Errorf("Handshakes() = %d, want 0: the server completed a handshake the client rejected", got)
				}
				if got := srv.BytesRead(); got != 0 {
					t.Errorf("BytesRead() = %d, want 0", got)
				}
				if got := srv.Queries(); got != 0 {
					t.Errorf("Queries() = %d, want 0", got)
				}
			})
			// The counters do count: the same exchange with a matching pin.
			t.Run("control", func(t *testing.T) {
				srv := dottest.New(t, dottest.Options{})
				cfg := clientConfig(srv.CA.Pool, pin.Set{srv.Leaf.Pin()})
				cfg.MaxVersion = version
				c, err := handshake(t, srv.Addr, cfg)
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				n := exchange(t, c)
				c.Close()
				srv.Close()
				if srv.Handshakes() != 1 || srv.BytesRead() != n || srv.Queries() != 1 {
					t.Errorf("Handshakes, BytesRead, Queries = %d, %d, %d, want 1, %d, 1",
						srv.Handshakes(), srv.BytesRead(), srv.Queries(), n)
				}
			})
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"",
		"sha256/",
		sample.String(),
		"sha256/" + sample.String(),
		"sha256/sha256/" + sample.String(),
		strings.TrimRight(sample.String(), "="),
		b64(31), b64(33),
		"not base64",
		"AAAA\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
		"====",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := pin.Parse(s)
		if err != nil {
			if p != (pin.Pin{}) {
				t.Errorf("Parse(%q) returned %v with error %v", s, p, err)
			}
			return
		}
		for _, in := range []string{p.String(), "sha256/" + p.String()} {
			q, err := pin.Parse(in)
			if err != nil {
				t.Fatalf("Parse(%q) = %v, but Parse(%q): %v", s, p, in, err)
			}
			if q != p {
				t.Fatalf("Parse(%q) = %v, Parse(%q) = %v", s, p, in, q)
			}
		}
	})
}
