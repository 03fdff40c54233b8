// Package qemu starts QEMU machines for plinth's end-to-end tests: it
// captures the serial console, waits for console lines with timeouts, and
// always kills the machine. KVM is used only when a short probe shows it
// works; otherwise QEMU emulates (TCG).
package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Binary is the QEMU system emulator used.
const Binary = "qemu-system-x86_64"

// NIC is one network card.
type NIC struct {
	MAC    string
	Netdev string // -netdev argument without id, e.g. "user,bootfile=..." or "tap,ifname=t0,script=no,downscript=no"
	Model  string // default virtio-net-pci
}

// Config describes a machine.
type Config struct {
	Name      string
	Memory    int // MiB; default 512
	CPUs      int // default 1
	Kernel    string
	Initrd    string
	Append    string
	Firmware  string // "" (SeaBIOS) or "ovmf"
	Boot      string // -boot order, e.g. "n" for PXE
	NICs      []NIC
	ExtraArgs []string
	LogDir    string // the console is also written to LogDir/<name>.console.log
	// Wrap runs QEMU through another command (e.g. "ip netns exec NS").
	Wrap []string
}

// VM is a running machine.
type VM struct {
	cfg     Config
	cmd     *exec.Cmd
	start   time.Time
	mu      sync.Mutex
	console bytes.Buffer
	cursor  int // where the next Expect starts reading
	changed chan struct{}
	done    chan struct{}
	waitErr error
	matched time.Duration
}

var (
	accelOnce sync.Once
	accel     string
)

