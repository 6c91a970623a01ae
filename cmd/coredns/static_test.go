package main

import (
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// buildStatic runs scripts/build-static.sh, the Dockerfile's build step, into
// dir with the given version stamps.
func buildStatic(t *testing.T, dir, version, commit string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the coredns binary")
	}
	bin := filepath.Join(dir, "coredns")
	cmd := exec.Command("../../scripts/build-static.sh", bin)
	cmd.Env = append(os.Environ(), "VERSION="+version, "COMMIT="+commit)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/build-static.sh: %v\n%s", err, out)
	}
	return bin
}

// TestStaticBuild checks what the image's build step writes: one statically
// linked, stripped binary, built without cgo and with -trimpath, stamped with
// the version it was given, with dotstub among its plugins. The Dockerfile
// itself is not built here (there is no Docker engine); its build stage runs
// this same script.
func TestStaticBuild(t *testing.T) {
	bin := buildStatic(t, t.TempDir(), "v9.9.9-test", "abc1234")

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("program header %s: the binary needs a dynamic loader", p.Type)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("needs shared libraries %v (%v)", libs, err)
	}
	for _, s := range f.Sections {
		if s.Name == ".interp" || s.Name == ".dynamic" || s.Name == ".symtab" || strings.HasPrefix(s.Name, ".debug_") || strings.HasPrefix(s.Name, ".zdebug_") {
			t.Errorf("section %s: want a static binary without symbols or DWARF (-s -w)", s.Name)
		}
	}
	if out, err := exec.Command("file", bin).Output(); err == nil && !strings.Contains(string(out), "statically linked") {
		t.Errorf("file(1) says: %s", out)
	}

	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("built with CGO_ENABLED=%q -trimpath=%q, want 0 and true", settings["CGO_ENABLED"], settings["-trimpath"])
	}

	out, err := exec.Command(bin, "-version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "+dotstub-v9.9.9-test") || !strings.Contains(string(out), "abc1234") {
		t.Errorf("-version: %v\n%s\nwant the stamped version v9.9.9-test and commit abc1234", err, out)
	}
	out, err = exec.Command(bin, "-plugins").CombinedOutput()
	if err != nil || !slices.Contains(strings.Fields(string(out)), "dotstub") {
		t.Errorf("-plugins does not list dotstub: %v\n%s", err, out)
	}
}

// TestStaticBuildStampsLikeMakefile holds the script's version flags to the
// Makefile's: every -X the Makefile sets, the script sets too.
func TestStaticBuildStampsLikeMakefile(t *testing.T) {
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile("../../scripts/build-static.sh")
	if err != nil {
		t.Fatal(err)
	}
	x := regexp.MustCompile(`-X ([\w./-]+)=`)
	vars := x.FindAllStringSubmatch(string(makefile), -1)
	if len(vars) == 0 {
		t.Fatal("no -X in the Makefile")
	}
	for _, v := range vars {
		if !strings.Contains(string(script), v[0]) {
			t.Errorf("the Makefile stamps %s, scripts/build-static.sh does not", v[1])
		}
	}
}

// TestFileCapabilityBindsPrivilegedPort does, on this kernel, what the image
// and the pod do to let a non-root process bind port 53 (here a free port
// below 1024 on 127.0.0.1): the Dockerfile's setcap on the binary, then the
// Deployment's securityContext (user 65532, capabilities drop ALL add
// NET_BIND_SERVICE, allowPrivilegeEscalation false, that is no_new_privs),
// approximated with setpriv(1). With the file capability the binary serves
// the port; without it, bind is refused; with it but NET_BIND_SERVICE out of
// the bounding set, exec itself fails. What this cannot show is that an image
// builder keeps the capability through COPY --from; see docs/kubernetes.md,
// "Container image".
func TestFileCapabilityBindsPrivilegedPort(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to set a file capability and to switch users")
	}
	for _, c := range []string{"setcap", "setpriv"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("no %s (libcap2-bin, util-linux)", c)
		}
	}
	// A directory user 65532 may read: t.TempDir's are private.
	dir, err := os.MkdirTemp("", "dotstub-cap-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := buildStatic(t, dir, "dev", "unknown")
	capBin := filepath.Join(dir, "coredns-cap")
	if out, err := exec.Command("cp", bin, capBin).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	if out, err := exec.Command("setcap", "cap_net_bind_service=+ep", capBin).CombinedOutput(); err != nil {
		t.Fatalf("setcap: %v %s", err, out)
	}
	port := privilegedPort(t)
	conf := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(".:%d {\n    bind 127.0.0.1\n    whoami\n}\n", port)), 0o644); err != nil {
		t.Fatal(err)
	}
	pod := func(bounding string, bin string) *exec.Cmd {
		return exec.Command("setpriv", "--reuid=65532", "--regid=65532", "--clear-groups",
			"--inh-caps=-all", "--bounding-set=-all"+bounding, "--no-new-privs", "--", bin, "-conf", conf)
	}

	t.Run("with the capability", func(t *testing.T) {
		cmd := pod(",+net_bind_service", capBin)
		out := startUntil(t, cmd, "CoreDNS-")
		m := new(dns.Msg)
		m.SetQuestion("example.org.", dns.TypeA)
		a, err := dns.Exchange(m, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil || a.Rcode != dns.RcodeSuccess {
			t.Errorf("query to port %d: %v %v\n%s", port, err, a, out())
		}
	})
	t.Run("without it", func(t *testing.T) {
		out, err := pod(",+net_bind_service", bin).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "permission denied") {
			t.Errorf("want bind: permission denied, got %v:\n%s", err, out)
		}
	})
	t.Run("with it, NET_BIND_SERVICE not added", func(t *testing.T) {
		out, err := pod("", capBin).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Operation not permitted") {
			t.Errorf("want exec to fail with EPERM, got %v:\n%s", err, out)
		}
	})
}

// privilegedPort returns a port below 1024 free on 127.0.0.1 for UDP and TCP.
func privilegedPort(t *testing.T) int {
	t.Helper()
	for p := 1023; p > 900; p-- {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		l.Close()
		if err == nil {
			u.Close()
			return p
		}
	}
	t.Fatal("no free port below 1024")
	return 0
}

// startUntil starts cmd and returns once its output has a line starting with
// prefix; it kills cmd when t ends. The function it returns gives the output
// so far.
func startUntil(t *testing.T, cmd *exec.Cmd, prefix string) func() string {
	t.Helper()
	var (
		mu  sync.Mutex // guards buf
		buf strings.Builder
	)
	output := func() string {
		mu.Lock()
		defer mu.Unlock()
		return buf.String()
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	found := make(chan bool, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 4096)
		sent := false
		for {
			n, err := r.Read(b)
			mu.Lock()
			buf.Write(b[:n])
			mu.Unlock()
			if !sent && strings.Contains("\n"+output(), "\n"+prefix) {
				found <- true
				sent = true
			}
			if err != nil {
				if !sent {
					found <- false
				}
				return
			}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		<-done
	})
	select {
	case ok := <-found:
		if !ok {
			t.Fatalf("%s ended:\n%s", cmd.Path, output())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s printed no %q within 30s:\n%s", cmd.Path, prefix, output())
	}
	return output
}
