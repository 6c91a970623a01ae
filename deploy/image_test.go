//go:build linux

package deploy

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// The image test builds the image as `make image` does (scripts/image.sh) and
// runs it as the Deployments do: user 65532, a read-only root filesystem,
// every capability dropped but NET_BIND_SERVICE, no privilege escalation. The
// container has a network namespace of its own, made by the test, with only
// loopback: a DoT upstream (cmd/dotupstream) runs in it, and so does the
// client, this test binary run again (TestImageClient).

const (
	imageName    = "localhost/dotstub-test"
	imageVersion = "test"
	clientEnv    = "DOTSTUB_IMAGE_CLIENT" // set: TestImageClient runs
	capNetBind   = 10                     // CAP_NET_BIND_SERVICE
)

// podman runs podman with flags that work on any host this runs on: runc
// (crun fails on some cgroup layouts), cgroupfs, and vfs storage in a store of
// the test's own, so that nothing touches the machine's images.
type podman struct {
	t     *testing.T
	flags []string
}

func (p podman) cmd(args ...string) *exec.Cmd {
	return exec.Command("podman", append(slices.Clone(p.flags), args...)...)
}

func (p podman) run(args ...string) string {
	p.t.Helper()
	out, err := p.cmd(args...).CombinedOutput()
	if err != nil {
		p.t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// needImageTools skips the test where it cannot run, except in CI, where
// `make test` installs podman, runc, setcap and ip, and runs as root.
func needImageTools(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the container image")
	}
	var missing []string
	for _, c := range []string{"podman", "runc", "setcap", "ip"} {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") == "" {
		t.Skipf("needs %s (make test installs them)", strings.Join(missing, ", "))
	}
	t.Fatalf("CI: needs %s", strings.Join(missing, ", "))
}

func TestImage(t *testing.T) {
	needImageTools(t)
	dir := t.TempDir()
	p := podman{t: t, flags: []string{"--runtime", "runc", "--cgroup-manager", "cgroupfs", "--storage-driver", "vfs",
		"--root", filepath.Join(dir, "storage"), "--runroot", filepath.Join(dir, "run")}}
	t.Cleanup(func() { unmountUnder(t, dir) }) // runs last: after the container and the image are gone

	build := exec.Command("../scripts/image.sh")
	build.Env = append(os.Environ(), "IMAGE="+imageName, "VERSION="+imageVersion, "ENGINE=podman", "ENGINE_FLAGS="+strings.Join(p.flags, " "))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("scripts/image.sh: %v\n%s", err, out)
	}
	image := imageName + ":" + imageVersion
	t.Cleanup(func() { p.cmd("rmi", "-f", image, image+"-"+runtime.GOARCH).Run() })

	t.Run("content", func(t *testing.T) { checkImageContent(t, p, image) })
	t.Run("runs as deployed", func(t *testing.T) { runImage(t, p, image, dir) })
}

