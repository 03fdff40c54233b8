package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// ProbeTimeout bounds the KVM probe. A working KVM runs the probe guest in
// well under a second; on hosts where KVM hangs the probe is killed.
const ProbeTimeout = 8 * time.Second

var (
	accelOnce sync.Once
	accel     string
)

// Accel returns "kvm" when a probe guest ran to completion under KVM within
// ProbeTimeout, else "tcg". The answer is computed once per process.
// PLINTH_QEMU_ACCEL=tcg|kvm overrides the probe.
func Accel(ctx context.Context) string {
	accelOnce.Do(func() {
		accel = "tcg"
		switch env := os.Getenv("PLINTH_QEMU_ACCEL"); env {
		case "kvm", "tcg":
			accel = env
			return
		case "":
		default:
			slog.Warn("ignoring PLINTH_QEMU_ACCEL", "value", env, "want", "kvm or tcg")
		}
		if _, err := os.Stat("/dev/kvm"); err != nil {
			slog.Debug("qemu accelerator", "accel", accel, "reason", err)
			return
		}
		start := time.Now()
		err := probe(ctx, "kvm", exitCode, ProbeTimeout)
		if err == nil {
			accel = "kvm"
		}
		slog.Info("qemu accelerator", "accel", accel, "probe", time.Since(start).Round(time.Millisecond), "err", err)
	})
	return accel
}

// The probe guest is a firmware image whose reset vector (the last 16 bytes
// of the image, mapped just below 4 GiB) writes to an isa-debug-exit port.
// QEMU then exits with status (1<<1)|1 = 3: proof that the accelerator
// really ran guest code, which "-machine none" would not show.
var (
	// mov al,1; out 0xf4,al; hlt; jmp back to hlt
	exitCode = []byte{0xb0, 0x01, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd}
	// jmp $: spins forever, as a hung accelerator would look
	spinCode = []byte{0xeb, 0xfe}
)

const probeExitStatus = 3

// errProbeTimeout means the probe guest did not finish in time.
var errProbeTimeout = errors.New("probe timed out")

// probe boots code as firmware under accel and waits at most timeout for
// QEMU to report the guest's exit. QEMU is killed on timeout; if even
// SIGKILL does not end it soon (a process stuck in KVM), probe returns anyway
// and leaves a goroutine to reap it.
func probe(ctx context.Context, accel string, code []byte, timeout time.Duration) error {
	dir, err := os.MkdirTemp("", "plinth-qemu-probe-")
	if err != nil {
		return fmt.Errorf("probe %s: %w", accel, err)
	}
	defer os.RemoveAll(dir)
	// SeaBIOS-style firmware images must be a multiple of 64 KiB.
	img := make([]byte, 64<<10)
	copy(img[len(img)-16:], code)
	fw := filepath.Join(dir, "probe.bin")
	if err := os.WriteFile(fw, img, 0o644); err != nil {
		return fmt.Errorf("probe %s: %w", accel, err)
	}
	cmd := exec.Command(Binary, "-accel", accel, "-machine", "pc", "-nodefaults", "-no-user-config",
		"-display", "none", "-monitor", "none", "-serial", "none", "-m", "16",
		"-bios", fw, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("probe %s: %w", accel, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var cause error
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == probeExitStatus {
			return nil
		}
		return fmt.Errorf("probe %s: guest did not run: %v", accel, err)
	case <-timer.C:
		cause = errProbeTimeout
	case <-ctx.Done():
		cause = ctx.Err()
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	return fmt.Errorf("probe %s: %w", accel, cause)
}
