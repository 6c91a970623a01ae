package pin_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dotstub/dotstub/plugin/dottest"
	"github.com/dotstub/dotstub/plugin/pin"
)

// reports collects what ApplyReportOnly reports. Handshakes in these tests
// run on the test's goroutine, so it needs no lock.
type reports []error

func (r *reports) report(err error) { *r = append(*r, err) }

// reportOnlyConfig is clientConfig with the pins in report-only mode.
func reportOnlyConfig(roots *x509.CertPool, set pin.Set, r *reports) *tls.Config {
	cfg := &tls.Config{RootCAs: roots, ServerName: dottest.DefaultName, MinVersion: tls.VersionTLS12}
	set.ApplyReportOnly(cfg, r.report)
	return cfg
}

func TestMismatchError(t *testing.T) {
	e := &pin.MismatchError{Leaf: sample}
	if !errors.Is(e, pin.ErrMismatch) {
		t.Errorf("%v is not ErrMismatch", e)
	}
	if want := pin.ErrMismatch.Error() + " (leaf pin " + sample.String() + ")"; e.Error() != want {
		t.Errorf("Error() = %q, want %q", e, want)
	}
	if got := (&pin.MismatchError{}).Error(); !strings.HasSuffix(got, "(leaf pin none)") {
		t.Errorf("Error() without a leaf = %q, want it to end in (leaf pin none)", got)
	}
	var me *pin.MismatchError
	if err := (pin.Set{sample}).Verify(tls.ConnectionState{}); !errors.As(err, &me) || me.Leaf != (pin.Pin{}) {
		t.Errorf("Verify error %v (%T), want a *MismatchError without a leaf", err, err)
	}
}

// TestApplyReportOnlyHandshake: a mismatch on a verified chain is reported
// once per handshake, with the leaf's pin, and the connection carries queries.
func TestApplyReportOnlyHandshake(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	leaf, ca := srv.Leaf.Pin(), srv.CA.Pin()
	tests := []struct {
		name     string
		set      pin.Set
		mismatch bool
	}{
		{name: "leaf pin", set: pin.Set{leaf}},
		{name: "CA pin as a backup", set: pin.Set{randomPin(t), ca}},
		{name: "mismatch", set: pin.Set{randomPin(t)}, mismatch: true},
		{name: "mismatch of two", set: pin.Set{randomPin(t), randomPin(t)}, mismatch: true},
	}
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		for _, tc := range tests {
			t.Run(fmt.Sprintf("%s/%s", tls.VersionName(version), tc.name), func(t *testing.T) {
				var r reports
				cfg := reportOnlyConfig(srv.CA.Pool, tc.set, &r)
				cfg.MaxVersion = version
				c, err := handshake(t, srv.Addr, cfg)
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				exchange(t, c)
				if !tc.mismatch {
					if len(r) != 0 {
						t.Fatalf("reported %v for a matching pin", r)
					}
					return
				}
				if len(r) != 1 {
					t.Fatalf("reported %d times, want once: %v", len(r), r)
				}
				var me *pin.MismatchError
				if !errors.As(r[0], &me) || !errors.Is(r[0], pin.ErrMismatch) {
					t.Fatalf("reported %v (%T), want a *MismatchError", r[0], r[0])
				}
				if me.Leaf != leaf {
					t.Errorf("reported leaf pin %s, want %s", me.Leaf, leaf)
				}
			})
		}
	}
}

