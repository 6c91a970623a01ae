// Package benchkit holds what the benchmark programs under bench/ share: a
// child process that cannot outlive them, markdown tables, and the lines that
// say where and with what a benchmark ran.
package benchkit

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// stopWait is how long Stop waits after SIGTERM before SIGKILL.
const stopWait = 5 * time.Second

// Proc is a child process whose output goes to a log file.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	Log  string // file holding its stdout and stderr
	done chan struct{}
}

// Start starts bin with args in dir, its output going to dir/name.log. The
// child gets SIGKILL if the benchmark dies first (Pdeathsig), so nothing
// outlives it however it ends. (Pdeathsig follows the thread that forked the
// child; the Go runtime does not end its threads unless a goroutine that
// locked one exits, so start children from goroutines that do not.)
func Start(dir, name, bin string, args ...string) (*Proc, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{Name: name, Cmd: cmd, Log: logf.Name(), done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	return p, nil
}

// Done is closed once the process has exited and been waited for.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Stop ends the process by its PID: SIGTERM, then SIGKILL after five
// seconds; it returns once the process has been waited for.
func (p *Proc) Stop() {
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopWait):
		p.Cmd.Process.Kill()
		<-p.done
	}
}

// Tail returns the last n bytes of the process's log, for error messages.
func (p *Proc) Tail(n int) string {
	data, _ := os.ReadFile(p.Log)
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return string(data)
}

// Table renders a markdown table: the first column left-aligned, the others
// right-aligned, as numbers read best. A short row gets empty cells.
func Table(header []string, rows [][]string) string {
	var b strings.Builder
	b.WriteString("| " + strings.Join(header, " | ") + " |\n|")
	for i := range header {
		if i == 0 {
			b.WriteString("---|")
		} else {
			b.WriteString("---:|")
		}
	}
	b.WriteString("\n")
	for _, r := range rows {
		cells := make([]string, len(header))
		copy(cells, r)
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	return b.String()
}

// Machine is the date, the number of cores and the CPU model, followed by
// what shares the machine.
func Machine(sharing string) string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d cores (%s), %s on the same machine", time.Now().Format("2006-01-02"), runtime.NumCPU(), model, sharing)
}

// Version is the first line of `coredns -version` for the binary at path.
func Version(path string) string {
	out, err := exec.Command(path, "-version").Output()
	if err != nil {
		return "coredns -version: " + err.Error()
	}
	return strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
}
