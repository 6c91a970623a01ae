package dotstub

import (
	"crypto/tls"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"

	"github.com/dotstub/dotstub/plugin/dottest"
)

// Every TLS configuration the project builds verifies its peer and speaks at
// least TLS 1.2. Two tests hold the code to that: TestTLSConfigSource reads
// the source, TestTLSConfigsBuilt looks at what parse builds for every way a
// Corefile can shape it, and TestServerRefusesOldTLS at the test upstream.

// tlsFault says what is wrong with cfg as the TLS configuration of a
// connection to an upstream, or "".
func tlsFault(cfg *tls.Config) string {
	switch {
	case cfg == nil:
		return "no TLS configuration"
	case cfg.MinVersion < tls.VersionTLS12:
		return fmt.Sprintf("MinVersion %#x, below TLS 1.2", cfg.MinVersion)
	case cfg.MaxVersion != 0 && cfg.MaxVersion < tls.VersionTLS12:
		return fmt.Sprintf("MaxVersion %#x, below TLS 1.2", cfg.MaxVersion)
	case cfg.InsecureSkipVerify:
		return "InsecureSkipVerify set"
	case cfg.ServerName == "":
		return "no ServerName to verify"
	case cfg.ClientSessionCache == nil:
		return "no ClientSessionCache"
	}
	return ""
}

