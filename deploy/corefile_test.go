package deploy

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy/caddyfile"
	"github.com/miekg/dns"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// A line of a Corefile, split the way CoreDNS's lexer splits it for the
// Corefiles we write (no quotes, no line continuations).
type line struct {
	raw    string   // as written
	indent string   // leading white space
	tokens []string // without the comment
	depth  int      // blocks open before the line
	parent []string // tokens of the line that opened the innermost block, "{" left out
}

// opens says whether the line opens a block.
func (l line) opens() bool { return len(l.tokens) > 0 && l.tokens[len(l.tokens)-1] == "{" }

// args are the tokens after the first, "{" left out.
func (l line) args() []string {
	if len(l.tokens) == 0 {
		return nil
	}
	a := l.tokens[1:]
	if l.opens() {
		a = a[:len(a)-1]
	}
	return a
}

// directive is the first token of a line directly inside a server block.
func (l line) directive() string {
	if l.depth != 1 || len(l.tokens) == 0 {
		return ""
	}
	return l.tokens[0]
}

// inside reports whether the line is an option of the named directive's block.
func (l line) inside(directive string) bool {
	return l.depth == 2 && len(l.parent) > 0 && l.parent[0] == directive
}

// lines splits a Corefile, or a file it imports, into lines.
func lines(text string) []line {
	var out []line
	var stack [][]string
	for _, s := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		body, _, _ := strings.Cut(s, "#")
		l := line{raw: s, indent: s[:len(s)-len(strings.TrimLeft(s, " \t"))], tokens: strings.Fields(body), depth: len(stack)}
		if len(stack) > 0 {
			l.parent = stack[len(stack)-1]
		}
		if len(l.tokens) == 1 && l.tokens[0] == "}" && len(stack) > 0 {
			stack = stack[:len(stack)-1]
			l.depth--
		}
		if l.opens() {
			stack = append(stack, l.tokens[:len(l.tokens)-1])
		}
		out = append(out, l)
	}
	return out
}

// Listen addresses of the plugins that serve HTTP, when they name none.
var defaultListen = map[string]string{"health": ":8080", "ready": ":8181", "prometheus": "localhost:9153"}

// listens returns, for each of health, ready and prometheus in the Corefile,
// the port it listens on.
func listens(text string) map[string]int {
	ports := map[string]int{}
	for _, l := range lines(text) {
		addr, ok := defaultListen[l.directive()]
		if !ok {
			continue
		}
		if a := l.args(); len(a) > 0 {
			addr = a[0]
		}
		_, p, _ := net.SplitHostPort(addr)
		ports[l.directive()], _ = strconv.Atoi(p)
	}
	return ports
}

// serverPorts returns the ports of the Corefile's server blocks.
func serverPorts(text string) []int {
	var ports []int
	for _, l := range lines(text) {
		if l.depth != 0 || !l.opens() {
			continue
		}
		for _, key := range l.tokens[:len(l.tokens)-1] {
			scheme, _, port := splitKey(key)
			ports = append(ports, portOf(scheme, port))
		}
	}
	return ports
}

// splitKey splits a server block key, [SCHEME://]ZONE[:PORT].
func splitKey(key string) (scheme, zone, port string) {
	key = strings.TrimSuffix(key, ",")
	scheme, rest, ok := strings.Cut(key, "://")
	if !ok {
		scheme, rest = "dns", key
	}
	zone, port = rest, ""
	if i := strings.LastIndexByte(rest, ':'); i >= 0 {
		if _, err := strconv.Atoi(rest[i+1:]); err == nil {
			zone, port = rest[:i], rest[i+1:]
		}
	}
	return scheme, zone, port
}

func portOf(scheme, port string) int {
	if n, err := strconv.Atoi(port); err == nil {
		return n
	}
	switch scheme {
	case "tls":
		return 853
	case "https", "grpc":
		return 443
	}
	return 53
}

// placeholderPin matches the pins README.md and the manifests write for the
// reader to replace: CLOUDFLARE_LEAF_PIN_BASE64=, CA_PIN_BASE64= ...
var placeholderPin = regexp.MustCompile(`^[A-Z0-9_]*PIN[A-Z0-9_]*=$`)