// checkImageContent checks the image's configuration and its files: the
// binaries, the users, the CA bundle, no shell, and the file capability on
// coredns, which a runtime that gives no ambient capability (Kubernetes)
// needs for port 53.
func checkImageContent(t *testing.T, p podman, image string) {
	var inspected []struct {
		Config struct {
			User       string
			Entrypoint []string
			Cmd        []string
			Labels     map[string]string
		}
	}
	if err := json.Unmarshal([]byte(p.run("image", "inspect", image)), &inspected); err != nil || len(inspected) != 1 {
		t.Fatalf("podman image inspect: %v, %d images", err, len(inspected))
	}
	c := inspected[0].Config
	if c.User != "65532:65532" || !slices.Equal(c.Entrypoint, []string{"/coredns"}) || !slices.Equal(c.Cmd, []string{"-conf", "/etc/coredns/Corefile"}) {
		t.Errorf("user %q, entrypoint %q, cmd %q; want 65532:65532, [/coredns], [-conf /etc/coredns/Corefile]", c.User, c.Entrypoint, c.Cmd)
	}
	for _, l := range []string{"org.opencontainers.image.source", "org.opencontainers.image.version", "org.opencontainers.image.revision"} {
		if c.Labels[l] == "" || c.Labels[l] == "unknown" {
			t.Errorf("label %s is %q", l, c.Labels[l])
		}
	}
	if v := c.Labels["org.opencontainers.image.version"]; v != imageVersion {
		t.Errorf("version label %q, want %q", v, imageVersion)
	}

	root := p.run("image", "mount", image)
	defer p.cmd("image", "umount", image).Run()
	for _, f := range []string{"coredns", "dotpin", "etc/passwd", "etc/group", "etc/ssl/certs/ca-certificates.crt"} {
		if st, err := os.Stat(filepath.Join(root, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	for _, f := range []string{"bin/sh", "bin", "usr"} {
		if _, err := os.Lstat(filepath.Join(root, f)); err == nil {
			t.Errorf("the image has /%s", f)
		}
	}
	if passwd, _ := os.ReadFile(filepath.Join(root, "etc/passwd")); !strings.Contains(string(passwd), ":65532:65532:") {
		t.Errorf("no user 65532 in /etc/passwd:\n%s", passwd)
	}
	if caps, err := fileCaps(filepath.Join(root, "coredns")); err != nil {
		t.Errorf("coredns: %v: the image lost the file capability", err)
	} else if !caps.effective || caps.permitted != 1<<capNetBind {
		t.Errorf("coredns carries %+v, want cap_net_bind_service=ep alone", caps)
	}
}

// fileCapability is a file's security.capability attribute, decoded.
type fileCapability struct {
	permitted uint64
	effective bool
}

// fileCaps reads the file capability of path (struct vfs_cap_data,
// linux/capability.h: a little-endian magic with the effective flag, then
// permitted and inheritable, low 32 bits first).
func fileCaps(path string) (fileCapability, error) {
	buf := make([]byte, 64)
	n, err := syscall.Getxattr(path, "security.capability", buf)
	if err != nil {
		return fileCapability{}, err
	}
	if n < 12 {
		return fileCapability{}, fmt.Errorf("security.capability of %d bytes", n)
	}
	magic := binary.LittleEndian.Uint32(buf)
	c := fileCapability{effective: magic&1 != 0, permitted: uint64(binary.LittleEndian.Uint32(buf[4:]))}
	if n >= 20 { // revision 2 and 3: the high 32 bits follow
		c.permitted |= uint64(binary.LittleEndian.Uint32(buf[12:])) << 32
	}
	return c, nil
}

// runImage runs the image with the Deployment's security settings in a
// network namespace of its own, with a DoT upstream in it, and has the
// client ask it over UDP and TCP and read /health and /ready.
func runImage(t *testing.T, p podman, image, dir string) {
	ns := fmt.Sprintf("dotstub-image-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v\n%s", err, out)
	}

	conf := filepath.Join(dir, "conf")
	if err := os.Mkdir(conf, 0o755); err != nil {
		t.Fatal(err)
	}
	up := filepath.Join(dir, "dotupstream")
	if out, err := exec.Command("go", "build", "-o", up, "../cmd/dotupstream").CombinedOutput(); err != nil {
		t.Fatalf("go build dotupstream: %v\n%s", err, out)
	}
	upstream := exec.Command("ip", "netns", "exec", ns, up, "-listen", "127.0.0.1:853", "-dir", conf)
	stdout, err := upstream.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := upstream.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { upstream.Process.Kill(); upstream.Wait() })
	serving := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		serving <- strings.HasPrefix(line, "dotupstream: serving")
		io.Copy(io.Discard, stdout)
	}()
	select {
	case ok := <-serving:
		if !ok {
			t.Fatal("the upstream did not start")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the upstream did not start within 30s")
	}
	leaf, err := os.ReadFile(filepath.Join(conf, "leaf.pin"))
	if err != nil {
		t.Fatal(err)
	}
	corefile := fmt.Sprintf(`.:53 {
    health 127.0.0.1:8080
    ready 127.0.0.1:8181
    errors
    dotstub . tls://127.0.0.1%%dns.test:853 {
        tls /etc/coredns/ca.pem
        pin_sha256 %s
    }
}
`, strings.TrimSpace(string(leaf)))
	if err := os.WriteFile(filepath.Join(conf, "Corefile"), []byte(corefile), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.pem", "key.pem"} { // readable by 65532; key.pem is not used
		os.Chmod(filepath.Join(conf, f), 0o644)
	}

	var nofile, nproc syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &nofile)
	syscall.Getrlimit(6 /* RLIMIT_NPROC */, &nproc)
	ctr := "dotstub-image-test"
	p.cmd("rm", "-f", ctr).Run()
	p.run("run", "-d", "--name", ctr, "--network", "ns:/run/netns/"+ns,
		"--user", "65532:65532", "--read-only", "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE",
		"--security-opt", "no-new-privileges",
		// no higher than this process's limits, which a runtime without
		// CAP_SYS_RESOURCE cannot raise; podman's defaults are higher
		"--ulimit", fmt.Sprintf("nofile=%d:%d", nofile.Cur, nofile.Cur), "--ulimit", fmt.Sprintf("nproc=%d:%d", min(nproc.Cur, 4096), min(nproc.Cur, 4096)),
		"-v", conf+":/etc/coredns:ro", image)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := p.cmd("logs", ctr).CombinedOutput()
			t.Logf("container log:\n%s", out)
		}
		p.cmd("rm", "-f", "-t", "5", ctr).Run()
	})

	client := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestImageClient$", "-test.v")
	client.Env = append(os.Environ(), clientEnv+"=1")
	out, err := client.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestImageClient") {
		t.Errorf("the client in the container's network namespace: %v\n%s", err, out)
	}

	// The process: user 65532, no new privileges, and port 53 bound with
	// NET_BIND_SERVICE that came from the file (no ambient capability).
	pid := p.run("inspect", "--format", "{{.State.Pid}}", ctr)
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for sc := bufio.NewScanner(strings.NewReader(string(status))); sc.Scan(); {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	eff, _ := strconv.ParseUint(fields["CapEff"], 16, 64)
	amb, _ := strconv.ParseUint(fields["CapAmb"], 16, 64)
	if !strings.HasPrefix(fields["Uid"], "65532\t") || fields["NoNewPrivs"] != "1" || eff != 1<<capNetBind {
		t.Errorf("coredns runs with Uid %q, NoNewPrivs %q, CapEff %q; want 65532, 1, NET_BIND_SERVICE alone", fields["Uid"], fields["NoNewPrivs"], fields["CapEff"])
	}
	t.Logf("coredns: Uid %s, CapEff %s, CapAmb %s, NoNewPrivs %s", fields["Uid"], fields["CapEff"], fields["CapAmb"], fields["NoNewPrivs"])
	// podman hands a non-root process the added capabilities as ambient
	// ones, which Kubernetes does not; exec of a file that carries
	// capabilities clears the ambient set. So none here means the file's
	// capability is what bound port 53, as it must under Kubernetes.
	if amb != 0 {
		t.Errorf("CapAmb %s: NET_BIND_SERVICE came from podman's ambient set, not from the file, which Kubernetes would not give", fields["CapAmb"])
	}
	if err := p.cmd("exec", ctr, "/bin/sh", "-c", "true").Run(); err == nil {
		t.Error("the container ran /bin/sh")
	}
}

