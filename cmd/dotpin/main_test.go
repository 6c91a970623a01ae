package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dotstub/dotstub/plugin/dottest"
	"github.com/dotstub/dotstub/plugin/pin"
)

// result is one run of dotpin.
type result struct {
	code           int
	stdout, stderr string
}

func dotpin(t *testing.T, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return result{code, stdout.String(), stderr.String()}
}

// pins returns the pin-sha256 values printed, in order.
func (r result) pins() []string {
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^    pin-sha256: (\S+)$`).FindAllStringSubmatch(r.stdout, -1) {
		out = append(out, m[1])
	}
	return out
}

// kinds returns the "[i] kind" headings printed, in order.
func (r result) kinds() []string {
	return regexp.MustCompile(`(?m)^\[\d+\] .*$`).FindAllString(r.stdout, -1)
}

// lastLine is the line to paste into the Corefile.
func (r result) lastLine() string {
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	return lines[len(lines)-1]
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// toName is srv as a dotstub TO with server name name.
func toName(srv *dottest.Server, name string) string {
	host, port, _ := net.SplitHostPort(srv.Addr)
	if strings.Contains(host, ":") {
		return fmt.Sprintf("tls://[%s%%%s]:%s", host, name, port)
	}
	return fmt.Sprintf("tls://%s%%%s:%s", host, name, port)
}

// checkPins compares what r printed with want, and the Corefile line with
// line, and checks that the line parses as pins.
func checkPins(t *testing.T, r result, want []pin.Pin, line string) {
	t.Helper()
	var ws []string
	for _, p := range want {
		ws = append(ws, p.String())
	}
	if got := r.pins(); strings.Join(got, " ") != strings.Join(ws, " ") {
		t.Errorf("printed pins %q, want %q\n%s", got, ws, r.stdout)
	}
	if got := r.lastLine(); got != line {
		t.Errorf("last line %q, want %q", got, line)
	}
	fields := strings.Fields(strings.TrimPrefix(line, "# "))
	var ps []string
	for _, f := range fields[1:] {
		if strings.HasSuffix(f, "=") {
			ps = append(ps, f)
		}
	}
	if _, err := pin.ParseSet(ps); err != nil || len(ps) == 0 {
		t.Errorf("pins of %q do not parse: %v", line, err)
	}
}

func TestServer(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	ca := writeFile(t, "ca.pem", srv.CA.PEM)
	r := dotpin(t, "-ca", ca, toName(srv, dottest.DefaultName))
	if r.code != exitOK || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	leaf, root := srv.Leaf.Pin(), srv.CA.Pin()
	checkPins(t, r, []pin.Pin{leaf, root}, fmt.Sprintf("pin_sha256 %s %s %s", dottest.DefaultName, leaf, root))
	if got, want := r.kinds(), []string{"[0] leaf", "[1] CA, self-signed root"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("headings %q, want %q", got, want)
	}
	for _, want := range []string{
		"chain verified against " + ca + " for " + dottest.DefaultName,
		"subject:    CN=" + dottest.DefaultName,
		"issuer:     CN=dottest CA",
		"names:      " + dottest.DefaultName,
		"not after:  " + srv.Leaf.Cert.NotAfter.UTC().Format(time.RFC3339),
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
}

// TestServerSendsNothing: dotpin completes the handshake, then closes the
// connection without writing a byte of application data. The server here
// reads until the client closes, so the count is final, not cut short.
func TestServerSendsNothing(t *testing.T) {
	ca, err := dottest.NewCA(t.Name())
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue([]string{dottest.DefaultName}, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{leaf.TLS}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	type seen struct {
		handshake error
		read      int64
		end       error
	}
	done := make(chan seen, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- seen{handshake: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		if err := c.(*tls.Conn).Handshake(); err != nil {
			done <- seen{handshake: err}
			return
		}
		n, err := io.Copy(io.Discard, c)
		done <- seen{read: n, end: err}
	}()
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	r := dotpin(t, "-ca", writeFile(t, "ca.pem", ca.PEM), fmt.Sprintf("tls://%s%%%s:%s", host, dottest.DefaultName, port))
	if r.code != exitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	s := <-done
	if s.handshake != nil || s.read != 0 || s.end != nil {
		t.Errorf("server: handshake %v, then %d bytes until %v; want a handshake, then 0 bytes and a clean close", s.handshake, s.read, s.end)
	}
}

// TestServerByIP: without a server name, the chain is verified for the IP
// address and the line has no selector, as dotstub reads such a TO.
func TestServerByIP(t *testing.T) {
	srv := dottest.New(t, dottest.Options{Names: []string{"127.0.0.1"}})
	ca := writeFile(t, "ca.pem", srv.CA.PEM)
	want := fmt.Sprintf("pin_sha256 %s %s %s", srv.Addr, srv.Leaf.Pin(), srv.CA.Pin()) // selected by its address
	for _, to := range []string{"tls://" + srv.Addr, srv.Addr} {
		r := dotpin(t, "-ca", ca, to)
		if r.code != exitOK {
			t.Fatalf("%s: exit %d, stderr %q", to, r.code, r.stderr)
		}
		checkPins(t, r, []pin.Pin{srv.Leaf.Pin(), srv.CA.Pin()}, want)
	}
}

func TestServerIPv6(t *testing.T) {
	srv, err := dottest.Start(dottest.Options{Addr: "[::1]:0"})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	t.Cleanup(srv.Close)
	r := dotpin(t, "-ca", writeFile(t, "ca.pem", srv.CA.PEM), toName(srv, dottest.DefaultName))
	if r.code != exitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	checkPins(t, r, []pin.Pin{srv.Leaf.Pin(), srv.CA.Pin()},
		fmt.Sprintf("pin_sha256 %s %s %s", dottest.DefaultName, srv.Leaf.Pin(), srv.CA.Pin()))
}

// TestServerRootFromTrustStore: a server that sends its leaf alone; the root
// comes from the verified chain, and is marked so.
func TestServerRootFromTrustStore(t *testing.T) {
	ca, err := dottest.NewCA("root only in the store")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue([]string{dottest.DefaultName}, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	alone := *leaf
	alone.TLS.Certificate = alone.TLS.Certificate[:1]
	srv := dottest.New(t, dottest.Options{CA: ca, Leaf: &alone})
	r := dotpin(t, "-ca", writeFile(t, "ca.pem", ca.PEM), toName(srv, dottest.DefaultName))
	if r.code != exitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	checkPins(t, r, []pin.Pin{leaf.Pin(), ca.Pin()}, fmt.Sprintf("pin_sha256 %s %s %s", dottest.DefaultName, leaf.Pin(), ca.Pin()))
	want := []string{"[0] leaf", "[1] CA, self-signed root (from the trust store; the server did not send it)"}
	if got := r.kinds(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("headings %q, want %q", got, want)
	}
}

// chain3 is a root, an intermediate it issued, and a leaf the intermediate
// issued for dottest.DefaultName, as public DoT servers have them.
type chain3 struct {
	root, inter, leaf *x509.Certificate
	rootPEM           []byte
	tls               tls.Certificate // leaf and intermediate, as a server sends them
}

func newChain3(t *testing.T) chain3 {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	create := func(tmpl, parent *x509.Certificate, pub, signer *ecdsa.PrivateKey) *x509.Certificate {
		tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &pub.PublicKey, signer)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	rootKey, interKey, leafKey := key(), key(), key()
	caTmpl := func(cn string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	}
	rt := caTmpl("test root")
	root := create(rt, rt, rootKey, rootKey)
	inter := create(caTmpl("test intermediate"), root, interKey, rootKey)
	leaf := create(&x509.Certificate{Subject: pkix.Name{CommonName: dottest.DefaultName}, DNSNames: []string{dottest.DefaultName},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, inter, leafKey, interKey)
	return chain3{
		root: root, inter: inter, leaf: leaf,
		rootPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}),
		tls:     tls.Certificate{Certificate: [][]byte{leaf.Raw, inter.Raw}, PrivateKey: leafKey, Leaf: leaf},
	}
}

// TestServerIntermediate: the backup pin is the CA that issued the leaf, the
// intermediate, not the root.
func TestServerIntermediate(t *testing.T) {
	c := newChain3(t)
	srv := dottest.New(t, dottest.Options{Leaf: &dottest.Leaf{TLS: c.tls, Cert: c.leaf}})
	r := dotpin(t, "-ca", writeFile(t, "root.pem", c.rootPEM), toName(srv, dottest.DefaultName))
	if r.code != exitOK {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	leaf, inter, root := pin.Of(c.leaf), pin.Of(c.inter), pin.Of(c.root)
	checkPins(t, r, []pin.Pin{leaf, inter, root}, fmt.Sprintf("pin_sha256 %s %s %s", dottest.DefaultName, leaf, inter))
	want := []string{"[0] leaf", "[1] CA", "[2] CA, self-signed root (from the trust store; the server did not send it)"}
	if got := r.kinds(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("headings %q, want %q", got, want)
	}
}

// TestServerUnverified: a chain that does not verify is an error, and with
// -insecure is printed, marked UNVERIFIED, its line commented out.
func TestServerUnverified(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	other, err := dottest.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	otherFile := writeFile(t, "other.pem", other.PEM)
	ca := writeFile(t, "ca.pem", srv.CA.PEM)
	leaf, root := srv.Leaf.Pin(), srv.CA.Pin()
	tests := []struct {
		name   string
		args   []string
		stderr string // what the error says
		line   string // the commented-out line with -insecure
	}{
		{
			name:   "unknown CA",
			args:   []string{"-ca", otherFile, toName(srv, dottest.DefaultName)},
			stderr: "does not verify against " + otherFile + " for dns.test: x509: certificate signed by unknown authority",
			line:   fmt.Sprintf("# pin_sha256 dns.test %s %s", leaf, root),
		},
		{
			name:   "wrong name",
			args:   []string{"-ca", ca, toName(srv, "wrong.test")},
			stderr: "does not verify against " + ca + " for wrong.test: x509: certificate is valid for dns.test, not wrong.test",
			line:   fmt.Sprintf("# pin_sha256 wrong.test %s %s", leaf, root),
		},
		{
			name:   "no name, IP not in the certificate",
			args:   []string{"-ca", ca, "tls://" + srv.Addr},
			stderr: "doesn't contain any IP SANs",
			line:   fmt.Sprintf("# pin_sha256 %s %s %s", srv.Addr, leaf, root),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := dotpin(t, tc.args...)
			if r.code != exitFailed || r.stdout != "" || !strings.Contains(r.stderr, tc.stderr) || !strings.Contains(r.stderr, "-insecure") {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %d, nothing, an error holding %q", r.code, r.stdout, r.stderr, exitFailed, tc.stderr)
			}

			r = dotpin(t, append([]string{"-insecure"}, tc.args...)...)
			if r.code != exitUnverified {
				t.Fatalf("-insecure: exit %d, stderr %q; want %d", r.code, r.stderr, exitUnverified)
			}
			if !strings.Contains(r.stderr, "UNVERIFIED") || !strings.Contains(r.stderr, tc.stderr) {
				t.Errorf("-insecure: stderr %q, want UNVERIFIED and %q", r.stderr, tc.stderr)
			}
			if !strings.Contains(r.stdout, "UNVERIFIED chain") {
				t.Errorf("-insecure: output not marked UNVERIFIED:\n%s", r.stdout)
			}
			checkPins(t, r, []pin.Pin{leaf, root}, tc.line)
		})
	}
	srv.Close()
	if srv.BytesRead() != 0 || srv.Queries() != 0 {
		t.Errorf("server received %d bytes, %d queries", srv.BytesRead(), srv.Queries())
	}
}

func TestServerErrors(t *testing.T) {
	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	// A server that accepts and never speaks TLS.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mute.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := mute.Accept(); err == nil {
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		select {
		case c := <-accepted:
			c.Close()
		default:
		}
	})

	ca, err := dottest.NewCA("errors")
	if err != nil {
		t.Fatal(err)
	}
	caPEM := writeFile(t, "ca.pem", ca.PEM)
	notPEM := writeFile(t, "not.pem", []byte("not a certificate\n"))
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "refused", args: []string{"-ca", caPEM, "tls://" + closed}, want: "connection refused"},
		{name: "handshake timeout", args: []string{"-ca", caPEM, "-timeout", "100ms", "tls://" + mute.Addr().String()}, want: "timeout"},
		{name: "plain DNS", args: []string{"dns://192.0.2.1"}, want: `"dns://192.0.2.1" is not a tls:// upstream`},
		{name: "host name", args: []string{"tls://dns.example%dns.example"}, want: `"dns.example" is not an IP address`},
		{name: "host name without scheme", args: []string{"dns.example"}, want: "a server is written tls://IP[%NAME][:PORT], with an IP address"},
		{name: "bad port", args: []string{"tls://192.0.2.1:99999"}, want: `"99999" is not a port`},
		{name: "bad server name", args: []string{"tls://192.0.2.1%dns.example/x"}, want: `"dns.example/x" is not a server name`},
		{name: "missing CA file", args: []string{"-ca", filepath.Join(t.TempDir(), "missing.pem"), "tls://" + closed}, want: "-ca: open "},
		{name: "CA file not PEM", args: []string{"-ca", notPEM, "tls://" + closed}, want: "-ca: " + notPEM + " holds no PEM certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := dotpin(t, tc.args...)
			if r.code != exitFailed || r.stdout != "" || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, nothing, an error holding %q", r.code, r.stdout, r.stderr, exitFailed, tc.want)
			}
		})
	}
}