// Accel returns "kvm" when a KVM probe finishes in time, else "tcg".
// KVM hangs on some hosts, so the probe has a hard deadline.
func Accel(ctx context.Context) string {
	accelOnce.Do(func() {
		accel = "tcg"
		if os.Getenv("PLINTH_QEMU_ACCEL") != "" {
			accel = os.Getenv("PLINTH_QEMU_ACCEL")
			return
		}
		if _, err := os.Stat("/dev/kvm"); err != nil {
			return
		}
		pctx, cancel := context.WithTimeout(ctx, 8*time.Second)
		defer cancel()
		// A machine with no devices that quits at once: it only works if
		// KVM can create and run a VM.
		cmd := exec.CommandContext(pctx, Binary, "-accel", "kvm", "-machine", "none", "-nodefaults", "-display", "none", "-monitor", "none", "-S", "-no-user-config", "-qmp", "stdio")
		cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}` + "\n" + `{"execute":"quit"}` + "\n")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		if out, err := cmd.CombinedOutput(); err == nil && !bytes.Contains(out, []byte("error")) {
			accel = "kvm"
		}
	})
	return accel
}

// Available explains what is missing to run machines here.
func Available() error {
	if _, err := exec.LookPath(Binary); err != nil {
		return fmt.Errorf("%s not found: make deps installs qemu-system-x86", Binary)
	}
	return nil
}

// args builds QEMU's command line.
func (c Config) args(ctx context.Context) []string {
	a := []string{"-name", c.Name, "-nographic", "-no-reboot", "-nodefaults", "-no-user-config",
		"-serial", "stdio", "-monitor", "none", "-m", fmt.Sprint(c.Memory), "-smp", fmt.Sprint(c.CPUs)}
	if Accel(ctx) == "kvm" {
		a = append(a, "-accel", "kvm", "-cpu", "host")
	} else {
		a = append(a, "-accel", "tcg", "-cpu", "max")
	}
	if c.Firmware == "ovmf" {
		a = append(a, "-bios", "/usr/share/ovmf/OVMF.fd")
	}
	if c.Kernel != "" {
		a = append(a, "-kernel", c.Kernel)
	}
	if c.Initrd != "" {
		a = append(a, "-initrd", c.Initrd)
	}
	if c.Append != "" {
		a = append(a, "-append", c.Append)
	}
	if c.Boot != "" {
		a = append(a, "-boot", c.Boot)
	}
	for i, n := range c.NICs {
		model := n.Model
		if model == "" {
			model = "virtio-net-pci"
		}
		id := fmt.Sprintf("n%d", i)
		a = append(a, "-netdev", n.Netdev+",id="+id)
		dev := model + ",netdev=" + id
		if n.MAC != "" {
			dev += ",mac=" + n.MAC
		}
		if c.Boot == "n" {
			dev += fmt.Sprintf(",bootindex=%d", i+1)
		}
		a = append(a, "-device", dev)
	}
	return append(a, c.ExtraArgs...)
}

// Start boots a machine. With a testing.TB it is killed when the test ends
// and its console is logged on failure.
func Start(ctx context.Context, t testing.TB, c Config) (*VM, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if c.Memory == 0 {
		c.Memory = 512
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.Name == "" {
		c.Name = "vm"
	}
	argv := append(append([]string{}, c.Wrap...), Binary)
	argv = append(argv, c.args(ctx)...)
	v := &VM{cfg: c, changed: make(chan struct{}, 1), done: make(chan struct{})}
	v.cmd = exec.Command(argv[0], argv[1:]...)
	// Pdeathsig: a test that dies (a panic on timeout) takes its machines with it.
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var sinks []io.Writer = []io.Writer{writerFunc(v.write)}
	if c.LogDir != "" {
		if err := os.MkdirAll(c.LogDir, 0o755); err != nil {
			return nil, err
		}
		f, err := os.Create(filepath.Join(c.LogDir, c.Name+".console.log"))
		if err != nil {
			return nil, err
		}
		sinks = append(sinks, f)
		defer func() {
			go func() { <-v.done; f.Close() }()
		}()
	}
	out := io.MultiWriter(sinks...)
	v.cmd.Stdout, v.cmd.Stderr = out, out
	if err := v.cmd.Start(); err != nil {
		return nil, err
	}
	v.start = time.Now()
	go func() {
		v.waitErr = v.cmd.Wait()
		close(v.done)
		v.signal()
	}()
	if t != nil {
		t.Cleanup(func() {
			v.Close()
			if t.Failed() {
				t.Logf("console of %s (last lines):\n%s", c.Name, v.tail(60))
			}
		})
	}
	go func() {
		select {
		case <-ctx.Done():
			v.Close()
		case <-v.done:
		}
	}()
	return v, nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func (v *VM) write(b []byte) (int, error) {
	v.mu.Lock()
	v.console.Write(b)
	v.mu.Unlock()
	v.signal()
	return len(b), nil
}

func (v *VM) signal() {
	select {
	case v.changed <- struct{}{}:
	default:
	}
}

// Console returns everything the machine printed so far.
func (v *VM) Console() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.console.String()
}

func (v *VM) tail(n int) string {
	lines := strings.Split(strings.TrimRight(v.Console(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ErrExited is returned by Expect when QEMU stopped before the match.
var ErrExited = errors.New("qemu exited")

// Expect waits until the console, from after the previous match, matches
// re, and returns the submatches. On timeout or exit the error carries the
// console's last lines.
func (v *VM) Expect(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	for {
		v.mu.Lock()
		text := v.console.String()[v.cursor:]
		if loc := re.FindStringSubmatchIndex(text); loc != nil {
			m := make([]string, len(loc)/2)
			for i := range m {
				if loc[2*i] >= 0 {
					m[i] = text[loc[2*i]:loc[2*i+1]]
				}
			}
			v.cursor += loc[1]
			v.matched = time.Since(v.start)
			v.mu.Unlock()
			return m, nil
		}
		v.mu.Unlock()
		select {
		case <-v.changed:
		case <-v.done:
			// Drain what was printed last, then give up.
			v.mu.Lock()
			text := v.console.String()[v.cursor:]
			v.mu.Unlock()
			if re.MatchString(text) {
				continue
			}
			return nil, fmt.Errorf("%s: waiting for %q: %w (%v) after %.0fs; console:\n%s", v.cfg.Name, re, ErrExited, v.waitErr, time.Since(v.start).Seconds(), v.tail(40))
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: waiting for %q: %w after %.0fs; console:\n%s", v.cfg.Name, re, ctx.Err(), time.Since(v.start).Seconds(), v.tail(40))
		}
	}
}

// Since is the time from QEMU's start to the last match.
func (v *VM) Since() time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.matched
}

// Wait waits for QEMU to exit.
func (v *VM) Wait(ctx context.Context) error {
	select {
	case <-v.done:
		return v.waitErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close kills QEMU (its whole process group) and waits for it.
func (v *VM) Close() {
	select {
	case <-v.done:
		return
	default:
	}
	if v.cmd.Process != nil {
		_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
	}
	select {
	case <-v.done:
	case <-time.After(10 * time.Second):
	}
}

// Pid is QEMU's process id.
func (v *VM) Pid() int { return v.cmd.Process.Pid }
