package dotstub

import (
	"fmt"

	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/upstream"
)

// Why dotstub answers SERVFAIL itself, and how a client learns it: an
// Extended DNS Error (RFC 8914) in the answer, when the client sent EDNS. An
// upstream's own SERVFAIL, and its own EDE, pass through as they are.

// failures sums up, for one query, why every upstream asked failed.
type failures struct {
	n, pin, cert, timeout, bad int
}

func (f *failures) add(err error) {
	f.n++
	switch upstream.Reason(err) {
	case "pin_mismatch":
		f.pin++
	case "verify_failed":
		f.cert++
	case "timeout":
		f.timeout++
	case "bad_answer":
		f.bad++
	}
}

// ede returns the Extended DNS Error for a query whose upstreams failed as f
// says: no upstream was asked (every one is down), every one failed
// validation, one timed out, all sent bad answers, or they could not be
// reached (refused, reset).
func (f *failures) ede() *dns.EDNS0_EDE {
	e := &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeNoReachableAuthority}
	switch {
	case f.n == 0:
		e.ExtraText = "every upstream is marked down"
	case f.pin == f.n:
		e.ExtraText = "every upstream failed validation: pin mismatch"
	case f.cert == f.n:
		e.ExtraText = "every upstream failed validation: certificate not accepted"
	case f.pin+f.cert == f.n:
		e.ExtraText = "every upstream failed validation: pin mismatch or certificate not accepted"
	case f.timeout > 0:
		e.ExtraText = "timeout waiting for the upstreams"
	case f.bad == f.n:
		e.InfoCode, e.ExtraText = dns.ExtendedErrorCodeOther, "every answer from the upstreams was malformed or mismatched"
	default:
		e.InfoCode, e.ExtraText = dns.ExtendedErrorCodeNetworkError, "no upstream could be reached"
	}
	return e
}

// servfail answers SERVFAIL for err, which failed sums up. To a client that
// sent EDNS, dotstub writes the answer itself, with the Extended DNS Error,
// and returns RcodeSuccess so that CoreDNS writes no second one (the rcode
// it writes is what metrics, log and dnstap record); the errors plugin logs
// err with rcode 0, and a text that begins with SERVFAIL. To any other
// client it returns SERVFAIL, which CoreDNS writes, as forward does.
func servfail(w dns.ResponseWriter, r *dns.Msg, f *failures, err error) (int, error) {
	state := request.Request{W: w, Req: r}
	if r.IsEdns0() == nil {
		return dns.RcodeServerFailure, err
	}
	m := new(dns.Msg)
	m.SetRcode(r, dns.RcodeServerFailure)
	state.SizeAndDo(m)
	ede := f.ede()
	opt := m.IsEdns0()
	opt.Option = append(opt.Option, ede)
	w.WriteMsg(m)
	return dns.RcodeSuccess, fmt.Errorf("SERVFAIL written with EDE %d (%s): %w", ede.InfoCode, ede.ExtraText, err)
}