func TestPEMFiles(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	leafPEM := srv.Leaf.CertPEM[:bytes.Index(srv.Leaf.CertPEM, srv.CA.PEM)]
	leaf, root := srv.Leaf.Pin(), srv.CA.Pin()
	c := newChain3(t)
	interPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.inter.Raw})
	chainPEM := append(append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.leaf.Raw}), interPEM...), c.rootPEM...)
	tests := []struct {
		name  string
		data  []byte
		pins  []pin.Pin
		kinds []string
		line  string
	}{
		{
			name:  "leaf and CA",
			data:  srv.Leaf.CertPEM,
			pins:  []pin.Pin{leaf, root},
			kinds: []string{"[0] leaf", "[1] CA, self-signed root"},
			line:  fmt.Sprintf("pin_sha256 %s %s", leaf, root),
		},
		{
			name:  "key, then leaf and CA",
			data:  append(append([]byte(nil), srv.Leaf.KeyPEM...), srv.Leaf.CertPEM...),
			pins:  []pin.Pin{leaf, root},
			kinds: []string{"[0] leaf", "[1] CA, self-signed root"},
			line:  fmt.Sprintf("pin_sha256 %s %s", leaf, root),
		},
		{
			name:  "leaf, intermediate, root",
			data:  chainPEM,
			pins:  []pin.Pin{pin.Of(c.leaf), pin.Of(c.inter), pin.Of(c.root)},
			kinds: []string{"[0] leaf", "[1] CA", "[2] CA, self-signed root"},
			line:  fmt.Sprintf("pin_sha256 %s %s", pin.Of(c.leaf), pin.Of(c.inter)),
		},
		{
			name:  "leaf alone",
			data:  leafPEM,
			pins:  []pin.Pin{leaf},
			kinds: []string{"[0] leaf"},
			line:  fmt.Sprintf("pin_sha256 %s", leaf),
		},
		{
			name:  "CA alone",
			data:  srv.CA.PEM,
			pins:  []pin.Pin{root},
			kinds: []string{"[0] CA, self-signed root"},
			line:  fmt.Sprintf("pin_sha256 %s", root),
		},
		{
			name:  "CA bundle",
			data:  append(append([]byte(nil), interPEM...), c.rootPEM...),
			pins:  []pin.Pin{pin.Of(c.inter), pin.Of(c.root)},
			kinds: []string{"[0] CA", "[1] CA, self-signed root"},
			line:  fmt.Sprintf("pin_sha256 %s %s", pin.Of(c.inter), pin.Of(c.root)),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := dotpin(t, writeFile(t, "certs.pem", tc.data))
			if r.code != exitOK || r.stderr != "" {
				t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
			}
			checkPins(t, r, tc.pins, tc.line)
			if got := r.kinds(); strings.Join(got, "|") != strings.Join(tc.kinds, "|") {
				t.Errorf("headings %q, want %q", got, tc.kinds)
			}
			if strings.Contains(r.stdout, "PRIVATE KEY") || strings.Contains(r.stdout, string(srv.Leaf.KeyPEM)) {
				t.Error("printed the key")
			}
		})
	}
}