// stage is the stand-in for what a Corefile expects around it, so that it can
// start here without any packet leaving loopback:
//   - a directory standing in for the root of the file system, under which
//     every absolute path of the Corefile is rebased and the files it names
//     are written (a Secret's keys where the Deployment mounts them; the test
//     CA for any other .pem or .crt);
//   - for each upstream address, an in-process DoT server on 127.0.0.1, all
//     with a certificate from one test CA that carries every server name the
//     Corefile verifies, and 127.0.0.1 for upstreams verified by address;
//   - the test CA's and leaf's pins in place of placeholder pins;
//   - a fake Kubernetes API for the kubernetes plugin (apiserver_test.go);
//   - free ports on 127.0.0.1 for every server block and for health, ready
//     and prometheus, and `bind 127.0.0.1` in every server block.
//
// The system roots of the CoreDNS process are the test CA (SSL_CERT_FILE),
// since no public CA signs a loopback server. Afterwards guard refuses the
// result if any address in it, imports included, is not loopback.
type stage struct {
	t    *testing.T
	root string
	CA   *dottest.CA
	Leaf *dottest.Leaf

	ports     map[int]string             // port in the Corefile → free port here
	upstreams map[string]*dottest.Server // upstream as written, IP:PORT → its stand-in
	listen    map[string]string          // health, ready, prometheus → address here
	api       *apiServer                 // started for a kubernetes stanza
	k8sZones  []string                   // zones of the first kubernetes stanza
	fromZones []string                   // FROM of every dotstub stanza
	plain     string                     // the plain-DNS stand-in for forward's upstreams; "" until one is needed
	fwdZones  []string                   // FROM of every forward stanza; the server block's zone for .
	blockZone string                     // zone of the server block localize is in
	reload    string                     // when set, the arguments given to every reload
	roots     []byte                     // the system roots of CoreDNS; default the test CA
}

