// Command dotpin prints the SPKI pins of certificates, from a PEM file or from
// the chain a DNS-over-TLS server presents, and ends with the pin_sha256 line
// that pins them in a dotstub block: the leaf's pin, then the issuing CA's as
// a backup.
//
// A pin is what plugin/pin computes (base64 of the SHA-256 of the DER
// SubjectPublicKeyInfo), so the line means to dotstub what it says here. A
// server is named as dotstub's TO is, and its chain verified as dotstub
// verifies it: against the system roots or a CA file, for the server name or
// else the IP address. dotpin only completes a handshake; it never sends a
// DNS query.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"time"

	"github.com/dotstub/dotstub/plugin/pin"
	"github.com/dotstub/dotstub/plugin/upstream"
)

// Exit statuses.
const (
	exitOK         = 0
	exitFailed     = 1 // nothing printed: unreadable input, no connection, a chain that does not verify
	exitUsage      = 2
	exitUnverified = 3 // -insecure printed a chain that did not verify
)

const defaultTimeout = 5 * time.Second

// version is this build's version, stamped by the Makefile from git tags.
var version = "dev"

const usage = `usage: dotpin [-ca FILE] [-insecure] [-timeout DURATION] tls://IP[%NAME][:PORT]...
       dotpin FILE.pem
       dotpin check [-conf Corefile] [-within DURATION] [-timeout DURATION]
       dotpin -version

dotpin prints the pin-sha256 (base64 of the SHA-256 of the DER
SubjectPublicKeyInfo, as dotstub's pin_sha256 takes it) of every certificate
in the chain a DNS-over-TLS server presents, or in a PEM file, marking the
leaf and the CAs, then a pin_sha256 line for the Corefile: the leaf's pin and,
as a backup, the pin of the CA that issued it. The line selects the server by
NAME, or by its address when no NAME is given, so that the lines of several
servers, pasted into one block, each pin their own.

dotpin check reads a Corefile (following import) and checks every pinned
upstream of its dotstub stanzas against the chain it presents now: run it from
cron or CI. See dotpin check -h.

A server is written as a dotstub upstream: port 853 by default, IPv6 in
brackets (tls://[2001:db8::1%dns.example.net]:853). dotpin connects, verifies
the chain against the system roots (or -ca FILE) for NAME, or for the IP
address when no NAME is given, prints it, with the root from the trust store
if the server did not send it, and closes the connection. It sends no DNS
query.

Pins learned over the network are only as trustworthy as the network they
came over: check them out of band (from the operator, or from another network)
before you rely on them. Pins printed with -insecure come from a chain that
did not verify: they are marked UNVERIFIED, the pin_sha256 line is commented
out, and dotpin exits with status 3.

Exit status: 0 printed, 1 failed, 2 usage, 3 printed UNVERIFIED.

Flags:
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "check" {
		return check(args[1:], stdout, stderr)
	}
	flags := flag.NewFlagSet("dotpin", flag.ContinueOnError)
	flags.SetOutput(stderr)
	caFile := flags.String("ca", "", "verify the server against the CA certificates (PEM) in `FILE` instead of the system roots")
	insecure := flags.Bool("insecure", false, "print the chain even if it fails verification, marked UNVERIFIED (exit status 3)")
	timeout := flags.Duration("timeout", defaultTimeout, "bound on the TCP connect, and on the TLS handshake")
	showVersion := flags.Bool("version", false, "print the version and exit")
	flags.Usage = func() {
		io.WriteString(stderr, usage)
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if *showVersion {
		fmt.Fprintln(stdout, "dotpin", version)
		return exitOK
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "dotpin: "+format+"\n", a...)
		fmt.Fprintln(stderr, "run dotpin -h for help")
		return exitUsage
	}
	if flags.NArg() == 0 {
		return usageErr("give tls://IP[%%NAME][:PORT]... or FILE.pem")
	}
	if *timeout <= 0 {
		return usageErr("-timeout %s: give a positive duration", *timeout)
	}
	arg := flags.Arg(0)
	if !isServer(arg) {
		switch {
		case flags.NArg() > 1:
			return usageErr("give one FILE.pem, or servers only, not %d arguments", flags.NArg())
		case *caFile != "" || *insecure:
			return usageErr("-ca and -insecure are for a server, not a file")
		}
		return fromFile(arg, stdout, stderr)
	}
	code := exitOK
	for i, to := range flags.Args() {
		if i > 0 {
			io.WriteString(stdout, "\n")
		}
		// The worst status wins: failed over unverified over printed.
		switch c := fromServer(context.Background(), to, *caFile, *insecure, *timeout, stdout, stderr); {
		case c == exitFailed, c == exitUnverified && code == exitOK:
			code = c
		}
	}
	return code
}

// isServer tells a TO from a file name: a scheme, or a bare IP[:PORT].
func isServer(arg string) bool {
	if strings.Contains(arg, "://") {
		return true
	}
	_, _, err := upstream.ParseTo(arg)
	return err == nil
}

// fromFile prints the pins of every CERTIFICATE block of file.
func fromFile(file string, stdout, stderr io.Writer) int {
	data, err := os.ReadFile(file)
	if err != nil {
		fmt.Fprintf(stderr, "dotpin: %v\n", err)
		if errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintln(stderr, "dotpin: a server is written tls://IP[%NAME][:PORT], with an IP address: a host name would need a lookup in clear")
		}
		return exitFailed
	}
	var certs []*x509.Certificate
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		if block.Type != "CERTIFICATE" {
			continue // a key, say: not ours to print
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			fmt.Fprintf(stderr, "dotpin: %s: certificate %d: %v\n", file, len(certs), err)
			return exitFailed
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		fmt.Fprintf(stderr, "dotpin: %s holds no PEM CERTIFICATE block\n", file)
		return exitFailed
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: %s in the order of the file, not verified\n", file, plural(len(certs), "certificate"))
	printCerts(&b, certs, len(certs))
	if !certs[0].IsCA {
		corefileLine(&b, "", certs[0], issuer(certs[0], certs[1:]), false)
	} else {
		// A CA bundle, say: a CA's pin accepts any certificate it issues.
		b.WriteString("\n# For the Corefile: the file does not start with a leaf, so every pin of it. A CA's pin\n")
		b.WriteString("# accepts any certificate the CA issues: add the server's own pin first (dotpin tls://IP%NAME).\n")
		pins := make([]string, len(certs))
		for i, c := range certs {
			pins[i] = pin.Of(c).String()
		}
		fmt.Fprintf(&b, "pin_sha256 %s\n", strings.Join(pins, " "))
	}
	io.WriteString(stdout, b.String())
	return exitOK
}

// fromServer handshakes with the server to and prints its chain.
func fromServer(ctx context.Context, to, caFile string, insecure bool, timeout time.Duration, stdout, stderr io.Writer) int {
	addr, name, err := upstream.ParseTo(to)
	if err != nil {
		fmt.Fprintf(stderr, "dotpin: %v\n", err)
		return exitFailed
	}
	sel := selectorOf(addr, name)
	cfg := &tls.Config{ServerName: name, MinVersion: tls.VersionTLS12}
	if name == "" {
		// No name: verify the IP address, as dotstub does.
		cfg.ServerName, _, _ = net.SplitHostPort(addr)
	}
	against := "the system roots"
	if caFile != "" {
		data, err := os.ReadFile(caFile)
		if err != nil {
			fmt.Fprintf(stderr, "dotpin: -ca: %v\n", err)
			return exitFailed
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(data) {
			fmt.Fprintf(stderr, "dotpin: -ca: %s holds no PEM certificate\n", caFile)
			return exitFailed
		}
		against = caFile
	}

	d := net.Dialer{Timeout: timeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		fmt.Fprintf(stderr, "dotpin: %s: %v\n", to, err)
		return exitFailed
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(timeout))
	conn := tls.Client(raw, cfg)
	err = conn.HandshakeContext(ctx)
	var verr *tls.CertificateVerificationError
	switch {
	case err == nil:
		defer conn.Close() // a close_notify, and no application data
	case errors.As(err, &verr) && insecure:
		fmt.Fprintf(stderr, "dotpin: %s: WARNING: UNVERIFIED: the chain does not verify against %s for %s: %v\n", to, against, cfg.ServerName, verr.Err)
		fmt.Fprintf(stderr, "dotpin: printing it anyway (-insecure); check these pins out of band before you use them\n")
		var b strings.Builder
		fmt.Fprintf(&b, "# %s at %s: UNVERIFIED chain (%v)\n", to, addr, verr.Err)
		printCerts(&b, verr.UnverifiedCertificates, len(verr.UnverifiedCertificates))
		leaf := verr.UnverifiedCertificates[0]
		corefileLine(&b, sel, leaf, issuer(leaf, verr.UnverifiedCertificates[1:]), true)
		io.WriteString(stdout, b.String())
		return exitUnverified
	case errors.As(err, &verr):
		fmt.Fprintf(stderr, "dotpin: %s: the chain does not verify against %s for %s: %v\n", to, against, cfg.ServerName, verr.Err)
		fmt.Fprintf(stderr, "dotpin: %s, or look at the chain with -insecure\n", hint(verr.Err))
		return exitFailed
	default:
		fmt.Fprintf(stderr, "dotpin: %s: TLS handshake: %v\n", to, err)
		return exitFailed
	}

	st := conn.ConnectionState()
	sent, chain := st.PeerCertificates, st.VerifiedChains[0]
	certs := append([]*x509.Certificate(nil), sent...)
	for _, c := range chain {
		if !contains(certs, c) {
			certs = append(certs, c) // the root, from the trust store
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# %s at %s, %s: chain verified against %s for %s\n", to, addr, tls.VersionName(st.Version), against, cfg.ServerName)
	printCerts(&b, certs, len(sent))
	var ca *x509.Certificate
	if len(chain) > 1 {
		ca = chain[1]
	}
	corefileLine(&b, sel, chain[0], ca, false)
	io.WriteString(stdout, b.String())
	return exitOK
}

// selectorOf returns how a pin_sha256 line selects the upstream at addr with
// server name name: by the name, or by the address, its port left out when it
// is 853, as dotstub's selectors read.
func selectorOf(addr, name string) string {
	if name != "" {
		return name
	}
	host, port, _ := net.SplitHostPort(addr)
	if port == upstream.DefaultPort {
		return host
	}
	return addr
}

// hint says what may make a chain that failed with err verify.
func hint(err error) string {
	var name x509.HostnameError
	var authority x509.UnknownAuthorityError
	switch {
	case errors.As(err, &name):
		return "give the name the certificate is for as tls://IP%NAME"
	case errors.As(err, &authority):
		return "give the CA that issued it with -ca FILE"
	}
	return "check the certificate's dates and usage"
}

// printCerts prints each certificate of certs, of which the first sent came
// from the server or the file, and the others from the trust store.
func printCerts(b *strings.Builder, certs []*x509.Certificate, sent int) {
	for i, c := range certs {
		kind := "certificate"
		switch {
		case c.IsCA && selfSigned(c):
			kind = "CA, self-signed root"
		case c.IsCA:
			kind = "CA"
		case i == 0 && selfSigned(c):
			kind = "leaf, self-signed"
		case i == 0:
			kind = "leaf"
		}
		if i >= sent {
			kind += " (from the trust store; the server did not send it)"
		}
		fmt.Fprintf(b, "\n[%d] %s\n", i, kind)
		fmt.Fprintf(b, "    subject:    %s\n", c.Subject)
		fmt.Fprintf(b, "    issuer:     %s\n", c.Issuer)
		if names := sans(c); names != "" {
			fmt.Fprintf(b, "    names:      %s\n", names)
		}
		fmt.Fprintf(b, "    not after:  %s\n", c.NotAfter.UTC().Format(time.RFC3339))
		fmt.Fprintf(b, "    pin-sha256: %s\n", pin.Of(c))
	}
}

// corefileLine prints the pin_sha256 line for leaf and its issuing CA, if
// known, with selector sel if given; commented out when unverified.
func corefileLine(b *strings.Builder, sel string, leaf, ca *x509.Certificate, unverified bool) {
	line := "pin_sha256"
	if sel != "" {
		line += " " + sel
	}
	line += " " + pin.Of(leaf).String()
	b.WriteString("\n")
	switch {
	case ca != nil:
		line += " " + pin.Of(ca).String()
		b.WriteString("# For the Corefile: the leaf's pin, then the issuing CA's as a backup.\n")
	case selfSigned(leaf):
		b.WriteString("# For the Corefile: the leaf's pin. It is self-signed: no CA pin to add as a backup.\n")
	default:
		b.WriteString("# For the Corefile: the leaf's pin. Its issuer is not here: add the issuing CA's pin as a backup.\n")
	}
	if unverified {
		b.WriteString("# UNVERIFIED: check these pins out of band, then remove the '# ' below.\n# ")
	}
	b.WriteString(line + "\n")
}

// issuer returns the certificate among candidates that signed c, or nil.
func issuer(c *x509.Certificate, candidates []*x509.Certificate) *x509.Certificate {
	for _, p := range candidates {
		if bytes.Equal(c.RawIssuer, p.RawSubject) && c.CheckSignatureFrom(p) == nil {
			return p
		}
	}
	return nil
}

// selfSigned reports whether c is signed by its own key.
func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

func contains(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

// sans lists the DNS names and IP addresses c is valid for.
func sans(c *x509.Certificate) string {
	names := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	return strings.Join(names, ", ")
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
