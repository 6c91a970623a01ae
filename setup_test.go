package dotstub

import (
	"bytes"
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dot"
	"github.com/dotstub/dotstub/plugin/dottest"
	"github.com/dotstub/dotstub/plugin/upstream"
)

type parseTest struct {
	name  string
	input string
	// wantErr is empty for success. Otherwise the message must hold
	// "Testfile:<line> - Error during parsing: " + wantErr, so wantErr starts
	// with the option (or argument) at fault.
	wantErr string
	line    int

	// What the one stanza parses into. Zero means the default where noted.
	from          string   // "" means "."
	ignored       []string // except
	upstreams     []string // "addr servername" of each upstream, in order
	timeout       time.Duration
	maxConcurrent int64
	policy        string // "" means random

	// The same for every upstream of the stanza.
	maxFails    *uint32       // nil means upstream.DefaultMaxFails
	healthCheck time.Duration // 0 means upstream.DefaultHealthCheck, negative none
	expire      time.Duration // 0 means the pool's default
	maxConns    int           // 0 means the pool's default
	maxInflight int           // 0 means the pool's default
	pinned      bool          // TLS.VerifyConnection is set
	rootCAs     bool          // TLS.RootCAs is set: tls with a CA
	clientCert  bool          // TLS.Certificates holds one: tls with a cert and key

	// Per upstream, in order, when upstreams differ in pins or CA (tls_ca,
	// pin_sha256 SELECTOR): replaces pinned and rootCAs.
	ids []wantID

	// check, if set, looks at what the fields above do not cover, and
	// returns what is wrong; "" if nothing.
	check func(*Dotstub) string
}

// want returns "" if ok, else what the stanza holds instead.
func want(ok bool, format string, args ...any) string {
	if ok {
		return ""
	}
	return fmt.Sprintf(format, args...)
}

// wantID is the TLS identity expected of one upstream.
type wantID struct {
	pins []*dottest.CA // the CAs whose certificates its pins accept; none: no pin check
	ca   *dottest.CA   // the CA its RootCAs holds; nil: no RootCAs
}

// stanza returns a stanza for . and 192.0.2.1 whose block holds lines, the
// first on line 2.
func stanza(lines ...string) string {
	return "dotstub . 192.0.2.1 {\n" + strings.Join(lines, "\n") + "\n}"
}

// one is the upstream of stanza.
var one = []string{"192.0.2.1:853 192.0.2.1"}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

var (
	pinA = b64(bytes.Repeat([]byte{1}, 32))
	pinB = b64(bytes.Repeat([]byte{2}, 32))
	// pinSlash holds '/', which no server name does.
	pinSlash = b64(bytes.Repeat([]byte{0xff}, 32))
)

// ips returns n upstreams, 192.0.2.1 to 192.0.2.n, and what they parse into.
func ips(n int) (to string, upstreams []string) {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("192.0.2.%d", i+1)
		upstreams = append(upstreams, s[i]+":853 "+s[i])
	}
	return strings.Join(s, " "), upstreams
}

// mixed returns a stanza for . and four upstreams of two names, like
// Cloudflare's and Quad9's, whose block holds lines, the first on line 2.
func mixed(lines ...string) string {
	return "dotstub . tls://192.0.2.1%a.example tls://192.0.2.2%a.example tls://192.0.2.3%b.example tls://[2001:db8::1%b.example]:8853 {\n" +
		strings.Join(lines, "\n") + "\n}"
}

// mixedUps is what the upstreams of mixed parse into.
var mixedUps = []string{"192.0.2.1:853 a.example", "192.0.2.2:853 a.example", "192.0.2.3:853 b.example", "[2001:db8::1]:8853 b.example"}

