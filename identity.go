package dotstub

import (
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/coredns/caddy"
	"github.com/coredns/caddy/caddyfile"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/pin"
	"github.com/dotstub/dotstub/plugin/upstream"
)

// identity is what the pin_sha256 and tls_ca lines of a stanza say about the
// TLS identity of its upstreams: for all of them, or, with a SELECTOR, for
// those it selects. Selectors are resolved once the whole block is read, since
// a tls_servername line may follow the lines that select by that name; each
// line keeps a copy of the dispenser there, so that errors found then still
// name it.
type identity struct {
	pins   pin.Set              // pin_sha256 PIN...: for every upstream
	pinsAt *caddyfile.Dispenser // first such line; nil if none
	ca     *x509.CertPool       // tls_ca FILE: for every upstream; nil if none
	caAt   *caddyfile.Dispenser // that line
	tlsCA  *caddyfile.Dispenser // a tls line that gave a CA; nil if none
	pinsBy []*selection         // pin_sha256 SELECTOR PIN..., in order of first appearance
	caBy   []*selection         // tls_ca SELECTOR FILE, likewise

	// reportOnly is the pin_report_only line, nil if none: every pin of the
	// stanza then reports a mismatch on a verified chain instead of refusing
	// the connection.
	reportOnly *caddyfile.Dispenser
}

// selection is what one option gives the upstreams one selector picks, over
// every line that names that selector.
type selection struct {
	sel      selector
	at       caddyfile.Dispenser // the first line naming sel
	pins     pin.Set
	unpinned bool // pin_sha256 SELECTOR none: left unpinned on purpose
	ca       *x509.CertPool
}

// unpinnedWord marks, in pin_sha256 SELECTOR none, upstreams left unpinned on
// purpose in a block that pins others.
const unpinnedWord = "none"

// selector picks upstreams of a stanza by server name (every upstream that has
// it), or by address (the one upstream there).
type selector struct {
	text string // as first written
	name string // lower case, without a final dot; "" for an address
	addr string // host:port as parseTo spells it, port 853 by default; "" for a name
}

// isPin tells a pin from a selector: the base64 of a SHA-256 digest always
// ends in '=', which no server name or IP address holds.
func isPin(s string) bool { return strings.HasSuffix(s, "=") || strings.HasPrefix(s, "sha256/") }

// parseSelector reads the SELECTOR of a pin_sha256 or tls_ca line: an address
// spelled as a TO is (without tls:// or %NAME), or else a server name.
func parseSelector(s string) (selector, error) {
	if addr, name, err := parseTo(s); err == nil && name == "" && !strings.Contains(s, "://") {
		return selector{text: s, addr: addr}, nil
	}
	if _, ok := dns.IsDomainName(s); !ok || strings.ContainsAny(s, "/:[]%") || strings.TrimSuffix(s, ".") == "" {
		return selector{}, fmt.Errorf("%q is neither a server name nor an IP address%s", s, pinHint(s))
	}
	return selector{text: s, name: strings.ToLower(strings.TrimSuffix(s, "."))}, nil
}

// selects reports whether s picks the upstream t, whose server name, if
// configured, is name.
func (s selector) selects(t target, name string) bool {
	if s.addr != "" {
		return s.addr == t.addr
	}
	return s.name == strings.ToLower(name)
}

// selectionFor returns the entry of *list for sel, adding one at c's line if
// there is none.
func selectionFor(list *[]*selection, sel selector, c *caddy.Controller) *selection {
	for _, s := range *list {
		if s.sel.name == sel.name && s.sel.addr == sel.addr {
			return s
		}
	}
	s := &selection{sel: sel, at: c.Dispenser}
	*list = append(*list, s)
	return s
}

// parsePins reads a pin_sha256 line: PIN... for every upstream, or
// SELECTOR PIN... for those it selects. Pins add up over lines, as long as a
// stanza gives either pins for all or pins per upstream.
func (id *identity) parsePins(c *caddy.Controller) error {
	args := c.RemainingArgs()
	if len(args) == 0 {
		return argErr(c, "pin_sha256")
	}
	const either = "give every upstream its own pins, or pins for all"
	if args[0] == unpinnedWord {
		return c.Errf("pin_sha256: %s needs a SELECTOR before it: pin_sha256 SELECTOR %s leaves the upstreams it selects unpinned", unpinnedWord, unpinnedWord)
	}
	if isPin(args[0]) {
		if len(id.pinsBy) > 0 {
			first := id.pinsBy[0]
			return c.Errf("pin_sha256: pins for every upstream, but line %d gives pins for %q only; %s", first.at.Line(), first.sel.text, either)
		}
		pins, err := pin.ParseSet(append(pinStrings(id.pins), args...))
		if err != nil {
			return c.Errf("pin_sha256: %v", err)
		}
		if id.pinsAt == nil {
			at := c.Dispenser
			id.pinsAt = &at
		}
		id.pins = pins
		return nil
	}
	sel, err := parseSelector(args[0])
	if err != nil {
		return c.Errf("pin_sha256: %v", err)
	}
	if len(args) == 1 {
		return c.Errf("pin_sha256: %q selects upstreams but gives no pin", sel.text)
	}
	if id.pinsAt != nil {
		return c.Errf("pin_sha256: pins for %q only, but line %d gives pins for every upstream; %s", sel.text, id.pinsAt.Line(), either)
	}
	s := selectionFor(&id.pinsBy, sel, c)
	if args[1] == unpinnedWord || s.unpinned {
		if len(args) > 2 || len(s.pins) > 0 || args[1] != unpinnedWord {
			return c.Errf("pin_sha256: %q is both pinned and left unpinned (%s); give one or the other", sel.text, unpinnedWord)
		}
		s.unpinned = true
		return nil
	}
	pins, err := pin.ParseSet(append(pinStrings(s.pins), args[1:]...))
	if err != nil {
		return c.Errf("pin_sha256: for %q: %v", sel.text, err)
	}
	s.pins = pins
	return nil
}

