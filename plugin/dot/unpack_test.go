package dot

import (
	"reflect"
	"testing"

	"github.com/miekg/dns"
)

// answerOf returns a response to name/qtype holding the records rrs, in
// the sections their place says: "an", "ns" or "ar" before each group.
func answerOf(t testing.TB, name string, qtype uint16, rrs ...string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Response, m.RecursionAvailable = true, true
	section := &m.Answer
	for _, s := range rrs {
		switch s {
		case "an":
			section = &m.Answer
		case "ns":
			section = &m.Ns
		case "ar":
			section = &m.Extra
		default:
			rr, err := dns.NewRR(s)
			if err != nil {
				t.Fatalf("%s: %v", s, err)
			}
			*section = append(*section, rr)
		}
	}
	return m
}

// fastShapes are answers of the shapes unpackFast takes.
func fastShapes(t testing.TB) map[string]*dns.Msg {
	withEDNS := func(m *dns.Msg) *dns.Msg { m.SetEdns0(1232, true); return m }
	nx := answerOf(t, "nothing.example.org.", dns.TypeA,
		"ns", "example.org. 300 IN SOA ns1.example.org. hostmaster.example.org. 2026112901 7200 3600 1209600 300")
	nx.Rcode = dns.RcodeNameError
	padded := func(n int) *dns.Msg {
		m := withEDNS(answerOf(t, "www.example.org.", dns.TypeA, "www.example.org. 60 IN A 192.0.2.1"))
		m.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_PADDING{Padding: make([]byte, n)}}
		return m
	}
	ext := withEDNS(answerOf(t, "www.example.org.", dns.TypeA))
	ext.Rcode = dns.RcodeBadCookie // an extended RCODE, in the OPT record
	return map[string]*dns.Msg{
		"A":              answerOf(t, "www.example.org.", dns.TypeA, "www.example.org. 60 IN A 192.0.2.1"),
		"two A and EDNS": withEDNS(answerOf(t, "WWW.Example.org.", dns.TypeA, "www.example.org. 60 IN A 192.0.2.1", "www.example.org. 60 IN A 192.0.2.2")),
		"AAAA":           answerOf(t, "www.example.org.", dns.TypeAAAA, "www.example.org. 60 IN AAAA 2001:db8::1"),
		"CNAME chain": withEDNS(answerOf(t, "www.example.org.", dns.TypeA,
			"www.example.org. 300 IN CNAME edge-1.cdn.example.net.", "edge-1.cdn.example.net. 20 IN CNAME *.pop_2.example.net.",
			"*.pop_2.example.net. 20 IN A 198.51.100.7")),
		"NXDOMAIN":         nx,
		"NODATA with EDNS": withEDNS(answerOf(t, "www.example.org.", dns.TypeAAAA, "ns", "example.org. 300 IN SOA . . 1 2 3 4 5")),
		"root":             withEDNS(answerOf(t, ".", dns.TypeSOA, "an", ". 86400 IN SOA a.root-servers.net. nstld.verisign-grs.com. 2026112900 1800 900 604800 86400")),
		"extended RCODE":   ext,
		"padded":           padded(371),
		"padding of 0":     padded(0),
		"sixteen records":  answerOf(t, "many.example.org.", dns.TypeA, many(16)...),
		"empty":            answerOf(t, "www.example.org.", dns.TypeA),
		"class CH":         answerOf(t, "version.bind.", dns.TypeA, "version.bind. 0 CH A 192.0.2.9"),
		"authoritative, with NS and glue": withEDNS(answerOf(t, "a1.bench.test.", dns.TypeA, "a1.bench.test. 300 IN A 10.0.0.1",
			"ns", "bench.test. 300 IN NS ns1.bench.test.", "ar", "ns1.bench.test. 300 IN A 127.0.0.1")),
		"PTR": answerOf(t, "1.2.0.192.in-addr.arpa.", dns.TypePTR, "1.2.0.192.in-addr.arpa. 3600 IN PTR www.example.org."),
	}
}

func many(n int) []string {
	rrs := make([]string, n)
	for i := range rrs {
		rrs[i] = "many.example.org. 60 IN A 192.0.2." + string(rune('1'+i%9))
	}
	return rrs
}

// slowShapes are answers unpackFast leaves to miekg/dns.
func slowShapes(t testing.TB) map[string]*dns.Msg {
	withOptions := func(o ...dns.EDNS0) *dns.Msg {
		m := answerOf(t, "www.example.org.", dns.TypeA, "www.example.org. 60 IN A 192.0.2.1")
		m.SetEdns0(1232, false)
		m.IsEdns0().Option = o
		return m
	}
	twoOPT := withOptions()
	twoOPT.Extra = append(twoOPT.Extra, twoOPT.Extra[0])
	return map[string]*dns.Msg{
		"TXT":                 answerOf(t, "www.example.org.", dns.TypeTXT, `www.example.org. 60 IN TXT "text"`),
		"escaped name":        answerOf(t, `a\.b.example.org.`, dns.TypeA, `a\.b.example.org. 60 IN A 192.0.2.1`),
		"a cookie":            withOptions(&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}),
		"two padding options": withOptions(&dns.EDNS0_PADDING{Padding: make([]byte, 8)}, &dns.EDNS0_PADDING{Padding: make([]byte, 8)}),
		"two OPT records":     twoOPT,
		"seventeen records":   answerOf(t, "many.example.org.", dns.TypeA, many(17)...),
	}
}

// packCompressed packs m with compression, as upstreams send answers.
func packCompressed(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	m.Compress = true
	defer func() { m.Compress = false }()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestUnpackFast(t *testing.T) {
	for name, m := range fastShapes(t) {
		for _, compress := range []bool{true, false} {
			b, err := m.Pack()
			if compress {
				b = packCompressed(t, m)
			}
			if err != nil {
				t.Fatal(err)
			}
			got, ok := unpackFast(b)
			if !ok {
				t.Errorf("%s (compressed %t): left to miekg/dns", name, compress)
				continue
			}
			want := new(dns.Msg)
			if err := want.Unpack(b); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s (compressed %t): unpacked\n%v\nmiekg/dns unpacks\n%v", name, compress, got, want)
			}
		}
	}
	for name, m := range slowShapes(t) {
		if _, ok := unpackFast(packCompressed(t, m)); ok {
			t.Errorf("%s: taken by unpackFast", name)
		}
		if a := unpackAnswer(packCompressed(t, m)); a == nil {
			t.Errorf("%s: did not unpack", name)
		}
	}
}

func TestUnpackFastAllocations(t *testing.T) {
	for shape, want := range map[string]float64{"A": 3, "padded": 4} {
		b := packCompressed(t, fastShapes(t)[shape])
		if n := testing.AllocsPerRun(100, func() { unpackAnswer(b) }); n > want {
			t.Errorf("%.0f allocations to unpack an answer of shape %s, want %.0f", n, shape, want)
		}
	}
}

// FuzzUnpackFast holds unpackFast to miekg/dns: whatever bytes it takes,
// miekg/dns unpacks to the same message.
func FuzzUnpackFast(f *testing.F) {
	for _, shapes := range []map[string]*dns.Msg{fastShapes(f), slowShapes(f)} {
		for _, m := range shapes {
			f.Add(packCompressed(f, m))
			b, _ := m.Pack()
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, ok := unpackFast(b)
		if !ok {
			return
		}
		want := new(dns.Msg)
		if err := want.Unpack(b); err != nil {
			t.Fatalf("unpackFast took what miekg/dns refuses (%v):\n%v", err, got)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("unpackFast unpacked\n%v\nmiekg/dns unpacks\n%v", got, want)
		}
	})
}