// parseTests returns the table, with the files the tls rows name written to
// a temporary directory.
func parseTests(tb testing.TB) []parseTest {
	tb.Helper()
	ca, err := dottest.NewCA("ca.example")
	if err != nil {
		tb.Fatal(err)
	}
	leaf, err := ca.Issue([]string{"client.example"}, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	file := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			tb.Fatal(err)
		}
		return p
	}
	caFile := file("ca.pem", ca.PEM)
	certFile := file("cert.pem", leaf.CertPEM)
	keyFile := file("key.pem", leaf.KeyPEM)
	notPEM := file("not.pem", []byte("not a certificate"))
	missing := filepath.Join(dir, "missing.pem")
	to15, ups15 := ips(15)
	to16, _ := ips(16)
	// Identities for per-upstream pins and CAs: A, B, C and their CA files.
	newCA := func(name string) *dottest.CA {
		c, err := dottest.NewCA(name)
		if err != nil {
			tb.Fatal(err)
		}
		return c
	}
	caA, caB, caC := newCA("a.example"), newCA("b.example"), newCA("c.example")
	caAFile, caBFile := file("a.pem", caA.PEM), file("b.pem", caB.PEM)
	pA, pB, pC := caA.Pin().String(), caB.Pin().String(), caC.Pin().String()
	pins := func(cas ...*dottest.CA) wantID { return wantID{pins: cas} }
	caOnly := func(ca *dottest.CA) wantID { return wantID{ca: ca} }
	none := wantID{}

	return []parseTest{
		// Stanza: FROM and TO.
		{name: "defaults", input: "dotstub . 192.0.2.1", upstreams: one},
		{name: "from zone", input: "dotstub Example.ORG 192.0.2.1", from: "example.org.", upstreams: one},
		{name: "from reverse", input: "dotstub 10.0.0.0/8 192.0.2.1", from: "10.in-addr.arpa.", upstreams: one},
		{name: "to every spelling", input: "dotstub . tls://192.0.2.1 192.0.2.2:8853 tls://192.0.2.3%dns.example tls://192.0.2.4%dns.example.:8853 2001:db8::1 [2001:db8::2]:8853 tls://[2001:db8::3%dns.example]:8853",
			upstreams: []string{
				"192.0.2.1:853 192.0.2.1",
				"192.0.2.2:8853 192.0.2.2",
				"192.0.2.3:853 dns.example",
				"192.0.2.4:8853 dns.example",
				"[2001:db8::1]:853 2001:db8::1",
				"[2001:db8::2]:8853 2001:db8::2",
				"[2001:db8::3]:8853 dns.example",
			}},
		{name: "15 upstreams", input: "dotstub . " + to15, upstreams: ups15},
		{name: "missing FROM", input: "dotstub", wantErr: "FROM: wrong argument count", line: 1},
		{name: "FROM not a name", input: "dotstub example..org 192.0.2.1", wantErr: `FROM: "example..org" is not a domain name`, line: 1},
		{name: "FROM several zones", input: "dotstub 10.0.0.0/15 192.0.2.1", wantErr: `FROM: "10.0.0.0/15" spans 2 zones`, line: 1},
		{name: "missing TO", input: "dotstub .", wantErr: "TO: wrong argument count", line: 1},
		{name: "missing TO before block", input: "dotstub . {\n}", wantErr: "TO: wrong argument count", line: 1},
		{name: "more than 15 upstreams", input: "dotstub . " + to16, wantErr: "TO: 16 upstreams, at most 15 are allowed", line: 1},
		{name: "plaintext upstream", input: "dotstub . dns://127.0.0.1", wantErr: `TO: "dns://127.0.0.1" is not a tls:// upstream`, line: 1},
		{name: "plaintext upstream before block", input: "dotstub . 192.0.2.1 dns://127.0.0.1 {\npolicy random\n}", wantErr: `TO: "dns://127.0.0.1" is not a tls:// upstream`, line: 1},
		{name: "hostname upstream", input: "dotstub . tls://dns.example", wantErr: `TO: "tls://dns.example": "dns.example" is not an IP address`, line: 1},
		{name: "duplicate upstream", input: "dotstub . 192.0.2.1 tls://192.0.2.1:853", wantErr: `TO: "tls://192.0.2.1:853" is given twice`, line: 1},
		{name: "duplicate upstream, port spelled with a zero", input: "dotstub . 192.0.2.1 192.0.2.1:0853", wantErr: `TO: "192.0.2.1:0853" is given twice`, line: 1},
		{name: "error in second stanza", input: "dotstub . 192.0.2.1\ndotstub example.org dns://192.0.2.2", wantErr: `TO: "dns://192.0.2.2"`, line: 2},

		// except
		{name: "except", input: stanza("except Example.ORG example.net", "except 10.0.0.0/15"), upstreams: one,
			ignored: []string{"example.org.", "example.net.", "0.10.in-addr.arpa.", "1.10.in-addr.arpa."}},
		{name: "except without args", input: stanza("except"), wantErr: "except: wrong argument count", line: 2},
		{name: "except not a name", input: stanza("except example..org"), wantErr: `except: "example..org" is not a domain name`, line: 2},

		// tls
		{name: "tls system roots", input: stanza("tls"), upstreams: one},
		{name: "tls CA", input: stanza("tls " + caFile), upstreams: one, rootCAs: true},
		{name: "tls client cert", input: stanza("tls " + certFile + " " + keyFile), upstreams: one, clientCert: true},
		{name: "tls client cert and CA", input: stanza("tls " + certFile + " " + keyFile + " " + caFile), upstreams: one, rootCAs: true, clientCert: true},
		{name: "tls 4 args", input: stanza("tls " + certFile + " " + keyFile + " " + caFile + " " + caFile), wantErr: "tls: wrong argument count", line: 2},
		{name: "tls missing CA file", input: stanza("tls " + missing), wantErr: "tls: error reading " + missing, line: 2},
		{name: "tls CA not PEM", input: stanza("tls " + notPEM), wantErr: "tls: could not read root certs", line: 2},
		{name: "tls key missing", input: stanza("tls " + certFile + " " + missing), wantErr: "tls: could not load TLS cert", line: 2},

		// tls_servername
		{name: "tls_servername", input: "dotstub . 192.0.2.1 2001:db8::1 {\ntls_servername dns.example.\n}",
			upstreams: []string{"192.0.2.1:853 dns.example", "[2001:db8::1]:853 dns.example"}},
		{name: "tls_servername without arg", input: stanza("tls_servername"), wantErr: "tls_servername: wrong argument count", line: 2},
		{name: "tls_servername 2 args", input: stanza("tls_servername a.example b.example"), wantErr: "tls_servername: wrong argument count", line: 2},
		{name: "tls_servername not a name", input: stanza("tls_servername dns.example/x"), wantErr: `tls_servername: "dns.example/x" is not a server name`, line: 2},
		{name: "tls_servername root", input: stanza("tls_servername ."), wantErr: `tls_servername: "." is not a server name`, line: 2},
		{name: "tls_servername conflicts with %NAME", input: "dotstub . 192.0.2.1 tls://192.0.2.2%a.example {\npolicy random\ntls_servername b.example\n}",
			wantErr: `tls_servername: "b.example" conflicts with the server name "a.example" in "tls://192.0.2.2%a.example"`, line: 3},

		// pin_sha256
		{name: "pin", input: stanza("pin_sha256 " + pinA), upstreams: one, pinned: true},
		{name: "pins on one line", input: stanza("pin_sha256 sha256/" + pinA + " " + pinB), upstreams: one, pinned: true},
		{name: "pins on two lines", input: stanza("pin_sha256 "+pinA, "pin_sha256 "+pinB), upstreams: one, pinned: true},
		{name: "pin without args", input: stanza("pin_sha256"), wantErr: "pin_sha256: wrong argument count", line: 2},
		{name: "pin not base64", input: stanza("pin_sha256 abc="), wantErr: `pin_sha256: "abc=" is not base64 of a 32-byte SHA-256 digest`, line: 2},
		{name: "pin of 31 bytes", input: stanza("pin_sha256 " + b64(make([]byte, 31))), wantErr: "pin_sha256: " + strconv.Quote(b64(make([]byte, 31))) + " is not base64 of a 32-byte", line: 2},
		{name: "duplicate pin", input: stanza("pin_sha256 " + pinA + " " + pinA), wantErr: "pin_sha256: " + strconv.Quote(pinA) + " is given twice", line: 2},
		{name: "duplicate pin on two lines", input: stanza("pin_sha256 "+pinA, "pin_sha256 sha256/"+pinA), wantErr: `pin_sha256: "sha256/` + pinA + `" is given twice`, line: 3},

		// pin_report_only
		{name: "pin_report_only", input: stanza("pin_sha256 "+pinA, "pin_report_only"), upstreams: one, pinned: true},
		{name: "pin_report_only before the pins", input: stanza("pin_report_only", "pin_sha256 "+pinA), upstreams: one, pinned: true},
		{name: "pin_report_only with an argument", input: stanza("pin_sha256 "+pinA, "pin_report_only yes"), wantErr: "pin_report_only: wrong argument count", line: 3},
		{name: "pin_report_only without pins", input: stanza("timeout 1s", "pin_report_only"), wantErr: "pin_report_only: this block has no pin_sha256 to report on", line: 3},

		// pin_sha256 SELECTOR
		{name: "pins per server name", input: mixed("pin_sha256 a.example "+pA, "pin_sha256 b.example "+pB+" "+pC), upstreams: mixedUps,
			ids: []wantID{pins(caA), pins(caA), pins(caB, caC), pins(caB, caC)}},
		{name: "pins by name and by address", input: mixed("pin_sha256 a.example "+pA, "pin_sha256 192.0.2.3 "+pB, "pin_sha256 [2001:db8::1]:8853 "+pC), upstreams: mixedUps,
			ids: []wantID{pins(caA), pins(caA), pins(caB), pins(caC)}},
		{name: "pins for one upstream only, the others unpinned on purpose", input: mixed("pin_sha256 192.0.2.2:853 sha256/"+pA, "pin_sha256 192.0.2.1 none", "pin_sha256 b.example none"), upstreams: mixedUps,
			ids: []wantID{none, pins(caA), none, none}},
		{name: "pins for one upstream only, the others silent", input: mixed("pin_sha256 192.0.2.2:853 sha256/"+pA, "pin_sha256 b.example none"),
			wantErr: "pin_sha256: tls://192.0.2.1%a.example has no pin, while this block pins others; pin it (pin_sha256 192.0.2.1 PIN...) or leave it unpinned on purpose (pin_sha256 192.0.2.1 none)", line: 2},
		{name: "none without selector", input: mixed("pin_sha256 none"), wantErr: "pin_sha256: none needs a SELECTOR before it", line: 2},
		{name: "none and pins for one selector", input: mixed("pin_sha256 a.example none", "pin_sha256 a.example "+pA), wantErr: `pin_sha256: "a.example" is both pinned and left unpinned (none)`, line: 3},
		{name: "none after a pin on one line", input: mixed("pin_sha256 a.example " + pA + " none"), wantErr: `pin_sha256: for "a.example": "none" is not base64`, line: 2},
		{name: "pins of one selector add up, however spelled", input: mixed("pin_sha256 192.0.2.1 "+pA, "pin_sha256 192.0.2.1:0853 "+pB, "pin_sha256 B.Example. "+pC, "pin_sha256 b.example "+pA, "pin_sha256 192.0.2.2 none"), upstreams: mixedUps,
			ids: []wantID{pins(caA, caB), none, pins(caA, caC), pins(caA, caC)}},
		{name: "pins by IPv6 address, both spellings", input: "dotstub . 2001:db8::1 192.0.2.1 {\npin_sha256 2001:db8::1 " + pA + "\npin_sha256 [2001:db8::1]:853 " + pB + "\npin_sha256 192.0.2.1 none\n}",
			upstreams: []string{"[2001:db8::1]:853 2001:db8::1", "192.0.2.1:853 192.0.2.1"}, ids: []wantID{pins(caA, caB), none}},
		{name: "pins by a tls_servername given after them", input: "dotstub . 192.0.2.1 192.0.2.2 {\npin_sha256 dns.example " + pA + "\ntls_servername dns.example\n}",
			upstreams: []string{"192.0.2.1:853 dns.example", "192.0.2.2:853 dns.example"}, ids: []wantID{pins(caA), pins(caA)}},
		{name: "pin selector selects nothing", input: mixed("policy random", "pin_sha256 c.example "+pA, "timeout 1s"),
			wantErr: `pin_sha256: "c.example" selects no upstream of this block (server names: a.example, b.example; addresses: 192.0.2.1:853, 192.0.2.2:853, 192.0.2.3:853, [2001:db8::1]:8853)`, line: 3},
		{name: "pin selector address on another port", input: "dotstub . 192.0.2.1:8853 {\npin_sha256 192.0.2.1 " + pA + "\n}",
			wantErr: `pin_sha256: "192.0.2.1" selects no upstream of this block (addresses: 192.0.2.1:8853; an address without a port means port 853)`, line: 2},
		{name: "pin selector address with another port", input: "dotstub . 192.0.2.1:8853 {\npin_sha256 192.0.2.1:53 " + pA + "\n}",
			wantErr: `pin_sha256: "192.0.2.1:53" selects no upstream of this block (addresses: 192.0.2.1:8853)`, line: 2},
		{name: "pin without its final =", input: mixed("pin_sha256 " + strings.TrimSuffix(pinA, "=") + " " + pB),
			wantErr: `pin_sha256: "` + strings.TrimSuffix(pinA, "=") + `" selects no upstream of this block (server names: a.example, b.example; addresses: 192.0.2.1:853, 192.0.2.2:853, 192.0.2.3:853, [2001:db8::1]:8853); a pin ends in '='`, line: 2},
		{name: "pin with a slash without its final =", input: mixed("pin_sha256 " + strings.TrimSuffix(pinSlash, "=")),
			wantErr: `pin_sha256: "` + strings.TrimSuffix(pinSlash, "=") + `" is neither a server name nor an IP address; a pin ends in '='`, line: 2},
		{name: "pin selector neither name nor address", input: mixed("pin_sha256 a.example/x " + pA), wantErr: `pin_sha256: "a.example/x" is neither a server name nor an IP address`, line: 2},
		{name: "pin selector IPv6 without closing bracket", input: mixed("pin_sha256 [2001:db8::1:8853 " + pA), wantErr: `pin_sha256: "[2001:db8::1:8853" is neither a server name nor an IP address`, line: 2},
		{name: "pin selector without pin", input: mixed("pin_sha256 a.example"), wantErr: `pin_sha256: "a.example" selects upstreams but gives no pin`, line: 2},
		{name: "pin selector with a bad pin", input: mixed("pin_sha256 a.example abc="), wantErr: `pin_sha256: for "a.example": "abc=" is not base64 of a 32-byte SHA-256 digest`, line: 2},
		{name: "pin selector with a second selector", input: mixed("pin_sha256 a.example b.example " + pA), wantErr: `pin_sha256: for "a.example": "b.example" is not base64`, line: 2},
		{name: "duplicate pin of one selector", input: mixed("pin_sha256 a.example "+pA, "pin_sha256 A.EXAMPLE "+pA), wantErr: `pin_sha256: for "A.EXAMPLE": ` + strconv.Quote(pA) + " is given twice", line: 3},
		{name: "upstream pinned by name and by address", input: mixed("pin_sha256 a.example "+pA, "pin_sha256 192.0.2.2 "+pB),
			wantErr: `pin_sha256: "192.0.2.2" and "a.example" (line 2) both select tls://192.0.2.2%a.example; select each upstream once`, line: 3},
		{name: "upstream pinned by tls_servername and by address", input: "dotstub . 192.0.2.1 192.0.2.2 {\ntls_servername dns.example\npin_sha256 192.0.2.1 " + pA + "\npin_sha256 dns.example " + pB + "\n}",
			wantErr: `pin_sha256: "dns.example" and "192.0.2.1" (line 3) both select 192.0.2.1; select each upstream once`, line: 4},
		{name: "pins for all, then for some", input: mixed("pin_sha256 "+pA, "pin_sha256 b.example "+pB),
			wantErr: `pin_sha256: pins for "b.example" only, but line 2 gives pins for every upstream; give every upstream its own pins, or pins for all`, line: 3},
		{name: "pins for some, then for all", input: mixed("pin_sha256 a.example "+pA, "pin_sha256 b.example "+pB, "pin_sha256 "+pC),
			wantErr: `pin_sha256: pins for every upstream, but line 2 gives pins for "a.example" only; give every upstream its own pins, or pins for all`, line: 4},

		// tls_ca
		{name: "tls_ca for every upstream", input: stanza("tls_ca " + caAFile), upstreams: one, ids: []wantID{caOnly(caA)}},
		{name: "tls_ca per server name", input: mixed("tls_ca a.example "+caAFile, "tls_ca b.example "+caBFile), upstreams: mixedUps,
			ids: []wantID{caOnly(caA), caOnly(caA), caOnly(caB), caOnly(caB)}},
		{name: "tls_ca for every upstream and for one", input: mixed("tls_ca 192.0.2.3 "+caBFile, "tls_ca "+caAFile), upstreams: mixedUps,
			ids: []wantID{caOnly(caA), caOnly(caA), caOnly(caB), caOnly(caA)}},
		{name: "tls CA and tls_ca for one", input: mixed("tls "+caAFile, "tls_ca [2001:db8::1]:8853 "+caBFile), upstreams: mixedUps,
			ids: []wantID{caOnly(caA), caOnly(caA), caOnly(caA), caOnly(caB)}},
		{name: "tls client cert and tls_ca for each name", input: mixed("tls "+certFile+" "+keyFile, "tls_ca a.example "+caAFile, "tls_ca b.example "+caBFile), upstreams: mixedUps,
			clientCert: true, ids: []wantID{caOnly(caA), caOnly(caA), caOnly(caB), caOnly(caB)}},
		{name: "tls client cert, then tls_ca for every upstream", input: stanza("tls "+certFile+" "+keyFile, "tls_ca "+caFile), upstreams: one, clientCert: true, rootCAs: true},
		{name: "tls_ca and pins per upstream", input: mixed("tls_ca a.example "+caAFile, "pin_sha256 a.example "+pA, "tls_ca b.example "+caBFile, "pin_sha256 b.example "+pB), upstreams: mixedUps,
			ids: []wantID{{pins: []*dottest.CA{caA}, ca: caA}, {pins: []*dottest.CA{caA}, ca: caA}, {pins: []*dottest.CA{caB}, ca: caB}, {pins: []*dottest.CA{caB}, ca: caB}}},
		{name: "tls_ca without args", input: stanza("tls_ca"), wantErr: "tls_ca: wrong argument count", line: 2},
		{name: "tls_ca 3 args", input: stanza("tls_ca 192.0.2.1 " + caAFile + " " + caBFile), wantErr: "tls_ca: wrong argument count", line: 2},
		{name: "tls_ca missing file", input: mixed("tls_ca a.example " + missing), wantErr: "tls_ca: reading the CA file: open " + missing + ": no such file or directory", line: 2},
		{name: "tls_ca not PEM", input: stanza("tls_ca " + notPEM), wantErr: "tls_ca: " + notPEM + " holds no PEM certificate", line: 2},
		{name: "tls_ca selector selects nothing", input: mixed("tls_ca a.example "+caAFile, "tls_ca 192.0.2.4 "+caBFile),
			wantErr: `tls_ca: "192.0.2.4" selects no upstream of this block`, line: 3},
		{name: "tls_ca selector neither name nor address", input: mixed("tls_ca tls://192.0.2.1 " + caAFile), wantErr: `tls_ca: "tls://192.0.2.1" is neither a server name nor an IP address`, line: 2},
		{name: "upstream given a CA by name and by address", input: mixed("tls_ca 192.0.2.3 "+caAFile, "tls_ca b.example "+caBFile),
			wantErr: `tls_ca: "b.example" and "192.0.2.3" (line 2) both select tls://192.0.2.3%b.example; select each upstream once`, line: 3},
		{name: "tls_ca twice for one selector", input: mixed("tls_ca a.example "+caAFile, "tls_ca a.example. "+caBFile), wantErr: `tls_ca: line 2 already gives a CA for "a.example"; give one`, line: 3},
		{name: "tls_ca twice for every upstream", input: stanza("tls_ca "+caAFile, "tls_ca "+caBFile), wantErr: "tls_ca: line 2 already gives a CA for every upstream; give one", line: 3},
		{name: "tls CA, then tls_ca for every upstream", input: stanza("tls "+caFile, "tls_ca "+caAFile), wantErr: "tls_ca: tls on line 2 already gives a CA for every upstream; give one", line: 3},
		{name: "tls_ca for every upstream, then tls CA", input: stanza("tls_ca "+caAFile, "tls "+certFile+" "+keyFile+" "+caFile), wantErr: "tls: tls_ca on line 2 already gives a CA for every upstream; give one", line: 3},

		// The example of the README, with placeholder pins.
		{name: "README example", input: "dotstub . tls://1.1.1.1%cloudflare-dns.com tls://1.0.0.1%cloudflare-dns.com tls://9.9.9.9%dns.quad9.net {\n" +
			"pin_sha256 cloudflare-dns.com " + pA + " " + pB + "\n" +
			"pin_sha256 9.9.9.9 " + pC + "\n" +
			"tls_ca dns.quad9.net " + caAFile + "\n}",
			upstreams: []string{"1.1.1.1:853 cloudflare-dns.com", "1.0.0.1:853 cloudflare-dns.com", "9.9.9.9:853 dns.quad9.net"},
			ids:       []wantID{pins(caA, caB), pins(caA, caB), {pins: []*dottest.CA{caC}, ca: caA}}},

		// policy
		{name: "policy random", input: stanza("policy random"), upstreams: one, policy: "random"},
		{name: "policy round_robin", input: stanza("policy round_robin"), upstreams: one, policy: "round_robin"},
		{name: "policy sequential", input: stanza("policy sequential"), upstreams: one, policy: "sequential"},
		{name: "policy fastest", input: stanza("policy fastest"), upstreams: one, policy: "fastest"},
		{name: "policy unknown", input: stanza("policy first"), wantErr: `policy: "first" is not one of fastest, random, round_robin, sequential`, line: 2},
		{name: "policy without arg", input: stanza("policy"), wantErr: "policy: wrong argument count", line: 2},
		{name: "policy 2 args", input: stanza("policy random sequential"), wantErr: "policy: wrong argument count", line: 2},

		// health_check
		{name: "health_check", input: stanza("health_check 2s"), upstreams: one, healthCheck: 2 * time.Second},
		{name: "health_check 0 disables health checks", input: stanza("health_check 0"), upstreams: one, healthCheck: -1, maxFails: new(uint32(0))},
		{name: "health_check negative", input: stanza("health_check -1s"), wantErr: "health_check: -1s is negative", line: 2},
		{name: "health_check not a duration", input: stanza("health_check 5"), wantErr: `health_check: "5" is not a duration`, line: 2},
		{name: "health_check no argument", input: stanza("health_check"), wantErr: "health_check: wrong argument count", line: 2},
		{name: "health_check 2 durations", input: stanza("health_check 1s 2s"), wantErr: `health_check: "2s": want no_rec or domain NAME after the duration`, line: 2},
		{name: "health_check domain", input: stanza("health_check 1s domain probe.example.net"), upstreams: one, healthCheck: time.Second},
		{name: "health_check no_rec and domain", input: stanza("health_check 1s no_rec domain probe.example.net"), upstreams: one, healthCheck: time.Second},
		{name: "health_check domain, then no_rec", input: stanza("health_check 1s domain probe.example.net no_rec"), upstreams: one, healthCheck: time.Second},
		{name: "health_check domain without name", input: stanza("health_check 1s domain"), wantErr: "health_check: want a NAME after domain", line: 2},
		{name: "health_check other keyword", input: stanza("health_check 1s name x.example"), wantErr: `health_check: "name": want no_rec or domain NAME after the duration`, line: 2},
		{name: "health_check domain not a name", input: stanza("health_check 1s domain a..b"), wantErr: `health_check: domain "a..b" is not a domain name`, line: 2},

		// max_fails
		{name: "max_fails", input: stanza("max_fails 5"), upstreams: one, maxFails: new(uint32(5))},
		{name: "max_fails 0 never marks down", input: stanza("max_fails 0"), upstreams: one, maxFails: new(uint32(0))},
		{name: "max_fails abc", input: stanza("max_fails abc"), wantErr: `max_fails: "abc" is not an integer from 0 to 2147483647`, line: 2},
		{name: "max_fails negative", input: stanza("max_fails -1"), wantErr: `max_fails: "-1" is not an integer`, line: 2},
		{name: "max_fails too big", input: stanza("max_fails 2147483648"), wantErr: `max_fails: "2147483648" is not an integer`, line: 2},
		{name: "max_fails without arg", input: stanza("max_fails"), wantErr: "max_fails: wrong argument count", line: 2},

		// expire
		{name: "expire", input: stanza("expire 1m"), upstreams: one, expire: time.Minute},
		{name: "expire 0", input: stanza("expire 0"), wantErr: "expire: 0s is less than 1ns", line: 2},
		{name: "expire negative", input: stanza("expire -1s"), wantErr: "expire: -1s is less than 1ns", line: 2},
		{name: "expire not a duration", input: stanza("expire soon"), wantErr: `expire: "soon" is not a duration`, line: 2},

		// max_concurrent
		{name: "max_concurrent", input: stanza("max_concurrent 1000"), upstreams: one, maxConcurrent: 1000},
		{name: "max_concurrent 0 is no limit", input: stanza("max_concurrent 0"), upstreams: one},
		{name: "max_concurrent negative", input: stanza("max_concurrent -1"), wantErr: `max_concurrent: "-1" is not an integer from 0 to 2147483647`, line: 2},
		{name: "max_concurrent 2 args", input: stanza("max_concurrent 1 2"), wantErr: "max_concurrent: wrong argument count", line: 2},

		// timeout
		{name: "timeout", input: stanza("timeout 500ms"), upstreams: one, timeout: 500 * time.Millisecond},
		{name: "timeout least", input: stanza("timeout 1ms"), upstreams: one, timeout: time.Millisecond},
		{name: "timeout 0", input: stanza("timeout 0"), wantErr: "timeout: 0s is less than 1ms", line: 2},
		{name: "timeout negative", input: stanza("timeout -2s"), wantErr: "timeout: -2s is less than 1ms", line: 2},
		{name: "timeout not a duration", input: stanza("timeout 2"), wantErr: `timeout: "2" is not a duration such as 500ms or 10s`, line: 2},
		{name: "timeout without arg", input: stanza("timeout"), wantErr: "timeout: wrong argument count", line: 2},
		{name: "timeout 2 args", input: stanza("timeout 1s 2s"), wantErr: "timeout: wrong argument count", line: 2},

		// max_conns
		{name: "max_conns", input: stanza("max_conns 1"), upstreams: one, maxConns: 1},
		{name: "max_conns most", input: stanza("max_conns 1024"), upstreams: one, maxConns: 1024},
		{name: "max_conns 0", input: stanza("max_conns 0"), wantErr: `max_conns: "0" is not an integer from 1 to 1024`, line: 2},
		{name: "max_conns 1025", input: stanza("max_conns 1025"), wantErr: `max_conns: "1025" is not an integer from 1 to 1024`, line: 2},

		// max_inflight
		{name: "max_inflight", input: stanza("max_inflight 1"), upstreams: one, maxInflight: 1},
		{name: "max_inflight most", input: stanza("max_inflight 32768"), upstreams: one, maxInflight: 32768},
		{name: "max_inflight 0", input: stanza("max_inflight 0"), wantErr: `max_inflight: "0" is not an integer from 1 to 32768`, line: 2},
		{name: "max_inflight 32769", input: stanza("max_inflight 32769"), wantErr: `max_inflight: "32769" is not an integer from 1 to 32768`, line: 2},
		{name: "max_inflight 65535", input: stanza("max_inflight 65535"), wantErr: `max_inflight: "65535" is not an integer from 1 to 32768`, line: 2},

		// failover and health
		{name: "failfast", input: stanza("failfast_all_unhealthy_upstreams"), upstreams: one,
			check: func(d *Dotstub) string { return want(d.failfast, "failfast off") }},
		{name: "failfast with an arg", input: stanza("failfast_all_unhealthy_upstreams yes"), wantErr: "failfast_all_unhealthy_upstreams: wrong argument count", line: 2},
		{name: "failover", input: stanza("failover SERVFAIL refused"), upstreams: one, check: func(d *Dotstub) string {
			return want(slices.Equal(d.failoverRcodes, []int{dns.RcodeServerFailure, dns.RcodeRefused}), "failover %v", d.failoverRcodes)
		}},
		{name: "failover without arg", input: stanza("failover"), wantErr: "failover: wrong argument count", line: 2},
		{name: "failover not an rcode", input: stanza("failover SERVFALE"), wantErr: `failover: "SERVFALE" is not an RCODE`, line: 2},
		{name: "failover NOERROR", input: stanza("failover NOERROR"), wantErr: "failover: NOERROR is an answer, not a failure", line: 2},
		{name: "hedge", input: stanza("hedge 30ms"), upstreams: one, check: func(d *Dotstub) string {
			return want(d.hedge.enabled && !d.hedge.auto && d.hedge.delay == 30*time.Millisecond, "hedge on %v, auto %v, delay %s", d.hedge.enabled, d.hedge.auto, d.hedge.delay)
		}},
		{name: "hedge auto", input: stanza("hedge auto"), upstreams: one,
			check: func(d *Dotstub) string {
				return want(d.hedge.enabled && d.hedge.auto, "hedge on %v, auto %v, delay %s", d.hedge.enabled, d.hedge.auto, d.hedge.delay)
			}},
		{name: "hedge without arg", input: stanza("hedge"), wantErr: "hedge: wrong argument count", line: 2},
		{name: "hedge 2 args", input: stanza("hedge 30ms auto"), wantErr: "hedge: wrong argument count", line: 2},
		{name: "hedge not a duration", input: stanza("hedge soon"), wantErr: `hedge: "soon" is neither auto nor a duration of 1ms or more`, line: 2},
		{name: "hedge too short", input: stanza("hedge 10us"), wantErr: `hedge: "10us" is neither auto nor a duration of 1ms or more`, line: 2},
		{name: "health_check domain", input: stanza("health_check 1s domain probe.example.net"), upstreams: one, healthCheck: time.Second,
			check: func(d *Dotstub) string {
				return want(d.upstreams[0].Config().ProbeName == "probe.example.net.", "probe name %q", d.upstreams[0].Config().ProbeName)
			}},
		{name: "failover defaults", input: stanza("max_fails 3"), upstreams: one, maxFails: new(uint32(3)), check: func(d *Dotstub) string {
			return want(d.upstreams[0].Config().ProbeName == "." && !d.hedge.enabled && !d.failfast && d.failoverRcodes == nil,
				"probe name %q, hedge %v, failfast %v, failover %v", d.upstreams[0].Config().ProbeName, d.hedge.enabled, d.failfast, d.failoverRcodes)
		}},

		// privacy
		{name: "padding default", input: stanza("max_fails 2"), upstreams: one, check: padding(dot.DefaultPadBlock, false)},
		{name: "padding off", input: stanza("padding off"), upstreams: one, check: padding(0, false)},
		{name: "padding 468", input: stanza("padding 468"), upstreams: one, check: padding(468, false)},
		{name: "padding without arg", input: stanza("padding"), wantErr: "padding: wrong argument count", line: 2},
		{name: "padding too small", input: stanza("padding 8"), wantErr: `padding: "8" is neither off nor a block size from 16 to 1024 bytes`, line: 2},
		{name: "padding on", input: stanza("padding on"), wantErr: `padding: "on" is neither off nor a block size from 16 to 1024 bytes`, line: 2},
		{name: "strip_client_subnet", input: stanza("strip_client_subnet"), upstreams: one, check: padding(dot.DefaultPadBlock, true)},
		{name: "strip_client_subnet with an arg", input: stanza("strip_client_subnet yes"), wantErr: "strip_client_subnet: wrong argument count", line: 2},

		// forward's options
		{name: "max_age", input: stanza("max_age 30s"), upstreams: one},
		{name: "max_age negative", input: stanza("max_age -1s"), wantErr: "max_age: -1s is negative", line: 2},
		{name: "max_age below expire", input: stanza("max_age 5s"), wantErr: "max_age: 5s is less than expire (10s)", line: 2},
		{name: "expire above max_age", input: stanza("max_age 30s", "expire 1m"), wantErr: "expire: 1m0s is more than max_age (30s)", line: 3},
		{name: "max_idle_conns", input: stanza("max_idle_conns 2"), upstreams: one},
		{name: "max_idle_conns negative", input: stanza("max_idle_conns -1"), wantErr: `max_idle_conns: "-1" is not an integer from 0`, line: 2},
		{name: "max_connect_attempts", input: stanza("max_connect_attempts 1"), upstreams: one},
		{name: "max_connect_attempts not a number", input: stanza("max_connect_attempts x"), wantErr: `max_connect_attempts: "x" is not an integer from 0`, line: 2},
		{name: "read_timeout", input: stanza("read_timeout 500ms"), upstreams: one},
		{name: "read_timeout 0", input: stanza("read_timeout 0"), wantErr: "read_timeout: 0s is less than 1ms", line: 2},
		{name: "next", input: stanza("next NXDOMAIN servfail"), upstreams: one},
		{name: "next without RCODE", input: stanza("next"), wantErr: "next: wrong argument count", line: 2},
		{name: "next not an RCODE", input: stanza("next NXDOMIAN"), wantErr: `next: "NXDOMIAN" is not an RCODE`, line: 2},
		{name: "next_on_nodata", input: stanza("next_on_nodata"), upstreams: one},
		{name: "next_on_nodata with an argument", input: stanza("next_on_nodata yes"), wantErr: "next_on_nodata: wrong argument count", line: 2},
		{name: "source_address", input: stanza("source_address 127.0.0.1"), upstreams: one},
		{name: "source_address not an IP", input: stanza("source_address eth0"), wantErr: `source_address: "eth0" is not an IP address`, line: 2},
		{name: "force_tcp", input: stanza("force_tcp"), upstreams: one},
		{name: "force_tcp with an argument", input: stanza("force_tcp yes"), wantErr: "force_tcp: wrong argument count", line: 2},
		{name: "prefer_udp refused", input: stanza("prefer_udp"), wantErr: "prefer_udp: dotstub sends no query over UDP", line: 2},
		{name: "doh_method refused", input: stanza("doh_method GET"), wantErr: "doh_method: dotstub speaks DNS-over-TLS, not DNS-over-HTTPS", line: 2},
		{name: "resolver refused", input: stanza("resolver 192.0.2.53"), wantErr: "resolver: dotstub takes upstreams by IP address only", line: 2},

		// private_names
		{name: "private_names off", input: stanza("private_names off"), upstreams: one},
		{name: "private_names on", input: stanza("private_names on"), upstreams: one},
		{name: "private_names other", input: stanza("private_names forward"), wantErr: `private_names: "forward" is neither on nor off`, line: 2},
		{name: "private_names without argument", input: stanza("private_names"), wantErr: "private_names: wrong argument count", line: 2},

		{name: "unknown option", input: stanza("policy random", "health 1s"), wantErr: `unknown option "health"`, line: 3},

		{name: "every option", input: "dotstub example.org tls://192.0.2.1 192.0.2.2:8853 {\n" +
			"except a.example.org\n" +
			"tls " + caFile + "\n" +
			"tls_servername dns.example\n" +
			"pin_sha256 " + pinA + "\n" +
			"policy sequential\n" +
			"health_check 250ms\n" +
			"max_fails 3\n" +
			"expire 30s\n" +
			"max_concurrent 100\n" +
			"timeout 3s\n" +
			"max_conns 8\n" +
			"max_inflight 100\n" +
			"}",
			from: "example.org.", ignored: []string{"a.example.org."},
			upstreams: []string{"192.0.2.1:853 dns.example", "192.0.2.2:8853 dns.example"},
			rootCAs:   true, pinned: true, policy: "sequential", healthCheck: 250 * time.Millisecond,
			maxFails: new(uint32(3)), expire: 30 * time.Second, maxConcurrent: 100, timeout: 3 * time.Second,
			maxConns: 8, maxInflight: 100},
	}
}

