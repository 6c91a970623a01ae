package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/dotstub/dotstub/plugin/dot"
	"github.com/dotstub/dotstub/plugin/pin"
)

// Reason classifies a dial or exchange error into a closed set fit for a
// metric label and a log line: ok, pin_mismatch, verify_failed, timeout,
// refused, reset, bad_answer or error.
func Reason(err error) string {
	var (
		verr     *tls.CertificateVerificationError
		hostErr  x509.HostnameError
		authErr  x509.UnknownAuthorityError
		invalErr x509.CertificateInvalidError
		netErr   net.Error
	)
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, pin.ErrMismatch):
		return "pin_mismatch"
	case errors.As(err, &verr), errors.As(err, &hostErr), errors.As(err, &authErr), errors.As(err, &invalErr):
		return "verify_failed"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "reset"
	case errors.Is(err, dot.ErrBadAnswer):
		return "bad_answer"
	}
	return "error"
}

// IsAuth reports whether err is a failure to authenticate the server: its
// chain, its name or its pin.
func IsAuth(err error) bool {
	r := Reason(err)
	return r == "pin_mismatch" || r == "verify_failed"
}
