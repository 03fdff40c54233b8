package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
)

func kernelFixture(t *testing.T) string {
	t.Helper()
	fx := os.Getenv("PLINTH_FIXTURES")
	if fx == "" {
		home, _ := os.UserHomeDir()
		fx = filepath.Join(home, ".cache", "plinth", "fixtures")
	}
	m, _ := filepath.Glob(filepath.Join(fx, "kernel", "boot", "vmlinuz-*-amd64"))
	if len(m) == 0 || Available() != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("no kernel fixture or no QEMU (make fixtures): %v", Available())
		}
		t.Skip("no kernel fixture or QEMU: run make fixtures")
	}
	return m[0]
}

// helloInitrd compiles testdata/hello as /init into a newc archive.
func helloInitrd(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "init")
	cmd := exec.Command("go", "build", "-o", bin, "./testdata/hello")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build hello: %v\n%s", err, out)
	}
	body, _ := os.ReadFile(bin)
	out := filepath.Join(dir, "initrd.cpio")
	f, _ := os.Create(out)
	w := cpio.NewWriter(f)
	for _, d := range []string{"dev"} {
		w.WriteHeader(&cpio.Header{Name: d, Mode: cpio.TypeDir | 0o755})
	}
	w.WriteHeader(&cpio.Header{Name: "init", Mode: cpio.TypeReg | 0o755, Size: int64(len(body))})
	w.Write(body)
	w.Close()
	f.Close()
	return out
}

func TestAccelProbeAnswersInTime(t *testing.T) {
	if Available() != nil {
		t.Skip("no qemu")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if a := Accel(ctx); a != "kvm" && a != "tcg" {
		t.Fatalf("Accel = %q", a)
	}
	if ctx.Err() != nil {
		t.Fatal("the probe outlived its deadline")
	}
}

func TestBootPrintsMarkerAndPowersOff(t *testing.T) {
	k := kernelFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm, err := Start(ctx, t, Config{Name: "hello", Kernel: k, Initrd: helloInitrd(t), Append: "console=ttyS0 panic=-1 quiet", Memory: 256, LogDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(ctx, regexp.MustCompile(`HARNESS-MARKER (\w+)`)); err != nil {
		t.Fatal(err)
	}
	t.Logf("figure: kernel to /init marker in %.1fs (%s)", vm.Since().Seconds(), Accel(ctx))
	if err := vm.Wait(ctx); err != nil {
		t.Fatalf("QEMU did not exit cleanly after power-off: %v", err)
	}
}

func TestExpectTimeoutShowsConsoleAndCloseKills(t *testing.T) {
	k := kernelFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm, err := Start(ctx, t, Config{Name: "hold", Kernel: k, Initrd: helloInitrd(t), Append: "console=ttyS0 panic=-1 HOLD=1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(ctx, regexp.MustCompile(`HARNESS-MARKER`)); err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	_, err = vm.Expect(short, regexp.MustCompile(`never printed`))
	if err == nil || !strings.Contains(err.Error(), "HARNESS-MARKER") {
		t.Fatalf("timeout error lacks the console tail: %v", err)
	}
	pid := vm.Pid()
	vm.Close()
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("qemu %d still running after Close", pid)
	}
}