func TestParse(t *testing.T) {
	for _, tc := range parseTests(t) {
		t.Run(tc.name, func(t *testing.T) {
			ds, err := parse(caddy.NewTestController("dns", tc.input))
			if tc.wantErr != "" {
				want := fmt.Sprintf("Testfile:%d - Error during parsing: %s", tc.line, tc.wantErr)
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("error %v, want one holding %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if len(ds) != 1 {
				t.Fatalf("%d stanzas, want 1", len(ds))
			}
			checkStanza(t, ds[0], tc)
			if tc.check != nil {
				if problem := tc.check(ds[0]); problem != "" {
					t.Error(problem)
				}
			}
		})
	}
}

// padding checks a stanza's privacy: padding to blocks of pad bytes (0:
// none), and the client subnet stripped or not.
func padding(pad int, strip bool) func(*Dotstub) string {
	return func(d *Dotstub) string {
		return want(d.privacy.PadBlock == pad && d.privacy.StripSubnet == strip, "privacy %+v, want padding %d, strip %v", d.privacy, pad, strip)
	}
}

// checkStanza compares d with the expected values of tc, defaults filled in.
func checkStanza(t *testing.T, d *Dotstub, tc parseTest) {
	t.Helper()
	wantFrom := cmp.Or(tc.from, ".")
	wantTimeout := cmp.Or(tc.timeout, defaultTimeout)
	wantPolicy := cmp.Or(tc.policy, "fastest")
	wantHealth := cmp.Or(tc.healthCheck, upstream.DefaultHealthCheck)
	if tc.healthCheck < 0 {
		wantHealth = 0
	}
	wantExpire := tc.expire // 0: the pool's default
	wantFails := uint32(upstream.DefaultMaxFails)
	if tc.maxFails != nil {
		wantFails = *tc.maxFails
	}

	if d.from != wantFrom {
		t.Errorf("from %q, want %q", d.from, wantFrom)
	}
	if !slices.Equal(d.ignored, tc.ignored) {
		t.Errorf("ignored %q, want %q", d.ignored, tc.ignored)
	}
	if d.timeout != wantTimeout {
		t.Errorf("timeout %s, want %s", d.timeout, wantTimeout)
	}
	if d.maxConcurrent != tc.maxConcurrent {
		t.Errorf("maxConcurrent %d, want %d", d.maxConcurrent, tc.maxConcurrent)
	}
	if d.policy.String() != wantPolicy {
		t.Errorf("policy %s, want %s", d.policy, wantPolicy)
	}

	var got []string
	tlsSeen := map[*tls.Config]bool{}
	for _, u := range d.upstreams {
		cfg := u.Config()
		pc := cfg.Pool
		got = append(got, pc.Addr+" "+pc.TLS.ServerName)
		if cfg.Name != u.Name() || cfg.Name == "" {
			t.Errorf("%s: name %q", pc.Addr, cfg.Name)
		}
		if cfg.MaxFails != wantFails {
			t.Errorf("%s: MaxFails %d, want %d", pc.Addr, cfg.MaxFails, wantFails)
		}
		if cfg.HealthCheck != wantHealth {
			t.Errorf("%s: HealthCheck %s, want %s", pc.Addr, cfg.HealthCheck, wantHealth)
		}
		if cfg.Probed == nil || pc.Events.Dialed == nil || pc.Events.Closed == nil {
			t.Errorf("%s: metrics hooks not set", pc.Addr)
		}
		if pc.Timeout != d.timeout {
			t.Errorf("%s: pool Timeout %s, want the stanza's %s", pc.Addr, pc.Timeout, d.timeout)
		}
		if pc.Expire != wantExpire {
			t.Errorf("%s: Expire %s, want %s", pc.Addr, pc.Expire, wantExpire)
		}
		if pc.MaxConns != tc.maxConns {
			t.Errorf("%s: MaxConns %d, want %d", pc.Addr, pc.MaxConns, tc.maxConns)
		}
		if pc.MaxInflight != tc.maxInflight {
			t.Errorf("%s: MaxInflight %d, want %d", pc.Addr, pc.MaxInflight, tc.maxInflight)
		}

		c := pc.TLS
		if tlsSeen[c] {
			t.Errorf("%s: shares its tls.Config with another upstream", pc.Addr)
		}
		tlsSeen[c] = true
		if c.MinVersion < tls.VersionTLS12 {
			t.Errorf("%s: MinVersion %#x, want at least TLS 1.2", pc.Addr, c.MinVersion)
		}
		if c.InsecureSkipVerify {
			t.Errorf("%s: InsecureSkipVerify", pc.Addr)
		}
		if c.ClientSessionCache == nil {
			t.Errorf("%s: no session cache", pc.Addr)
		}
		if tc.ids != nil && len(got) <= len(tc.ids) {
			checkID(t, pc.Addr, c, tc.ids[len(got)-1], tc.ids)
		} else {
			if (c.VerifyConnection != nil) != tc.pinned {
				t.Errorf("%s: VerifyConnection set %t, want %t", pc.Addr, c.VerifyConnection != nil, tc.pinned)
			}
			if (c.RootCAs != nil) != tc.rootCAs {
				t.Errorf("%s: RootCAs set %t, want %t", pc.Addr, c.RootCAs != nil, tc.rootCAs)
			}
		}
		if (len(c.Certificates) == 1) != tc.clientCert {
			t.Errorf("%s: %d client certificates, want one: %t", pc.Addr, len(c.Certificates), tc.clientCert)
		}
	}
	if !slices.Equal(got, tc.upstreams) {
		t.Errorf("upstreams %q, want %q", got, tc.upstreams)
	}
}

// checkID checks that c, the TLS configuration of the upstream at addr, has
// the identity want: its pins accept the certificates of want.pins and those
// of no other CA named in all, and its RootCAs is want.ca's.
func checkID(t *testing.T, addr string, c *tls.Config, want wantID, all []wantID) {
	t.Helper()
	switch {
	case want.ca == nil && c.RootCAs != nil:
		t.Errorf("%s: RootCAs set, want none", addr)
	case want.ca != nil && !want.ca.Pool.Equal(c.RootCAs):
		t.Errorf("%s: RootCAs is not the pool of %s", addr, want.ca.Cert.Subject.CommonName)
	}
	if len(want.pins) == 0 {
		if c.VerifyConnection != nil {
			t.Errorf("%s: VerifyConnection set, want no pin", addr)
		}
		return
	}
	if c.VerifyConnection == nil {
		t.Errorf("%s: VerifyConnection not set, want pins", addr)
		return
	}
	for _, id := range all {
		for _, ca := range append(id.pins, id.ca) {
			if ca == nil {
				continue
			}
			err := c.VerifyConnection(tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{ca.Cert}}})
			if wantOK := slices.Contains(want.pins, ca); (err == nil) != wantOK {
				t.Errorf("%s: a chain of %s accepted %t, want %t", addr, ca.Cert.Subject.CommonName, err == nil, wantOK)
			}
		}
	}
}

