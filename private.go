package dotstub

import (
	"net"
	"strconv"
	"strings"

	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// Names that must never reach a public resolver are answered here, as
// Unbound answers them out of the box: the special-use names that have no
// meaning outside the local network (RFC 6761, 6762, 7686, 8375, and
// internal, which ICANN reserved for private use), and the reverse zones of
// private, link-local, shared and loopback addresses (RFC 6303, 7793). A
// query for one of them sent to a public resolver tells it about the local
// network and can only come back NXDOMAIN. test is left alone: test set-ups
// forward it on purpose.
//
// localhost and everything under it is the loopback address; 127.0.0.1 and
// ::1 are localhost the other way; every other name of these zones does not
// exist. The option private_names off forwards them all; a stanza whose FROM
// lies within one of them forwards that one, as asked.

// privateZones lists the zones kept home, lower case, fully qualified.
var privateZones = func() map[string]bool {
	zones := []string{
		"localhost.", "invalid.", "local.", "onion.", "home.arpa.", "internal.",
		"10.in-addr.arpa.", "168.192.in-addr.arpa.", "254.169.in-addr.arpa.",
		"127.in-addr.arpa.", "0.in-addr.arpa.", "255.255.255.255.in-addr.arpa.",
		"c.f.ip6.arpa.", "d.f.ip6.arpa.", // fc00::/7, unique local
		"8.e.f.ip6.arpa.", "9.e.f.ip6.arpa.", "a.e.f.ip6.arpa.", "b.e.f.ip6.arpa.", // fe80::/10, link-local
		loopback6, unspecified6,
	}
	for i := 16; i <= 31; i++ { // 172.16.0.0/12
		zones = append(zones, strconv.Itoa(i)+".172.in-addr.arpa.")
	}
	for i := 64; i <= 127; i++ { // 100.64.0.0/10, shared address space
		zones = append(zones, strconv.Itoa(i)+".100.in-addr.arpa.")
	}
	m := make(map[string]bool, len(zones))
	for _, z := range zones {
		m[z] = true
	}
	return m
}()

var (
	loopback6, _    = dns.ReverseAddr("::1")
	unspecified6, _ = dns.ReverseAddr("::")
	loopback4, _    = dns.ReverseAddr("127.0.0.1")
)

// privateTLDs are the last labels of the private zones: a name that ends in
// none of them is no private name, whatever else it holds.
var privateTLDs = []string{"arpa", "localhost", "invalid", "local", "onion", "internal"}

// privateZone returns the private zone that holds name, or "". Most names
// are known not to be private by their last label alone.
func privateZone(name string) string {
	n := strings.TrimSuffix(name, ".")
	tld := n[strings.LastIndexByte(n, '.')+1:]
	private := false
	for _, t := range privateTLDs {
		private = private || strings.EqualFold(tld, t)
	}
	if !private {
		return ""
	}
	name = strings.ToLower(dns.Fqdn(name))
	if privateZones[name] {
		return name
	}
	for off, end := dns.NextLabel(name, 0); !end; off, end = dns.NextLabel(name, off) {
		if z := name[off:]; privateZones[z] {
			return z
		}
	}
	return ""
}

// privateAnswer answers r, a query for a name in zone, as the local network's
// own resolver would: localhost is the loopback address, the loopback
// addresses are localhost, and nothing else exists (NXDOMAIN with the zone's
// SOA, as RFC 6303 serves these zones).
func privateAnswer(state request.Request, zone string) *dns.Msg {
	r := state.Req
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative, m.RecursionAvailable = true, true
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: 3600}
	switch {
	case zone == "localhost." && q.Qtype == dns.TypeA:
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(127, 0, 0, 1)})
	case zone == "localhost." && q.Qtype == dns.TypeAAAA:
		m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.IPv6loopback})
	case (name == loopback4 || name == loopback6) && q.Qtype == dns.TypePTR:
		m.Answer = append(m.Answer, &dns.PTR{Hdr: hdr, Ptr: "localhost."})
	case zone == "localhost.", name == loopback4, name == loopback6, name == zone:
		// The name exists, with no record of this type.
	default:
		m.Rcode = dns.RcodeNameError
	}
	if len(m.Answer) == 0 {
		m.Ns = append(m.Ns, &dns.SOA{
			Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 10800},
			Ns:  zone, Mbox: "nobody.invalid.", Serial: 1, Refresh: 3600, Retry: 1200, Expire: 604800, Minttl: 10800,
		})
	}
	state.SizeAndDo(m)
	return m
}
