// Package pin parses RFC 7469 SPKI pins and checks them against the chain a
// TLS server presents.
//
// A pin is the base64 of the SHA-256 digest of a certificate's DER-encoded
// SubjectPublicKeyInfo. A Set holds one or more pins; a connection passes when
// its chain verifies and some certificate of the verified chain matches any pin
// of the set, so extra pins act as backups (a CA pin next to a leaf pin keeps
// working when the leaf key rotates).
//
// The check runs in tls.Config.VerifyConnection, which crypto/tls calls on
// every handshake, resumed ones included, after the chain and name are
// verified. VerifyPeerCertificate is not used: it is skipped on resumption.
// ApplyReportOnly runs the same check but reports a mismatch instead of failing
// the handshake, to roll new pins out; chain and name verification stay.
package pin

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Pin is the SHA-256 digest of a certificate's SubjectPublicKeyInfo.
type Pin [sha256.Size]byte

// String returns the pin in its RFC 7469 form: standard base64 with padding.
func (p Pin) String() string { return base64.StdEncoding.EncodeToString(p[:]) }

// Of returns the pin of cert.
func Of(cert *x509.Certificate) Pin { return sha256.Sum256(cert.RawSubjectPublicKeyInfo) }

// Parse decodes one pin from its base64 form. It accepts an optional
// "sha256/" prefix, as HPKP headers and curl's --pinnedpubkey write it.
func Parse(s string) (Pin, error) {
	var p Pin
	// "sha256/" is also valid base64, so a pin may itself begin with it:
	// the whole string is tried first, then without the prefix.
	b, err := base64.StdEncoding.DecodeString(s)
	if (err != nil || len(b) != len(p)) && strings.HasPrefix(s, "sha256/") {
		b, err = base64.StdEncoding.DecodeString(strings.TrimPrefix(s, "sha256/"))
	}
	if err != nil || len(b) != len(p) {
		return p, fmt.Errorf("%q is not base64 of a %d-byte SHA-256 digest", s, len(p))
	}
	copy(p[:], b)
	return p, nil
}

// ErrMismatch is returned (wrapped) by Set.Verify when no certificate of the
// verified chain matches a pin.
var ErrMismatch = errors.New("no certificate in the verified chain matches a pinned SPKI")

// MismatchError is the error Set.Verify returns when no certificate of the
// verified chain matches a pin. It wraps ErrMismatch, and carries the leaf's
// pin so that a report can tell one server key from another.
type MismatchError struct {
	Leaf Pin // pin of the first certificate the server sent; the zero Pin if it sent none
}

func (e *MismatchError) Error() string {
	leaf := "none"
	if e.Leaf != (Pin{}) {
		leaf = e.Leaf.String()
	}
	return fmt.Sprintf("%v (leaf pin %s)", ErrMismatch, leaf)
}

// Unwrap returns ErrMismatch.
func (e *MismatchError) Unwrap() error { return ErrMismatch }

// Set is a set of acceptable pins. The zero Set accepts every chain.
type Set []Pin

// ParseSet decodes every string in ss, rejecting duplicates.
func ParseSet(ss []string) (Set, error) {
	s := make(Set, 0, len(ss))
	for _, x := range ss {
		p, err := Parse(x)
		if err != nil {
			return nil, err
		}
		if s.contains(p) {
			return nil, fmt.Errorf("%q is given twice", x)
		}
		s = append(s, p)
	}
	return s, nil
}

func (s Set) contains(p Pin) bool {
	for _, q := range s {
		if q == p {
			return true
		}
	}
	return false
}

// Verify checks that some certificate in the verified chains of cs matches a
// pin of s. Only verified chains count: a certificate the server merely sent,
// but that is not part of a chain to a trusted root, never satisfies a pin.
func (s Set) Verify(cs tls.ConnectionState) error {
	if len(s) == 0 {
		return nil
	}
	for _, chain := range cs.VerifiedChains {
		for _, cert := range chain {
			if s.contains(Of(cert)) {
				return nil
			}
		}
	}
	e := &MismatchError{}
	if len(cs.PeerCertificates) > 0 {
		e.Leaf = Of(cs.PeerCertificates[0])
	}
	return e
}

// Apply makes cfg enforce s on every handshake, resumed ones included. It
// keeps a VerifyConnection that cfg already has and runs it first. Apply does
// nothing for an empty set.
func (s Set) Apply(cfg *tls.Config) { s.apply(cfg, nil) }

// ApplyReportOnly makes cfg check s on every handshake as Apply does, but
// a mismatch on a verified chain does not fail the handshake: report is
// called with the *MismatchError, and the connection goes on. It is for
// rolling new pins out: watch the reports, then enforce.
//
// Only the pins are relaxed. crypto/tls still verifies the chain and the
// name before it calls VerifyConnection, and a connection state without a
// verified chain (cfg.InsecureSkipVerify, say) fails the handshake with the
// mismatch instead of being reported, so that report-only never accepts a
// chain that did not verify.
func (s Set) ApplyReportOnly(cfg *tls.Config, report func(error)) {
	if report == nil {
		report = func(error) {}
	}
	s.apply(cfg, report)
}

// apply installs the check; a nil report enforces.
func (s Set) apply(cfg *tls.Config, report func(error)) {
	if len(s) == 0 {
		return
	}
	prev := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if prev != nil {
			if err := prev(cs); err != nil {
				return err
			}
		}
		err := s.Verify(cs)
		if err == nil || report == nil || len(cs.VerifiedChains) == 0 {
			return err
		}
		report(err)
		return nil
	}
}
