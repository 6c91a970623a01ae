package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/caddy/caddyfile"
	"github.com/coredns/coredns/core/dnsserver"

	"github.com/dotstub/dotstub"
	"github.com/dotstub/dotstub/plugin/pin"
	"github.com/dotstub/dotstub/plugin/upstream"
)

const checkUsage = `usage: dotpin check [-conf Corefile] [-within DURATION] [-timeout DURATION]

dotpin check reads a Corefile as CoreDNS does (following import), and for
every upstream of its dotstub stanzas that pin_sha256 pins, connects,
verifies the chain as dotstub does (CA, name), and checks it against the
upstream's pins. It fails, naming the upstream, when the chain no longer
verifies, when it matches none of the pins, or when every certificate of it
that a pin matches expires within -within: after that, the pins match
nothing unless the server's next certificate keeps a pinned key. It prints a
line per upstream and sends no DNS query. Relative paths are taken from the
current directory, or from the block's root, as CoreDNS takes them.

Exit status: 0 every pinned upstream passed, 1 one failed, 2 usage or a
Corefile dotstub refuses.

Flags:
`

// check runs dotpin check.
func check(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("dotpin check", flag.ContinueOnError)
	flags.SetOutput(stderr)
	conf := flags.String("conf", "Corefile", "the Corefile to read")
	within := flags.Duration("within", 30*24*time.Hour, "fail when every pinned certificate of an upstream expires within this `DURATION`")
	timeout := flags.Duration("timeout", defaultTimeout, "bound on each TCP connect and TLS handshake")
	flags.Usage = func() {
		io.WriteString(stderr, checkUsage)
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if flags.NArg() != 0 || *timeout <= 0 || *within < 0 {
		fmt.Fprintln(stderr, "dotpin check: takes flags only, with a positive -timeout and -within of 0 or more; run dotpin check -h for help")
		return exitUsage
	}
	ups, err := corefileUpstreams(*conf)
	if err != nil {
		fmt.Fprintf(stderr, "dotpin check: %v\n", err)
		return exitUsage
	}
	code, pinned := exitOK, 0
	now := time.Now()
	for _, u := range ups {
		cfg := u.Config()
		if len(cfg.Pins) == 0 {
			fmt.Fprintf(stdout, "skip  %s: not pinned\n", cfg.Name)
			continue
		}
		pinned++
		if msg, ok := checkUpstream(context.Background(), cfg, now, *within, *timeout); ok {
			fmt.Fprintf(stdout, "ok    %s: %s\n", cfg.Name, msg)
		} else {
			fmt.Fprintf(stdout, "FAIL  %s: %s\n", cfg.Name, msg)
			code = exitFailed
		}
	}
	if pinned == 0 {
		fmt.Fprintf(stderr, "dotpin check: %s pins no upstream\n", *conf)
	}
	return code
}

// corefileUpstreams returns the upstreams of every dotstub stanza of the
// Corefile at path, as the plugin reads them.
func corefileUpstreams(path string) ([]*upstream.Upstream, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	blocks, err := caddyfile.Parse(path, f, nil)
	if err != nil {
		return nil, err
	}
	var out []*upstream.Upstream
	for _, b := range blocks {
		toks := b.Tokens["dotstub"]
		if len(toks) == 0 {
			continue
		}
		c := caddy.NewTestController("dns", "")
		if root := b.Tokens["root"]; len(root) > 1 {
			dnsserver.GetConfig(c).Root = root[1].Text
		}
		c.Dispenser = caddyfile.NewDispenserTokens(path, toks)
		ups, err := dotstub.Upstreams(c)
		if err != nil {
			return nil, err
		}
		out = append(out, ups...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s has no dotstub stanza", path)
	}
	return out, nil
}

// checkUpstream handshakes with the upstream of cfg as dotstub does, then
// holds the chain to cfg.Pins, and says how it went.
func checkUpstream(ctx context.Context, cfg upstream.Config, now time.Time, within, timeout time.Duration) (string, bool) {
	tc := cfg.Pool.TLS.Clone()
	tc.VerifyConnection = nil // the pins are checked below, with more to say than a failed handshake
	tc.ClientSessionCache = nil
	d := net.Dialer{Timeout: timeout}
	raw, err := d.DialContext(ctx, "tcp", cfg.Pool.Addr)
	if err != nil {
		return err.Error(), false
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(timeout))
	conn := tls.Client(raw, tc)
	if err := conn.HandshakeContext(ctx); err != nil {
		var verr *tls.CertificateVerificationError
		if errors.As(err, &verr) {
			return fmt.Sprintf("the chain does not verify: %v", verr.Err), false
		}
		return fmt.Sprintf("TLS handshake: %v", err), false
	}
	defer conn.Close()
	st := conn.ConnectionState()
	if err := cfg.Pins.Verify(st); err != nil {
		return fmt.Sprintf("the chain presented now matches none of its %d pins: %v", len(cfg.Pins), err), false
	}
	// Every certificate of the verified chains that a pin matches.
	var matched []*x509.Certificate
	for _, chain := range st.VerifiedChains {
		for _, c := range chain {
			if contains(matched, c) {
				continue
			}
			for _, p := range cfg.Pins {
				if p == pin.Of(c) {
					matched = append(matched, c)
				}
			}
		}
	}
	var parts []string
	last := time.Time{}
	for _, c := range matched {
		what := "leaf"
		if c.IsCA {
			what = "CA " + c.Subject.CommonName
		}
		parts = append(parts, fmt.Sprintf("%s (pin %s) until %s", what, pin.Of(c), c.NotAfter.UTC().Format(time.DateOnly)))
		if c.NotAfter.After(last) {
			last = c.NotAfter
		}
	}
	msg := "pins match " + strings.Join(parts, ", ")
	if last.Sub(now) < within {
		return fmt.Sprintf("%s: every pinned certificate expires within %s; pin the key of the next one before %s", msg, within, last.UTC().Format(time.DateOnly)), false
	}
	return msg, true
}