func TestPEMFileErrors(t *testing.T) {
	bad := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})
	key := dottest.New(t, dottest.Options{}).Leaf.KeyPEM
	tests := []struct {
		name string
		data []byte // nil: no such file
		want string
	}{
		{name: "missing", want: "no such file or directory"},
		{name: "empty", data: []byte{}, want: "holds no PEM CERTIFICATE block"},
		{name: "not PEM", data: []byte("hello\n"), want: "holds no PEM CERTIFICATE block"},
		{name: "key only", data: key, want: "holds no PEM CERTIFICATE block"},
		{name: "bad DER", data: bad, want: "certificate 0: x509: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "missing.pem")
			if tc.data != nil {
				file = writeFile(t, "certs.pem", tc.data)
			}
			r := dotpin(t, file)
			if r.code != exitFailed || r.stdout != "" || !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, file) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, nothing, an error naming the file and holding %q", r.code, r.stdout, r.stderr, exitFailed, tc.want)
			}
		})
	}
}

func TestUsage(t *testing.T) {
	file := writeFile(t, "ca.pem", []byte{})
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{name: "help", args: []string{"-h"}, code: exitOK, want: "usage: dotpin"},
		{name: "no argument", args: nil, code: exitUsage, want: "give tls://IP[%NAME][:PORT]... or FILE.pem"},
		{name: "two files", args: []string{file, file}, code: exitUsage, want: "give one FILE.pem, or servers only, not 2 arguments"},
		{name: "check with an argument", args: []string{"check", "Corefile"}, code: exitUsage, want: "takes flags only"},
		{name: "check help", args: []string{"check", "-h"}, code: exitOK, want: "usage: dotpin check"},
		{name: "check, no Corefile", args: []string{"check", "-conf", file + ".missing"}, code: exitUsage, want: "no such file"},
		{name: "unknown flag", args: []string{"-pin", file}, code: exitUsage, want: "flag provided but not defined: -pin"},
		{name: "-ca with a file", args: []string{"-ca", file, file}, code: exitUsage, want: "-ca and -insecure are for a server"},
		{name: "-insecure with a file", args: []string{"-insecure", file}, code: exitUsage, want: "-ca and -insecure are for a server"},
		{name: "zero timeout", args: []string{"-timeout", "0s", "tls://192.0.2.1"}, code: exitUsage, want: "-timeout 0s: give a positive duration"},
		{name: "bad timeout", args: []string{"-timeout", "5", "tls://192.0.2.1"}, code: exitUsage, want: `invalid value "5" for flag -timeout`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := dotpin(t, tc.args...)
			if r.code != tc.code || r.stdout != "" || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, nothing, stderr holding %q", r.code, r.stdout, r.stderr, tc.code, tc.want)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	if r := dotpin(t, "-version"); r.code != exitOK || r.stdout != "dotpin "+version+"\n" {
		t.Errorf("dotpin -version: exit %d, printed %q", r.code, r.stdout)
	}
}
