package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
)

var (
	helloOnce sync.Once
	helloBin  string
	helloErr  error
)

// hello compiles testdata/hello once per test binary.
func hello(t *testing.T) []byte {
	t.Helper()
	helloOnce.Do(func() {
		dir, err := os.MkdirTemp("", "plinth-qemu-hello-")
		if err != nil {
			helloErr = err
			return
		}
		helloBin = filepath.Join(dir, "init")
		cmd := exec.Command("go", "build", "-trimpath", "-o", helloBin, "./testdata/hello")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			helloErr = fmt.Errorf("build hello: %v\n%s", err, out)
		}
	})
	if helloErr != nil {
		t.Fatal(helloErr)
	}
	body, err := os.ReadFile(helloBin)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func TestMain(m *testing.M) {
	code := m.Run()
	if helloBin != "" {
		os.RemoveAll(filepath.Dir(helloBin))
	}
	os.Exit(code)
}

// virtioNet is the load order of virtio-net and what it needs in the
// Debian kernel, where all of virtio is modular.
var virtioNet = []string{
	"kernel/drivers/virtio/virtio_ring.ko",
	"kernel/drivers/virtio/virtio.ko",
	"kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
	"kernel/drivers/virtio/virtio_pci_modern_dev.ko",
	"kernel/drivers/virtio/virtio_pci.ko",
	"kernel/net/core/failover.ko",
	"kernel/drivers/net/net_failover.ko",
	"kernel/drivers/net/virtio_net.ko",
}