// TestImageClient is TestImage's client, run by it inside the container's
// network namespace.
func TestImageClient(t *testing.T) {
	if os.Getenv(clientEnv) == "" {
		t.Skip("TestImage runs this in the container's network namespace")
	}
	get := func(url string) int {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// Ready once a handshake with the upstream has passed every check: the
	// container starts before this does, so wait, within a bound.
	deadline := time.Now().Add(30 * time.Second)
	for get("http://127.0.0.1:8181/ready") != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("/ready not 200 within 30s")
		}
		m := new(dns.Msg)
		m.SetQuestion("warm.example.org.", dns.TypeA)
		(&dns.Client{Timeout: time.Second}).Exchange(m, "127.0.0.1:53") // a query dials the upstream
	}
	if code := get("http://127.0.0.1:8080/health"); code != http.StatusOK {
		t.Errorf("/health: %d", code)
	}
	for _, network := range []string{"udp", "tcp"} {
		m := new(dns.Msg)
		m.SetQuestion("www.example.org.", dns.TypeA)
		a, _, err := (&dns.Client{Net: network, Timeout: 5 * time.Second}).Exchange(m, "127.0.0.1:53")
		if err != nil {
			t.Errorf("%s: %v", network, err)
			continue
		}
		if a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1 || !strings.Contains(a.Answer[0].String(), "192.0.2.1") {
			t.Errorf("%s: got\n%s", network, a)
		}
	}
}

// unmountUnder unmounts whatever podman left mounted under dir, so that the
// test's temporary directory can be removed.
func unmountUnder(t *testing.T, dir string) {
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mounts []string
	for _, line := range strings.Split(string(info), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	slices.Reverse(mounts) // the deepest last mounted, first unmounted
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			t.Logf("unmount %s: %v", m, err)
		}
	}
}