// parseCA reads a tls_ca line: FILE for every upstream, or SELECTOR FILE for
// those it selects.
func (id *identity) parseCA(c *caddy.Controller) error {
	args := c.RemainingArgs()
	if len(args) == 0 || len(args) > 2 {
		return argErr(c, "tls_ca")
	}
	var sel selector
	if len(args) == 2 {
		var err error
		if sel, err = parseSelector(args[0]); err != nil {
			return c.Errf("tls_ca: %v", err)
		}
	}
	file := args[len(args)-1]
	if root := dnsserver.GetConfig(c).Root; !filepath.IsAbs(file) && root != "" {
		file = filepath.Join(root, file)
	}
	ca, err := loadCA(file)
	if err != nil {
		return c.Errf("tls_ca: %v", err)
	}
	if len(args) == 1 {
		switch {
		case id.caAt != nil:
			return c.Errf("tls_ca: line %d already gives a CA for every upstream; give one", id.caAt.Line())
		case id.tlsCA != nil:
			return c.Errf("tls_ca: tls on line %d already gives a CA for every upstream; give one", id.tlsCA.Line())
		}
		at := c.Dispenser
		id.ca, id.caAt = ca, &at
		return nil
	}
	s := selectionFor(&id.caBy, sel, c)
	if s.ca != nil {
		return c.Errf("tls_ca: line %d already gives a CA for %q; give one", s.at.Line(), s.sel.text)
	}
	s.ca = ca
	return nil
}

// parseReportOnly reads a pin_report_only line.
func (id *identity) parseReportOnly(c *caddy.Controller) error {
	if c.NextArg() {
		return argErr(c, "pin_report_only")
	}
	if id.reportOnly == nil {
		at := c.Dispenser
		id.reportOnly = &at
	}
	return nil
}

// tlsGaveCA records that the current tls line gives a CA (gave), or not.
func (id *identity) tlsGaveCA(c *caddy.Controller, gave bool) error {
	id.tlsCA = nil
	if !gave {
		return nil
	}
	if id.caAt != nil {
		return c.Errf("tls: tls_ca on line %d already gives a CA for every upstream; give one", id.caAt.Line())
	}
	at := c.Dispenser
	id.tlsCA = &at
	return nil
}

// loadCA reads a bundle of PEM certificates.
func loadCA(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading the CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// resolve returns, for each upstream of o.to, the selection of sels that
// picks it, or nil. Every selector must pick some upstream, and no upstream
// may be picked twice.
func (o *options) resolve(sels []*selection, opt string) ([]*selection, error) {
	by := make([]*selection, len(o.to))
	for _, s := range sels {
		picked := false
		for i, t := range o.to {
			if !s.sel.selects(t, o.configuredName(t)) {
				continue
			}
			if prev := by[i]; prev != nil {
				return nil, s.at.Errf("%s: %q and %q (line %d) both select %s; select each upstream once", opt, s.sel.text, prev.sel.text, prev.at.Line(), t.to)
			}
			by[i], picked = s, true
		}
		if !picked {
			return nil, s.at.Errf("%s: %q selects no upstream of this block (%s)%s", opt, s.sel.text, o.selectable(s.sel), pinHint(s.sel.text))
		}
	}
	return by, nil
}

// selectable lists what selects an upstream of the stanza, to explain a
// selector that selects none.
func (o *options) selectable(sel selector) string {
	var names, addrs []string
	for _, t := range o.to {
		if n := strings.ToLower(o.configuredName(t)); n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
		addrs = append(addrs, t.addr)
	}
	s := "addresses: " + strings.Join(addrs, ", ")
	if len(names) > 0 {
		s = "server names: " + strings.Join(names, ", ") + "; " + s
	}
	// An address written without a port, when an upstream is at that IP on
	// another port.
	if _, _, err := net.SplitHostPort(sel.text); err != nil && sel.addr != "" {
		ip, _, _ := net.SplitHostPort(sel.addr)
		for _, t := range o.to {
			if host, _, _ := net.SplitHostPort(t.addr); host == ip {
				s += "; an address without a port means port 853"
				break
			}
		}
	}
	return s
}

// pinHint explains a selector that is a pin without its final '='.
func pinHint(s string) string {
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimPrefix(s, "sha256/"))
	if err != nil || len(b) != len(pin.Pin{}) {
		return ""
	}
	return "; a pin ends in '='"
}

// parseTo reads one upstream: upstream.ParseTo, which cmd/dotpin shares.
func parseTo(s string) (addr, serverName string, err error) { return upstream.ParseTo(s) }