// initrd packs the hello program as /init into a newc archive, with the
// given modules of the kernel fixture under /m and their list in /modules.
func initrd(t *testing.T, kernel string, modules []string) string {
	t.Helper()
	var files []struct {
		name string
		body []byte
	}
	add := func(name string, body []byte) {
		files = append(files, struct {
			name string
			body []byte
		}{name, body})
	}
	add("init", hello(t))
	if len(modules) > 0 {
		ver := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
		modDir := filepath.Join(filepath.Dir(filepath.Dir(kernel)), "lib", "modules", ver)
		var list []string
		for i, m := range modules {
			body, err := os.ReadFile(filepath.Join(modDir, m))
			if err != nil {
				t.Fatalf("kernel fixture lacks a module: %v", err)
			}
			name := fmt.Sprintf("m/%d.ko", i)
			add(name, body)
			list = append(list, "/"+name)
		}
		add("modules", []byte(strings.Join(list, "\n")+"\n"))
	}
	out := filepath.Join(t.TempDir(), "initrd.cpio")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	w := cpio.NewWriter(f)
	for _, d := range []string{"dev", "m"} {
		if err := w.WriteHeader(&cpio.Header{Name: d, Mode: cpio.TypeDir | 0o755}); err != nil {
			t.Fatal(err)
		}
	}
	for _, fl := range files {
		if err := w.WriteHeader(&cpio.Header{Name: fl.name, Mode: cpio.TypeReg | 0o755, Size: int64(len(fl.body))}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(fl.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

// boot starts the fixture kernel with the hello /init; extra goes on the
// kernel command line (read by /init as environment).
func boot(t *testing.T, ctx context.Context, name, extra string, c Config) *VM {
	t.Helper()
	Require(t)
	k, err := KernelFixture()
	if err != nil {
		t.Fatal(err)
	}
	c.Name, c.Kernel = name, k
	if c.Initrd == "" {
		c.Initrd = initrd(t, k, nil)
	}
	c.Append = strings.TrimSpace("console=ttyS0 panic=-1 quiet " + extra)
	if c.Memory == 0 {
		c.Memory = 256
	}
	vm, err := Start(ctx, t, c)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

var marker = regexp.MustCompile(`HARNESS-MARKER (\w+)`)

func TestProbeSucceedsWhenGuestRunsToItsExit(t *testing.T) {
	Require(t)
	if err := probe(context.Background(), "tcg", exitCode, 30*time.Second); err != nil {
		t.Fatalf("a guest that exits under TCG was not detected: %v", err)
	}
}

func TestProbeKillsAHungGuestAtItsTimeout(t *testing.T) {
	Require(t)
	start := time.Now()
	err := probe(context.Background(), "tcg", spinCode, time.Second)
	took := time.Since(start)
	if !errors.Is(err, errProbeTimeout) {
		t.Fatalf("a spinning guest gave %v, want a timeout", err)
	}
	// The probe returns after its timeout plus the kill, never later.
	if took < time.Second || took > 4*time.Second {
		t.Fatalf("probe with a 1s timeout returned after %s", took)
	}
}

func TestProbeKernelBootsToItsPanic(t *testing.T) {
	Require(t)
	k, _ := KernelFixture()
	if err := probeKernel(context.Background(), "tcg", k, 2*time.Minute); err != nil {
		t.Fatalf("the fixture kernel under TCG: %v", err)
	}
	// Something that is not a kernel never counts as a working accelerator.
	bad := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(bad, bytes.Repeat([]byte{0xeb, 0xfe}, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := probeKernel(context.Background(), "tcg", bad, 10*time.Second); err == nil {
		t.Fatal("a file that is not a kernel passed the kernel probe")
	}
	if err := probeKernel(context.Background(), "tcg", "", time.Second); err == nil {
		t.Fatal("no kernel passed the kernel probe")
	}
}

func TestAccelAnswersWithinTheProbeTimeout(t *testing.T) {
	Require(t)
	start := time.Now()
	a := Accel(context.Background())
	if a != "kvm" && a != "tcg" {
		t.Fatalf("Accel = %q", a)
	}
	if took := time.Since(start); took > 2*ProbeTimeout+5*time.Second {
		t.Fatalf("Accel took %s, longer than its probe timeout %s", took, ProbeTimeout)
	}
	t.Logf("accelerator here: %s", a)
}

func TestBootPrintsMarkerAndPowersOff(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	logs := t.TempDir()
	vm := boot(t, ctx, "hello", "", Config{LogDir: logs})
	m, err := vm.Expect(ctx, marker)
	if err != nil {
		t.Fatal(err)
	}
	if m[1] != "hello" {
		t.Errorf("submatch %q, want hello", m[1])
	}
	t.Logf("figure: QEMU start to /init marker %.1fs (%s)", vm.Since().Seconds(), Accel(ctx))
	if err := vm.Wait(ctx); err != nil {
		t.Fatalf("QEMU did not exit cleanly after the guest powered off: %v", err)
	}
	t.Logf("figure: QEMU start to exit after power-off %.1fs", vm.Uptime().Seconds())
	logged, err := os.ReadFile(filepath.Join(logs, "hello.console.log"))
	if err != nil {
		t.Fatal(err)
	}
	if string(logged) != vm.Console() {
		t.Errorf("console log (%d bytes) differs from the in-memory console (%d bytes)", len(logged), len(vm.Console()))
	}
}

func TestExpectFailsFastWhenQEMUExits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm := boot(t, ctx, "exits", "", Config{})
	_, err := vm.Expect(ctx, regexp.MustCompile(`never printed`))
	if !errors.Is(err, ErrExited) {
		t.Fatalf("Expect on a machine that powered off: %v, want ErrExited", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Expect waited for its context instead of QEMU's exit")
	}
	if !strings.Contains(err.Error(), "HARNESS-MARKER") {
		t.Errorf("error lacks the console tail: %v", err)
	}
}

func TestHeldMachine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm := boot(t, ctx, "hold", "HOLD=1", Config{})
	if _, err := vm.Expect(ctx, marker); err != nil {
		t.Fatal(err)
	}

	t.Run("ExpectTimeoutErrorHasConsoleTailAndWait", func(t *testing.T) {
		short, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := vm.Expect(short, regexp.MustCompile(`never printed`))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want a deadline error", err)
		}
		for _, want := range []string{"HARNESS-MARKER hello", "waited ", "never printed", "since QEMU start"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("timeout error lacks %q:\n%v", want, err)
			}
		}
	})

	t.Run("ExpectResumesAfterPreviousMatchButFromStartSeesAll", func(t *testing.T) {
		short, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if _, err := vm.Expect(short, marker); err == nil {
			t.Fatal("Expect matched text before the previous match")
		}
		m, err := vm.ExpectFromStart(ctx, marker)
		if err != nil || m[1] != "hello" {
			t.Fatalf("ExpectFromStart = %q, %v", m, err)
		}
		marks := vm.Marks()
		if len(marks) != 2 || marks[0].At != marks[1].At || marks[0].At <= 0 {
			t.Errorf("both matches of one line should carry its arrival time: %+v", marks)
		}
	})

	t.Run("CloseKillsQEMU", func(t *testing.T) {
		pid := vm.Pid()
		if err := syscall.Kill(pid, 0); err != nil {
			t.Fatalf("qemu %d not running before Close: %v", pid, err)
		}
		if err := vm.Close(); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Fatalf("qemu %d still there after Close: %v", pid, err)
		}
		if !vm.Exited() || vm.Wait(ctx) == nil {
			t.Fatal("a killed QEMU should report a non-nil exit")
		}
	})
}

func TestExpectWaitsForTheRestOfALine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm := boot(t, ctx, "partial", "PARTIAL=1", Config{})
	m, err := vm.Expect(ctx, regexp.MustCompile(`PARTIAL host=(\S+)`))
	if err != nil {
		t.Fatal(err)
	}
	if m[1] != "abcdef" {
		t.Fatalf("matched %q: half a line written in two pieces", m[1])
	}
}

func TestExpectCancelledContextKillsMachine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vmCtx, stop := context.WithCancel(ctx)
	vm := boot(t, vmCtx, "cancel", "HOLD=1", Config{})
	if _, err := vm.Expect(ctx, marker); err != nil {
		t.Fatal(err)
	}
	stop()
	if err := vm.Wait(ctx); err == nil {
		t.Fatal("QEMU exited cleanly, want killed")
	}
	if err := syscall.Kill(vm.Pid(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("qemu %d still there after its context ended: %v", vm.Pid(), err)
	}
}

func TestMulticastSegmentCarriesFramesBetweenMachines(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	Require(t)
	k, err := KernelFixture()
	if err != nil {
		t.Fatal(err)
	}
	rd := initrd(t, k, virtioNet)
	seg, err := MulticastNetdev(t.Name())
	if err != nil {
		t.Fatal(err)
	}
	token := fmt.Sprint(time.Now().UnixNano())
	recv := boot(t, ctx, "recv", "NET=recv TOKEN="+token, Config{Initrd: rd, NICs: []NIC{{MAC: "52:54:00:00:00:01", Netdev: seg}}})
	send := boot(t, ctx, "send", "HOLD=1 NET=send TOKEN="+token, Config{Initrd: rd, NICs: []NIC{{MAC: "52:54:00:00:00:02", Netdev: seg}}})
	if _, err := send.Expect(ctx, regexp.MustCompile(`NET-SENDING`)); err != nil {
		t.Fatal(err)
	}
	m, err := recv.Expect(ctx, regexp.MustCompile(`NET-(GOT (\S+)|ERROR.*)`))
	if err != nil {
		t.Fatal(err)
	}
	if m[2] != token {
		t.Fatalf("receiver: %q, want the sender's token %s", m[0], token)
	}
	t.Logf("figure: frame received %.1fs after the receiver's QEMU start (%s)", recv.Since().Seconds(), Accel(ctx))
}

func TestMulticastNetdevIsStablePerSegmentAndDistinctAcross(t *testing.T) {
	a1, err := MulticastNetdev("seg-a")
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := MulticastNetdev("seg-a")
	b, _ := MulticastNetdev("seg-b")
	if a1 != a2 {
		t.Errorf("one segment, two netdevs: %q %q", a1, a2)
	}
	if a1 == b {
		t.Errorf("two segments share %q", a1)
	}
	if !regexp.MustCompile(`^socket,mcast=230\.\d+\.\d+\.\d+:\d+,localaddr=127\.0\.0\.1$`).MatchString(a1) {
		t.Errorf("netdev %q", a1)
	}
}

func TestConfigArgs(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		want    []string // consecutive arguments that must appear
		wantErr string
	}{
		{name: "tcg by default flags", cfg: Config{}, want: []string{"-accel", "tcg", "-cpu", "max"}},
		{name: "direct kernel boot", cfg: Config{Kernel: "k", Initrd: "i", Append: "console=ttyS0"},
			want: []string{"-kernel", "k", "-initrd", "i", "-append", "console=ttyS0"}},
		{name: "ovmf firmware", cfg: Config{Firmware: "ovmf"}, want: []string{"-bios", OVMF}},
		{name: "unknown firmware", cfg: Config{Firmware: "coreboot"}, wantErr: `firmware "coreboot"`},
		{name: "raw and qcow2 disks", cfg: Config{Disks: []string{"a.img", "b.qcow2"}},
			want: []string{"-drive", "file=a.img,format=raw,if=virtio", "-drive", "file=b.qcow2,format=qcow2,if=virtio"}},
		{name: "comma in a disk path", cfg: Config{Disks: []string{"a,b.img"}}, wantErr: "comma"},
		{name: "virtio-blk drive with a serial", cfg: Config{Disks: []string{"boot.img"}, Drives: []Drive{{Path: "s.raw", Interface: DriveVirtio, Serial: "plinth-etcd-1"}}},
			want: []string{"-drive", "file=boot.img,format=raw,if=virtio",
				"-drive", "file=s.raw,format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0,serial=plinth-etcd-1"}},
		{name: "nvme drive with a serial", cfg: Config{Drives: []Drive{{Path: "a.raw"}, {Path: "b.qcow2", Interface: DriveNVMe, Serial: "S1"}}},
			want: []string{"-drive", "file=a.raw,format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0",
				"-drive", "file=b.qcow2,format=qcow2,if=none,id=d1", "-device", "nvme,drive=d1,serial=S1"}},
		{name: "comma in a drive path", cfg: Config{Drives: []Drive{{Path: "a,b.raw"}}}, wantErr: "comma in the path"},
		{name: "comma in a serial", cfg: Config{Drives: []Drive{{Path: "a.raw", Serial: "x,id=y"}}}, wantErr: "has a comma"},
		{name: "serial longer than a guest sees", cfg: Config{Drives: []Drive{{Path: "a.raw", Serial: "123456789012345678901"}}}, wantErr: "longer than the 20 bytes"},
		{name: "nvme without a serial", cfg: Config{Drives: []Drive{{Path: "a.raw", Interface: DriveNVMe}}}, wantErr: "needs a serial"},
		{name: "unknown drive interface", cfg: Config{Drives: []Drive{{Path: "a.raw", Interface: "ide"}}}, wantErr: `interface "ide"`},
		{name: "ahci and virtio-scsi drives on controllers of their own", cfg: Config{Drives: []Drive{{Path: "a.raw", Interface: DriveAHCI}, {Path: "b.raw", Interface: DriveSCSI}}},
			want: []string{"-device", "ahci,id=d0c", "-drive", "file=a.raw,format=raw,if=none,id=d0", "-device", "ide-hd,bus=d0c.0,drive=d0",
				"-device", "virtio-scsi-pci,id=d1c", "-drive", "file=b.raw,format=raw,if=none,id=d1", "-device", "scsi-hd,bus=d1c.0,drive=d1"}},
		{name: "cdrom boot", cfg: Config{CDROM: "x.iso", Boot: "d"},
			want: []string{"-boot", "d", "-drive", "file=x.iso,media=cdrom,readonly=on,if=ide,index=2"}},
		{name: "a nic without its option rom", cfg: Config{NICs: []NIC{{Netdev: "user", NoROM: true}}},
			want: []string{"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile="}},
		{name: "pxe nics get ids and boot order", cfg: Config{Boot: "n", NICs: []NIC{{MAC: "52:54:00:00:00:01", Netdev: "user"}, {Netdev: "socket,id=lan,mcast=230.0.0.1:1234", Model: "e1000"}}},
			want: []string{"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,bootindex=1",
				"-netdev", "socket,id=lan,mcast=230.0.0.1:1234", "-device", "e1000,netdev=lan,bootindex=2"}},
		{name: "extra args last", cfg: Config{ExtraArgs: []string{"-s"}}, want: []string{"-s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.withDefaults().args("tcg")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !containsRun(got, tt.want) {
				t.Fatalf("args %q lack %q", got, tt.want)
			}
			for _, must := range []string{"-nographic", "-no-reboot", "-nodefaults"} {
				if !slices.Contains(got, must) {
					t.Errorf("args lack %s", must)
				}
			}
			if x := tt.cfg.ExtraArgs; len(x) > 0 && !slices.Equal(got[len(got)-len(x):], x) {
				t.Errorf("extra args not last: %q", got)
			}
		})
	}
}

func TestConfigArgsUsesHostCPUUnderKVM(t *testing.T) {
	got, err := Config{}.withDefaults().args("kvm")
	if err != nil {
		t.Fatal(err)
	}
	if !containsRun(got, []string{"-accel", "kvm", "-cpu", "host"}) {
		t.Fatalf("args %q", got)
	}
}

// containsRun reports whether want appears in s as consecutive elements.
func containsRun(s, want []string) bool {
	for i := 0; i+len(want) <= len(s); i++ {
		if slices.Equal(s[i:i+len(want)], want) {
			return true
		}
	}
	return false
}