// TestApplyReportOnlyKeepsVerification: report-only relaxes the pins and
// nothing else. A chain to an untrusted CA, a wrong name, or no verification
// at all still fail the handshake, and nothing is reported.
func TestApplyReportOnlyKeepsVerification(t *testing.T) {
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
	tests := []struct {
		name  string
		cfg   func(*reports) *tls.Config
		check func(error) bool
	}{
		{
			name: "untrusted CA",
			cfg:  func(r *reports) *tls.Config { return reportOnlyConfig(caA.Pool, pin.Set{randomPin(t)}, r) },
			check: func(err error) bool {
				var unknown x509.UnknownAuthorityError
				return errors.As(err, &unknown)
			},
		},
		{
			name: "untrusted CA, pins of the chain it sent",
			cfg:  func(r *reports) *tls.Config { return reportOnlyConfig(caA.Pool, pin.Set{leafB.Pin(), caB.Pin()}, r) },
			check: func(err error) bool {
				var unknown x509.UnknownAuthorityError
				return errors.As(err, &unknown)
			},
		},
		{
			name: "wrong name",
			cfg: func(r *reports) *tls.Config {
				cfg := reportOnlyConfig(caB.Pool, pin.Set{randomPin(t)}, r)
				cfg.ServerName = "other.test"
				return cfg
			},
			check: func(err error) bool {
				var host x509.HostnameError
				return errors.As(err, &host)
			},
		},
		{
			name: "verification skipped",
			cfg: func(r *reports) *tls.Config {
				cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
				pin.Set{randomPin(t)}.ApplyReportOnly(cfg, r.report)
				return cfg
			},
			check: func(err error) bool { return errors.Is(err, pin.ErrMismatch) },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r reports
			_, err := handshake(t, srv.Addr, tc.cfg(&r))
			if err == nil || !tc.check(err) {
				t.Fatalf("handshake error %v (%T), want a verification failure", err, err)
			}
			if len(r) != 0 {
				t.Errorf("reported %v for a chain that failed verification", r)
			}
		})
	}
}

// TestApplyReportOnlyResumed: a resumed handshake is checked, and reported,
// like a full one.
func TestApplyReportOnlyResumed(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			srv := dottest.New(t, dottest.Options{})
			var r reports
			cfg := reportOnlyConfig(srv.CA.Pool, pin.Set{randomPin(t)}, &r)
			cfg.MaxVersion = version
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			for i, wantResume := range []bool{false, true} {
				c, err := handshake(t, srv.Addr, cfg)
				if err != nil {
					t.Fatalf("handshake %d: %v", i, err)
				}
				exchange(t, c) // reads the session ticket
				if got := c.ConnectionState().DidResume; got != wantResume {
					t.Fatalf("handshake %d resumed: %v, want %v", i, got, wantResume)
				}
				c.Close()
				if len(r) != i+1 {
					t.Fatalf("after handshake %d: %d reports, want %d", i, len(r), i+1)
				}
			}
		})
	}
}

func TestApplyReportOnlyDirect(t *testing.T) {
	ca, err := dottest.NewCA(t.Name())
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue([]string{"report.test"}, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	chain := []*x509.Certificate{leaf.Cert, ca.Cert}
	verified := tls.ConnectionState{PeerCertificates: chain, VerifiedChains: [][]*x509.Certificate{chain}}
	unverified := tls.ConnectionState{PeerCertificates: chain}
	errPrev := errors.New("previous check failed")
	tests := []struct {
		name    string
		prevErr error
		set     pin.Set
		cs      tls.ConnectionState
		wantErr error
		reports int
	}{
		{name: "match", set: pin.Set{leaf.Pin()}, cs: verified},
		{name: "mismatch reported", set: pin.Set{randomPin(t)}, cs: verified, reports: 1},
		{name: "mismatch without a verified chain", set: pin.Set{randomPin(t)}, cs: unverified, wantErr: pin.ErrMismatch},
		{name: "previous fails first", prevErr: errPrev, set: pin.Set{randomPin(t)}, cs: verified, wantErr: errPrev},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r reports
			cfg := &tls.Config{VerifyConnection: func(tls.ConnectionState) error { return tc.prevErr }}
			tc.set.ApplyReportOnly(cfg, r.report)
			err := cfg.VerifyConnection(tc.cs)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("VerifyConnection error %v, want %v", err, tc.wantErr)
			}
			if len(r) != tc.reports {
				t.Errorf("%d reports, want %d: %v", len(r), tc.reports, r)
			}
		})
	}

	// An empty set installs nothing; a nil report is allowed.
	cfg := &tls.Config{}
	pin.Set{}.ApplyReportOnly(cfg, func(error) { t.Error("reported for an empty set") })
	if cfg.VerifyConnection != nil {
		t.Error("ApplyReportOnly of an empty set set VerifyConnection")
	}
	pin.Set{randomPin(t)}.ApplyReportOnly(cfg, nil)
	if err := cfg.VerifyConnection(verified); err != nil {
		t.Errorf("nil report: VerifyConnection: %v", err)
	}
}