func TestParseStanzas(t *testing.T) {
	input := `dotstub example.org 192.0.2.1 {
    policy sequential
}
dotstub . 192.0.2.2 192.0.2.3 {
    timeout 1s
}
dotstub example.net 192.0.2.4`
	ds, err := parse(caddy.NewTestController("dns", input))
	if err != nil {
		t.Fatal(err)
	}
	want := []parseTest{
		{from: "example.org.", policy: "sequential", upstreams: []string{"192.0.2.1:853 192.0.2.1"}},
		{timeout: time.Second, upstreams: []string{"192.0.2.2:853 192.0.2.2", "192.0.2.3:853 192.0.2.3"}},
		{from: "example.net.", upstreams: []string{"192.0.2.4:853 192.0.2.4"}},
	}
	if len(ds) != len(want) {
		t.Fatalf("%d stanzas, want %d", len(ds), len(want))
	}
	for i, d := range ds {
		t.Run(cmp.Or(want[i].from, "."), func(t *testing.T) { checkStanza(t, d, want[i]) })
	}
}

// TestParsePinsEnforced checks that the pins parsed are the ones the TLS
// configuration enforces.
func TestParsePinsEnforced(t *testing.T) {
	ca, err := dottest.NewCA("pinned.example")
	if err != nil {
		t.Fatal(err)
	}
	other, err := dottest.NewCA("other.example")
	if err != nil {
		t.Fatal(err)
	}
	ds, err := parse(caddy.NewTestController("dns", stanza("pin_sha256 "+pinA+" "+ca.Pin().String())))
	if err != nil {
		t.Fatal(err)
	}
	verify := ds[0].upstreams[0].Config().Pool.TLS.VerifyConnection
	chain := func(c *x509.Certificate) tls.ConnectionState {
		return tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{c}}}
	}
	if err := verify(chain(ca.Cert)); err != nil {
		t.Errorf("pinned chain refused: %v", err)
	}
	if err := verify(chain(other.Cert)); err == nil {
		t.Error("unpinned chain accepted")
	}
}

