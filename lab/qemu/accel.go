package qemu

import (
	"bytes"
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

// ProbeTimeout bounds each of the KVM probe's two guests. A working KVM
// runs the firmware guest in well under a second and boots a kernel to its
// panic in one or two; on hosts where KVM hangs the probe is killed.
const ProbeTimeout = 8 * time.Second

var (
	accelOnce sync.Once
	accel     string

	// ProbeKernel is a Linux kernel for the probe's second guest; when
	// empty, PLINTH_QEMU_PROBE_KERNEL, then the kernel fixture, is used.
	// Set it before the first Start or Accel.
	ProbeKernel string
)

// Accel returns "kvm" when both probe guests ran to completion under KVM
// within ProbeTimeout each, else "tcg": first a firmware image that exits
// through an I/O port (a KVM that hangs outright), then a Linux kernel
// booted to its "no root" panic (a KVM that runs real-mode code but hangs
// once the kernel leaves it, as seen on this project's CI machines). With no
// kernel to probe with, the answer is "tcg": KVM is never assumed. The
// answer is computed once per process. PLINTH_QEMU_ACCEL=tcg|kvm overrides
// the probe.
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
			err = probeKernel(ctx, "kvm", probeKernelPath(), ProbeTimeout)
		}
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
// QEMU to report the guest's exit.
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
	return runProbe(ctx, accel, cmd, timeout, func(err error) error {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == probeExitStatus {
			return nil
		}
		return fmt.Errorf("probe %s: guest did not run: %v", accel, err)
	})
}

// runProbe runs a probe guest for at most timeout and judges its exit with
// exited. QEMU is killed on timeout; if even SIGKILL does not end it soon (a
// process stuck in KVM), runProbe returns anyway and leaves a goroutine to
// reap it.
func runProbe(ctx context.Context, accel string, cmd *exec.Cmd, timeout time.Duration, exited func(error) error) error {
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
		return exited(err)
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

// probeKernelPath is the kernel the probe boots: ProbeKernel,
// PLINTH_QEMU_PROBE_KERNEL, else the kernel fixture ("" when none).
func probeKernelPath() string {
	if ProbeKernel != "" {
		return ProbeKernel
	}
	if k := os.Getenv("PLINTH_QEMU_PROBE_KERNEL"); k != "" {
		return k
	}
	k, _ := KernelFixture()
	return k
}

// probeKernel boots kernel under accel with no root file system and waits
// at most timeout for its panic ("VFS: Unable to mount root fs"), after
// which panic=-1 reboots and -no-reboot ends QEMU. Reaching the panic means
// the guest ran the kernel in long mode with interrupts and timers, which
// is what a netbooted machine needs of the accelerator.
func probeKernel(ctx context.Context, accel, kernel string, timeout time.Duration) error {
	if kernel == "" {
		return fmt.Errorf("probe %s: no kernel to boot (set PLINTH_QEMU_PROBE_KERNEL or run make fixtures)", accel)
	}
	dir, err := os.MkdirTemp("", "plinth-qemu-probe-")
	if err != nil {
		return fmt.Errorf("probe %s: %w", accel, err)
	}
	defer os.RemoveAll(dir)
	console := filepath.Join(dir, "console")
	// The accelerator and CPU model the machines will run with.
	a := append(accelArgs(accel), "-machine", "pc", "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
		"-m", "256", "-no-reboot", "-serial", "file:"+console,
		"-kernel", kernel, "-append", "console=ttyS0 panic=-1 loglevel=4")
	return runProbe(ctx, accel, exec.Command(Binary, a...), timeout, func(err error) error {
		b, _ := os.ReadFile(console)
		if !bytes.Contains(b, []byte("Kernel panic")) {
			return fmt.Errorf("probe %s: kernel %s ended without its panic (%v)", accel, kernel, err)
		}
		return nil
	})
}