// TestTLSConfigsBuilt parses Corefiles that build TLS configurations every
// way the syntax allows (the tls option with 0 to 3 arguments,
// tls_servername, %NAME, pin_sha256 and tls_ca for all upstreams or selected
// ones, and every row of parseTests that parses) and checks the final
// configuration of each upstream.
func TestTLSConfigsBuilt(t *testing.T) {
	ca, err := dottest.NewCA("ca.example")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue([]string{"client.example"}, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile, certFile, keyFile := file("ca.pem", ca.PEM), file("cert.pem", leaf.CertPEM), file("key.pem", leaf.KeyPEM)
	pinA := ca.Pin().String()
	pinB := leaf.Pin().String()
	const to = "dotstub . 192.0.2.1 tls://192.0.2.2%dns.example tls://[2001:db8::1%dns.example]:8853 2001:db8::2"
	stanza := func(lines ...string) string { return to + " {\n" + strings.Join(lines, "\n") + "\n}" }

	corefiles := map[string]string{
		"system roots":                   "dotstub . 192.0.2.1",
		"IPv6 and %NAME":                 to,
		"tls":                            stanza("tls"),
		"tls CA":                         stanza("tls " + caFile),
		"tls CERT KEY":                   stanza("tls " + certFile + " " + keyFile),
		"tls CERT KEY CA":                stanza("tls " + certFile + " " + keyFile + " " + caFile),
		"tls_servername":                 "dotstub . 192.0.2.1 2001:db8::1 {\ntls_servername dns.example\n}",
		"%NAME with a port":              "dotstub . tls://192.0.2.2%dns.example:8853 tls://[2001:db8::1%dns.example]:853",
		"pin_sha256":                     stanza("pin_sha256 " + pinA + " sha256/" + pinB),
		"pin_sha256 by name":             stanza("pin_sha256 dns.example "+pinA, "pin_sha256 192.0.2.1 none", "pin_sha256 2001:db8::2 none"),
		"pin_sha256 by address":          stanza("pin_sha256 192.0.2.1 "+pinA, "pin_sha256 [2001:db8::2]:853 "+pinB, "pin_sha256 dns.example none"),
		"pin_sha256 by name and address": stanza("pin_sha256 dns.example "+pinA, "pin_sha256 192.0.2.1 "+pinB, "pin_sha256 2001:db8::2 none"),
		"tls_ca":                         stanza("tls_ca " + caFile),
		"tls_ca by name":                 stanza("tls_ca dns.example " + caFile),
		"tls_ca by address":              stanza("tls_ca 192.0.2.1 " + caFile),
		"tls and tls_ca and pins":        stanza("tls "+certFile+" "+keyFile, "tls_ca dns.example "+caFile, "pin_sha256 192.0.2.1 "+pinA, "pin_sha256 dns.example none", "pin_sha256 2001:db8::2 none"),
		"tls CA, pins and a name":        "dotstub . 192.0.2.1 192.0.2.2 {\ntls " + caFile + "\ntls_servername dns.example\npin_sha256 " + pinA + "\n}",
		"every option with two stanzas":  stanza("tls "+caFile) + "\ndotstub example.org tls://192.0.2.9%other.example {\npin_sha256 other.example " + pinB + "\n}",
	}
	for _, tc := range parseTests(t) {
		if tc.wantErr == "" {
			corefiles["parseTests: "+tc.name] = tc.input
		}
	}

	for name, input := range corefiles {
		t.Run(name, func(t *testing.T) {
			ds, err := parse(caddy.NewTestController("dns", input))
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range ds {
				if len(d.upstreams) == 0 {
					t.Error("no upstream")
				}
				for _, u := range d.upstreams {
					if fault := tlsFault(u.Config().Pool.TLS); fault != "" {
						t.Errorf("%s: %s", u.Name(), fault)
					}
				}
			}
		})
	}
}

// TestServerRefusesOldTLS: the test upstream (which cmd/dotupstream serves
// too) refuses TLS 1.1 and accepts TLS 1.2 from the same client.
func TestServerRefusesOldTLS(t *testing.T) {
	srv := dottest.New(t, dottest.Options{})
	for _, tc := range []struct {
		max    uint16
		wantOK bool
	}{{tls.VersionTLS11, false}, {tls.VersionTLS12, true}, {tls.VersionTLS13, true}} {
		cfg := &tls.Config{RootCAs: srv.CA.Pool, ServerName: dottest.DefaultName, MinVersion: tls.VersionTLS10, MaxVersion: tc.max}
		c, err := tls.Dial("tcp", srv.Addr, cfg)
		if err == nil {
			c.Close()
		}
		if (err == nil) != tc.wantOK || err != nil && !strings.Contains(err.Error(), "protocol version") {
			t.Errorf("client up to TLS %#x: handshake error %v, want success %t", tc.max, err, tc.wantOK)
		}
	}
}

// TestTLSConfigSource scans every non-test Go file of the module: each
// tls.Config literal (or new(tls.Config)) sets MinVersion to TLS 1.2 or 1.3,
// or sits in a function that then raises MinVersion to at least TLS 1.2 (the
// client constructor); InsecureSkipVerify is never set but to false; and no
// code names a version below TLS 1.2.
func TestTLSConfigSource(t *testing.T) {
	fset := token.NewFileSet()
	var files []*ast.File
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			base := d.Name()
			if path != "." && (strings.HasPrefix(base, ".") || strings.HasPrefix(base, "_") || base == "testdata" || base == "vendor") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(path, "go.mod")); path != "." && err == nil {
				return filepath.SkipDir // another module
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		files = append(files, f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var literals int
	constructors := map[string]bool{}
	for _, f := range files {
		r := scanTLS(fset, f)
		for _, fault := range r.faults {
			t.Error(fault)
		}
		literals += r.literals
		for _, c := range r.constructors {
			constructors[c] = true
		}
	}
	// The scan must see what is there: the client constructor and the test
	// upstream's server configuration at least.
	if literals < 2 || len(constructors) == 0 {
		t.Errorf("scanned %d files: %d tls.Config literals, constructors %v; the scan misses the code", len(files), literals, constructors)
	}
	t.Logf("%d files, %d tls.Config literals, constructors raising MinVersion: %v", len(files), literals, constructors)
}

// tlsScan is what scanTLS found in one file.
type tlsScan struct {
	faults       []string
	literals     int      // tls.Config literals and new(tls.Config)
	constructors []string // functions that build a literal without MinVersion and then raise it
}

// scanTLS checks the TLS configurations that f builds; see TestTLSConfigSource.
func scanTLS(fset *token.FileSet, f *ast.File) tlsScan {
	var r tlsScan
	tlsName := ""
	for _, imp := range f.Imports {
		if p, _ := strconv.Unquote(imp.Path.Value); p == "crypto/tls" {
			tlsName = "tls"
			if imp.Name != nil {
				tlsName = imp.Name.Name
			}
		}
	}
	if tlsName == "" || tlsName == "_" {
		return r
	}
	isTLS := func(e ast.Expr, name string) bool {
		s, ok := e.(*ast.SelectorExpr)
		if !ok || s.Sel.Name != name {
			return false
		}
		x, ok := s.X.(*ast.Ident)
		return ok && x.Name == tlsName
	}
	// names reports whether e names tls.VersionTLS12 or tls.VersionTLS13.
	modern := func(e ast.Expr) bool {
		found := false
		ast.Inspect(e, func(n ast.Node) bool {
			if x, ok := n.(ast.Expr); ok && (isTLS(x, "VersionTLS12") || isTLS(x, "VersionTLS13")) {
				found = true
			}
			return !found
		})
		return found
	}
	fault := func(n ast.Node, format string, args ...any) {
		r.faults = append(r.faults, fmt.Sprintf("%s: %s", fset.Position(n.Pos()), fmt.Sprintf(format, args...)))
	}
	isFalse := func(e ast.Expr) bool { id, ok := e.(*ast.Ident); return ok && id.Name == "false" }

	// check looks at the node n, in the function named fn ("" outside any);
	// raises reports whether that function raises MinVersion.
	check := func(n ast.Node, fn string, raises bool) {
		ast.Inspect(n, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.SelectorExpr:
				for _, old := range []string{"VersionSSL30", "VersionTLS10", "VersionTLS11"} {
					if isTLS(n, old) {
						fault(n, "names tls.%s", old)
					}
				}
			case *ast.CompositeLit:
				if !isTLS(n.Type, "Config") {
					return true
				}
				r.literals++
				setsMin := false
				for _, e := range n.Elts {
					kv, ok := e.(*ast.KeyValueExpr)
					if !ok {
						continue
					}
					switch key, _ := kv.Key.(*ast.Ident); {
					case key == nil:
					case key.Name == "MinVersion":
						setsMin = true
						if !modern(kv.Value) {
							fault(kv, "MinVersion not TLS 1.2 or 1.3")
						}
					case key.Name == "InsecureSkipVerify" && !isFalse(kv.Value):
						fault(kv, "InsecureSkipVerify set")
					}
				}
				if !setsMin {
					if !raises {
						fault(n, "tls.Config without MinVersion")
					} else {
						r.constructors = append(r.constructors, fn)
					}
				}
			case *ast.CallExpr:
				if id, ok := n.Fun.(*ast.Ident); ok && id.Name == "new" && len(n.Args) == 1 && isTLS(n.Args[0], "Config") {
					r.literals++
					if !raises {
						fault(n, "new(tls.Config) without MinVersion")
					} else {
						r.constructors = append(r.constructors, fn)
					}
				}
			case *ast.AssignStmt:
				for i, lhs := range n.Lhs {
					s, ok := lhs.(*ast.SelectorExpr)
					if !ok || i >= len(n.Rhs) {
						continue
					}
					switch s.Sel.Name {
					case "InsecureSkipVerify":
						if !isFalse(n.Rhs[i]) {
							fault(n, "InsecureSkipVerify set")
						}
					case "MinVersion":
						if !modern(n.Rhs[i]) {
							fault(n, "MinVersion set below TLS 1.2")
						}
					}
				}
			}
			return true
		})
	}
	// raisesMin reports whether body assigns MinVersion a value of at least
	// TLS 1.2.
	raisesMin := func(body ast.Node) bool {
		found := false
		ast.Inspect(body, func(n ast.Node) bool {
			if a, ok := n.(*ast.AssignStmt); ok {
				for i, lhs := range a.Lhs {
					if s, ok := lhs.(*ast.SelectorExpr); ok && s.Sel.Name == "MinVersion" && i < len(a.Rhs) && modern(a.Rhs[i]) {
						found = true
					}
				}
			}
			return !found
		})
		return found
	}
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Body != nil {
			check(fd.Body, fd.Name.Name, raisesMin(fd.Body))
		} else {
			check(d, "", false)
		}
	}
	return r
}