var toTests = []struct {
	name       string
	input      string
	addr       string
	serverName string
	wantErr    string // substring; empty means success
}{
	{name: "tls IPv4", input: "tls://192.0.2.1", addr: "192.0.2.1:853"},
	{name: "bare IPv4", input: "192.0.2.1", addr: "192.0.2.1:853"},
	{name: "IPv4 port", input: "192.0.2.1:8853", addr: "192.0.2.1:8853"},
	{name: "tls IPv4 port", input: "tls://192.0.2.1:8853", addr: "192.0.2.1:8853"},
	{name: "port with a leading zero", input: "192.0.2.1:0853", addr: "192.0.2.1:853"},
	{name: "tls IPv4 name", input: "tls://192.0.2.1%dns.example", addr: "192.0.2.1:853", serverName: "dns.example"},
	{name: "name with final dot", input: "tls://192.0.2.1%dns.example.", addr: "192.0.2.1:853", serverName: "dns.example"},
	{name: "tls IPv4 name port", input: "tls://192.0.2.1%dns.example:8853", addr: "192.0.2.1:8853", serverName: "dns.example"},
	{name: "bare IPv4 name port", input: "192.0.2.1%dns.example:8853", addr: "192.0.2.1:8853", serverName: "dns.example"},
	{name: "bare IPv6", input: "2001:db8::1", addr: "[2001:db8::1]:853"},
	{name: "IPv6 made canonical", input: "tls://2001:DB8:0::1", addr: "[2001:db8::1]:853"},
	{name: "bracketed IPv6", input: "[2001:db8::1]", addr: "[2001:db8::1]:853"},
	{name: "bracketed IPv6 port", input: "[2001:db8::1]:8853", addr: "[2001:db8::1]:8853"},
	{name: "tls IPv6 name", input: "tls://2001:db8::1%dns.example", addr: "[2001:db8::1]:853", serverName: "dns.example"},
	{name: "tls bracketed IPv6 name", input: "tls://[2001:db8::1%dns.example]", addr: "[2001:db8::1]:853", serverName: "dns.example"},
	{name: "tls bracketed IPv6 name port", input: "tls://[2001:db8::1%dns.example]:8853", addr: "[2001:db8::1]:8853", serverName: "dns.example"},

	{name: "dns scheme", input: "dns://192.0.2.1", wantErr: "is not a tls:// upstream"},
	{name: "https scheme", input: "https://192.0.2.1/dns-query", wantErr: "is not a tls:// upstream"},
	{name: "upper-case scheme", input: "TLS://192.0.2.1", wantErr: "is not a tls:// upstream"},
	{name: "empty", input: "", wantErr: `"" is not an IP address`},
	{name: "scheme only", input: "tls://", wantErr: `"" is not an IP address`},
	{name: "hostname", input: "dns.example", wantErr: `"dns.example" is not an IP address`},
	{name: "tls hostname port", input: "tls://dns.example:853", wantErr: `"dns.example" is not an IP address`},
	{name: "tls hostname name", input: "tls://dns.example%dns.example", wantErr: `"dns.example" is not an IP address`},
	{name: "port 0", input: "192.0.2.1:0", wantErr: `"0" is not a port`},
	{name: "port 65536", input: "192.0.2.1:65536", wantErr: `"65536" is not a port`},
	{name: "port negative", input: "[2001:db8::1]:-1", wantErr: `"-1" is not a port`},
	{name: "port not a number", input: "tls://192.0.2.1%dns.example:dot", wantErr: `"dot" is not a port`},
	{name: "empty server name", input: "tls://192.0.2.1%", wantErr: `"" is not a server name`},
	{name: "empty server name port", input: "tls://192.0.2.1%:853", wantErr: `"" is not a server name`},
	{name: "empty bracketed server name", input: "tls://[2001:db8::1%]:853", wantErr: `"" is not a server name`},
	{name: "root server name", input: "tls://192.0.2.1%.", wantErr: `"." is not a server name`},
	{name: "server name with slash", input: "tls://192.0.2.1%dns.example/x", wantErr: `"dns.example/x" is not a server name`},
	{name: "server name with bracket", input: "tls://192.0.2.1%dns.example]", wantErr: `"dns.example]" is not a server name`},
	{name: "server name empty label", input: "tls://192.0.2.1%dns..example", wantErr: "is not a server name"},
	{name: "missing bracket after name", input: "tls://[2001:db8::1%dns.example:853", wantErr: "missing ']'"},
	{name: "missing bracket", input: "tls://[2001:db8::1", wantErr: `"[2001:db8::1" is not an IP address`},
	{name: "IP zone", input: "tls://[fe80::1%eth0%dns.example]:853", wantErr: `"fe80::1%eth0" is not an IP address`},
}