// newStage makes a stage whose certificate carries the names the texts (a
// Corefile and whatever it imports) verify upstreams against.
func newStage(t *testing.T, texts ...string) *stage {
	t.Helper()
	names := []string{"127.0.0.1"}
	for _, text := range texts {
		for _, l := range lines(text) {
			for _, tok := range l.tokens {
				if _, name, _ := splitTO(tok); name != "" {
					names = append(names, name)
				}
			}
			if len(l.tokens) == 2 && l.tokens[0] == "tls_servername" {
				names = append(names, l.tokens[1])
			}
		}
	}
	ca, err := dottest.NewCA(t.Name())
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(names, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	s := &stage{t: t, root: t.TempDir(), CA: ca, Leaf: leaf,
		ports: map[int]string{}, upstreams: map[string]*dottest.Server{}, listen: map[string]string{}}
	return s
}

// path is where the stage keeps the file a Corefile calls p.
func (s *stage) path(p string) string { return filepath.Join(s.root, p) }

// write writes a file of the stage at the Corefile's path p.
func (s *stage) write(p string, data []byte) {
	s.t.Helper()
	if err := os.MkdirAll(filepath.Dir(s.path(p)), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(s.path(p), data, 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// port returns the free port standing in for the Corefile's port p.
func (s *stage) port(p int) string {
	if _, ok := s.ports[p]; !ok {
		s.ports[p] = freePort(s.t)
	}
	return s.ports[p]
}

// upstream starts (once per address) the stand-in for an upstream written as
// a dotstub TO or selector, and returns its address here, host and port.
func (s *stage) upstream(host, port string) string {
	key := net.JoinHostPort(host, port)
	srv, ok := s.upstreams[key]
	if !ok {
		srv = dottest.New(s.t, dottest.Options{CA: s.CA, Leaf: s.Leaf})
		s.upstreams[key] = srv
	}
	return srv.Addr
}

// splitTO splits a dotstub TO, tls://IP[%NAME][:PORT] or IP[:PORT], IPv6 in
// brackets; port 853 when it names none.
func splitTO(to string) (host, name, port string) {
	rest := strings.TrimPrefix(to, "tls://")
	if strings.HasPrefix(rest, "[") {
		inside, after, _ := strings.Cut(rest[1:], "]")
		host, name, _ = strings.Cut(inside, "%")
		port = strings.TrimPrefix(after, ":")
	} else {
		hostname, p, _ := strings.Cut(rest, ":")
		host, name, _ = strings.Cut(hostname, "%")
		port = p
	}
	if port == "" {
		port = "853"
	}
	return host, name, port
}

// to rewrites one dotstub TO to its stand-in, keeping the server name.
func (s *stage) to(to string) string {
	host, name, port := splitTO(to)
	_, local, _ := net.SplitHostPort(s.upstream(host, port))
	if name != "" {
		return "tls://127.0.0.1%" + name + ":" + local
	}
	return "tls://127.0.0.1:" + local
}

// selector rewrites a pin_sha256 or tls_ca SELECTOR that is an address; a
// server name stays.
func (s *stage) selector(sel string) string {
	host, port, err := net.SplitHostPort(sel)
	if err != nil {
		host, port = strings.Trim(sel, "[]"), "853"
	}
	if net.ParseIP(host) == nil {
		return sel
	}
	return s.upstream(host, port)
}

// pin replaces a placeholder pin by the test CA's or leaf's.
func (s *stage) pin(tok string) string {
	if !placeholderPin.MatchString(tok) {
		return tok
	}
	if strings.Contains(tok, "CA_PIN") {
		return s.CA.Pin().String()
	}
	return s.Leaf.Pin().String()
}

// localize rewrites a Corefile, or a file it imports, as the stage describes.
func (s *stage) localize(text string) string {
	var out []string
	for _, l := range lines(text) {
		if len(l.tokens) == 0 {
			out = append(out, l.raw) // blank, or a comment
			continue
		}
		if l.directive() == "bind" {
			continue // replaced by bind 127.0.0.1
		}
		tok := append([]string(nil), l.tokens...)
		for i, t := range tok {
			if strings.HasPrefix(t, "/") && len(t) > 1 {
				tok[i] = s.path(t)
			}
		}
		var after []string // lines to add after this one
		switch {
		case l.depth == 0 && l.opens():
			_, s.blockZone, _ = splitKey(tok[0])
			for i := range tok[:len(tok)-1] {
				scheme, zone, port := splitKey(tok[i])
				tok[i] = zone + ":" + s.port(portOf(scheme, port))
				if scheme != "dns" {
					tok[i] = scheme + "://" + tok[i]
				}
			}
			after = append(after, l.indent+"    bind 127.0.0.1")
		case defaultListen[l.directive()] != "":
			addr := defaultListen[l.directive()]
			if a := l.args(); len(a) > 0 {
				addr = a[0]
				tok = append(tok[:1], tok[2:]...)
			}
			_, p, _ := net.SplitHostPort(addr)
			n, _ := strconv.Atoi(p)
			local := "127.0.0.1:" + s.port(n)
			tok = append([]string{tok[0], local}, tok[1:]...)
			if _, ok := s.listen[l.directive()]; !ok {
				s.listen[l.directive()] = local
			}
		case l.directive() == "dotstub":
			s.fromZones = append(s.fromZones, tok[1])
			for i := 2; i < len(tok) && tok[i] != "{"; i++ {
				tok[i] = s.to(tok[i])
			}
		case l.directive() == "forward":
			zone := tok[1]
			if zone == "." { // forward all of the block's zone
				zone = s.blockZone
			}
			s.fwdZones = append(s.fwdZones, zone)
			for i := 2; i < len(tok) && tok[i] != "{"; i++ {
				tok[i] = s.plainUpstream()
			}
		case l.directive() == "kubernetes":
			if s.api == nil {
				s.api = startAPIServer(s.t)
				s.k8sZones = l.args()
			}
			endpoint := l.indent + "    endpoint " + s.api.URL
			if l.opens() {
				after = append(after, endpoint)
			} else {
				tok = append(tok, "{")
				after = append(after, endpoint, l.indent+"}")
			}
		case l.directive() == "reload" && s.reload != "":
			tok = append(tok[:1], strings.Fields(s.reload)...)
		case l.inside("dotstub") || l.depth == 0 && !l.opens() && tok[0] != "}": // or a file imported into one
			if (tok[0] == "pin_sha256" || tok[0] == "tls_ca") && len(tok) > 2 && !placeholderPin.MatchString(tok[1]) {
				tok[1] = s.selector(tok[1])
			}
			if tok[0] == "source_address" && len(tok) == 2 {
				tok[1] = "127.0.0.1"
			}
			for i := 1; i < len(tok); i++ {
				tok[i] = s.pin(tok[i])
			}
		}
		out = append(out, l.indent+strings.Join(tok, " "))
		out = append(out, after...)
	}
	return strings.Join(out, "\n") + "\n"
}

// localizeSnippet localizes a file imported inside a server block: its lines
// are directives of that block, as a ConfigMap's .conf files hold them.
func (s *stage) localizeSnippet(text string) string {
	ls := strings.Split(strings.TrimSuffix(s.localize(". {\n"+text+"}\n"), "\n"), "\n")
	// Drop the block around it: its first line, the bind added after it, its last.
	return strings.Join(ls[2:len(ls)-1], "\n") + "\n"
}

// materialize writes the files that the localized Corefile names under the
// stage's root and that no one wrote yet: .pem and .crt files get the test CA.
func (s *stage) materialize(corefile string) {
	s.t.Helper()
	for _, l := range lines(corefile) {
		for _, tok := range l.tokens {
			if !strings.HasPrefix(tok, s.root+string(filepath.Separator)) || strings.ContainsAny(tok, "*?[") {
				continue // not a path, or a glob: its files are written or there are none
			}
			if _, err := os.Stat(tok); err == nil {
				continue
			}
			switch filepath.Ext(tok) {
			case ".pem", ".crt":
				s.write(strings.TrimPrefix(tok, s.root), s.CA.PEM)
			default:
				s.t.Fatalf("the Corefile names %s, and the test does not know what to put there",
					strings.TrimPrefix(tok, s.root))
			}
		}
	}
}

// guard parses the Corefile at path with CoreDNS's parser, imports expanded,
// and fails the test if any token names an IP address off loopback: nothing
// may be started that could send a packet out of this machine.
func (s *stage) guard(path string) {
	s.t.Helper()
	f, err := os.Open(path)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	blocks, err := caddyfile.Parse(path, f, nil)
	if err != nil {
		s.t.Fatalf("parse: %v", err)
	}
	for _, b := range blocks {
		toks := append([]string(nil), b.Keys...)
		for _, ts := range b.Tokens {
			for _, t := range ts {
				toks = append(toks, t.Text)
			}
		}
		for _, t := range toks {
			for _, ip := range ipsIn(t) {
				if !ip.IsLoopback() {
					s.t.Fatalf("after localizing, the Corefile still names %s (in %q): the test refuses to start it", ip, t)
				}
			}
		}
	}
}

var (
	ipv4Like = regexp.MustCompile(`\d{1,3}(\.\d{1,3}){3}`)
	ipv6Like = regexp.MustCompile(`[0-9A-Fa-f]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f.]*`)
)

// ipsIn returns every IP address written in a token, wherever it sits in it:
// tls://IP%NAME:PORT, [IPv6]:PORT, http://IP:PORT/, CIDRs...
func ipsIn(tok string) []net.IP {
	var ips []net.IP
	for _, m := range append(ipv4Like.FindAllString(tok, -1), ipv6Like.FindAllString(tok, -1)...) {
		if ip := net.ParseIP(m); ip != nil {
			ips = append(ips, ip)
		}
	}
	return ips
}

// env is the environment of a CoreDNS process on the stage: no proxy, and the
// test CA as its only system root.
func (s *stage) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR",
			"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT":
			continue
		}
		env = append(env, kv)
	}
	roots := s.roots
	if roots == nil {
		roots = s.CA.PEM
	}
	file := filepath.Join(s.t.TempDir(), "roots.pem")
	if err := os.WriteFile(file, roots, 0o644); err != nil {
		s.t.Fatal(err)
	}
	// A directory that does not exist: no roots but the file's.
	return append(env, "SSL_CERT_FILE="+file, "SSL_CERT_DIR="+file+".d")
}

// forwardIP is what the plain-DNS stand-in answers to every A query.
const forwardIP = "192.0.2.9"

// plainUpstream starts (once) the stand-in for the upstreams of forward
// stanzas, an internal resolver in clear on loopback, and returns its address.
func (s *stage) plainUpstream() string {
	if s.plain != "" {
		return s.plain
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if q := r.Question[0]; q.Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(forwardIP)})
		}
		w.WriteMsg(m)
	})
	// UDP and TCP on one port (forward's force_tcp asks over TCP): a port
	// free for UDP may be taken for TCP, so try a few.
	for range 10 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			s.t.Fatal(err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue
		}
		for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
			started := make(chan struct{})
			srv.NotifyStartedFunc = func() { close(started) }
			go srv.ActivateAndServe()
			<-started
			s.t.Cleanup(func() { srv.Shutdown() })
		}
		s.plain = pc.LocalAddr().String()
		return s.plain
	}
	s.t.Fatal("no port free for both UDP and TCP")
	return ""
}