// TestScanTLS holds scanTLS to what it must find.
func TestScanTLS(t *testing.T) {
	tests := []struct {
		name, src    string
		faults       int
		constructors int
	}{
		{"literal with MinVersion", `func f() *tls.Config { return &tls.Config{MinVersion: tls.VersionTLS12} }`, 0, 0},
		{"literal with TLS 1.3", `var c = tls.Config{MinVersion: tls.VersionTLS13}`, 0, 0},
		{"literal without MinVersion", `var c = &tls.Config{ServerName: "x"}`, 1, 0},
		{"literal with TLS 1.0", `func f() *tls.Config { return &tls.Config{MinVersion: tls.VersionTLS10} }`, 2, 0},
		{"constructor", `func f(b *tls.Config) *tls.Config { c := &tls.Config{}; if b != nil { c = b.Clone() }; c.MinVersion = max(c.MinVersion, tls.VersionTLS12); return c }`, 0, 1},
		{"new without MinVersion", `func f() *tls.Config { return new(tls.Config) }`, 1, 0},
		{"InsecureSkipVerify true", `func f(c *tls.Config) { c.InsecureSkipVerify = true }`, 1, 0},
		{"InsecureSkipVerify from a variable", `func f(c *tls.Config, v bool) { c.InsecureSkipVerify = v }`, 1, 0},
		{"InsecureSkipVerify false", `func f(c *tls.Config) { c.InsecureSkipVerify = false }`, 0, 0},
		{"InsecureSkipVerify in a literal", `var c = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true}`, 1, 0},
		{"MinVersion lowered", `func f(c *tls.Config) { c.MinVersion = 0 }`, 1, 0},
		{"MaxVersion TLS 1.1", `func f(c *tls.Config) { c.MaxVersion = tls.VersionTLS11 }`, 1, 0},
		{"renamed import", `import ctls "crypto/tls"` + "\n" + `var c = &ctls.Config{}`, 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := "package p\n"
			if !strings.Contains(tc.src, "import") {
				src += "import \"crypto/tls\"\n"
			}
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, "p.go", src+tc.src, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			r := scanTLS(fset, f)
			if len(r.faults) != tc.faults || len(r.constructors) != tc.constructors {
				t.Errorf("faults %q, constructors %q; want %d and %d", r.faults, r.constructors, tc.faults, tc.constructors)
			}
		})
	}
}