func TestParseTo(t *testing.T) {
	for _, tc := range toTests {
		t.Run(tc.name, func(t *testing.T) {
			addr, name, err := parseTo(tc.input)
			if tc.wantErr != "" {
				// The error names the upstream as written, for TO: to prefix.
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.HasPrefix(err.Error(), strconv.Quote(tc.input)) {
					t.Fatalf("parseTo(%q) = %q, %q, %v; want an error starting %q and holding %q", tc.input, addr, name, err, strconv.Quote(tc.input), tc.wantErr)
				}
				return
			}
			if err != nil || addr != tc.addr || name != tc.serverName {
				t.Fatalf("parseTo(%q) = %q, %q, %v; want %q, %q", tc.input, addr, name, err, tc.addr, tc.serverName)
			}
		})
	}
}

// FuzzParse parses arbitrary Corefiles: parse never panics, every error
// names its line, and every stanza it accepts has 1 to maxUpstreams upstreams,
// each with a TLS configuration that passes tlsFault.
func FuzzParse(f *testing.F) {
	for _, tc := range parseTests(f) {
		f.Add(tc.input)
	}
	for _, tc := range toTests {
		f.Add("dotstub . " + tc.input)
	}
	f.Fuzz(func(t *testing.T, input string) {
		// The tls option reads the files it names: keep away from devices
		// such as /dev/zero that never end.
		for _, dir := range []string{"/dev", "/proc", "/sys"} {
			if strings.Contains(input, dir) {
				t.Skip()
			}
		}
		ds, err := parse(caddy.NewTestController("dns", input))
		if err != nil {
			// Every error names the line (STYLE.md section 3).
			if !strings.Contains(err.Error(), "Testfile:") {
				t.Fatalf("%q: error without its line: %v", input, err)
			}
			return
		}
		for _, d := range ds {
			if n := len(d.upstreams); n == 0 || n > maxUpstreams {
				t.Fatalf("%q: %d upstreams", input, n)
			}
			for _, u := range d.upstreams {
				if fault := tlsFault(u.Config().Pool.TLS); fault != "" {
					t.Fatalf("%q: upstream %s: %s", input, u.Name(), fault)
				}
			}
		}
	})
}

// TestCorefileExample parses the dotstub stanza of Corefile.example, so the
// example in the repository never drifts from the syntax. (Starting it would
// dial the public resolvers it names.)
func TestCorefileExample(t *testing.T) {
	data, err := os.ReadFile("Corefile.example")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	start := strings.Index(text, "dotstub ")
	end := strings.Index(text[start:], "\n    }\n")
	if start < 0 || end < 0 {
		t.Fatal("no dotstub stanza with a block in Corefile.example")
	}
	ds, err := parse(caddy.NewTestController("dns", text[start:start+end+len("\n    }")]))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ds[0].upstreams); n != 4 {
		t.Errorf("%d upstreams, want the 4 of the example", n)
	}
}
