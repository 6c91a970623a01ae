package dottest

import (
	"net"
	"strings"

	"github.com/miekg/dns"
)

// Answer is the default handler: a synthetic zone that answers every name.
//   - names whose first label is "nx" get NXDOMAIN with an SOA;
//   - A gets 192.0.2.1, AAAA 2001:db8::1;
//   - TXT gets one short string, or 40 strings of 100 bytes (about 4 kB) for
//     names whose first label is "big";
//   - other types get NODATA.
//
// It mirrors EDNS0: a query with OPT gets OPT back with the same DO bit, and a
// positive answer to a query with DO set carries an RRSIG, so a test can see
// DNSSEC records pass through.
func Answer(q *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	m.RecursionAvailable = true
	if len(q.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m
	}
	qq := q.Question[0]
	first, _, _ := strings.Cut(qq.Name, ".")
	hdr := dns.RR_Header{Name: qq.Name, Rrtype: qq.Qtype, Class: dns.ClassINET, Ttl: 300}
	switch {
	case strings.EqualFold(first, "nx"):
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, &dns.SOA{
			Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 300},
			Ns:  "ns.test.", Mbox: "hostmaster.test.", Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 300,
		})
	case qq.Qtype == dns.TypeA:
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.IPv4(192, 0, 2, 1)})
	case qq.Qtype == dns.TypeAAAA:
		m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.ParseIP("2001:db8::1")})
	case qq.Qtype == dns.TypeTXT && strings.EqualFold(first, "big"):
		for i := 0; i < 40; i++ {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{strings.Repeat(string(rune('a'+i%26)), 100)}})
		}
	case qq.Qtype == dns.TypeTXT:
		m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{"hello"}})
	}
	if opt := q.IsEdns0(); opt != nil {
		if opt.Do() && len(m.Answer) > 0 {
			m.Answer = append(m.Answer, &dns.RRSIG{
				Hdr:         dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeRRSIG, Class: dns.ClassINET, Ttl: 300},
				TypeCovered: qq.Qtype, Algorithm: dns.ECDSAP256SHA256, Labels: uint8(dns.CountLabel(qq.Name)),
				OrigTtl: 300, Expiration: 2000000000, Inception: 1000000000, KeyTag: 1, SignerName: ".",
				Signature: "AAAA",
			})
		}
		m.SetEdns0(1232, opt.Do())
	}
	return m
}
