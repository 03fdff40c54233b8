// Package qemu starts QEMU machines for plinth's end-to-end tests: it
// captures the serial console, waits for console lines with timeouts, and
// always kills the machine. KVM is used only when a short probe shows it
// works; otherwise QEMU emulates (TCG).
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Binary is the QEMU system emulator used.
const Binary = "qemu-system-x86_64"

// OVMF is the UEFI firmware from Debian's ovmf package, code and variables
// in one image, used with Firmware "ovmf".
const OVMF = "/usr/share/ovmf/OVMF.fd"

// NIC is one network card.
type NIC struct {
	MAC string
	// Netdev is QEMU's -netdev argument, e.g. "user,bootfile=http://10.0.2.2:8080/boot.ipxe",
	// "socket,mcast=230.1.2.3:40000" (see MulticastNetdev), "vde,sock=DIR" or
	// "tap,ifname=t0,script=no,downscript=no". Without an id= option the
	// card's netdev is named n<index>.
	Netdev string
	Model  string // default virtio-net-pci
	// NoROM leaves out the card's option ROM (QEMU's iPXE), so UEFI
	// firmware netboots with its own driver: its native PXE and HTTP boot.
	NoROM bool
}

// Config describes a machine. Zero values get defaults in Start.
type Config struct {
	Name   string // default "vm"; names the console log
	Memory int    // MiB; default 512
	CPUs   int    // default 1
	Kernel string // direct kernel boot when set
	Initrd string
	Append string
	// Disks are attached as virtio disks in order; a .qcow2 name is qcow2,
	// anything else raw.
	Disks []string
	// Drives are attached after Disks, each as its own PCI device with
	// the interface and serial it names.
	Drives []Drive
	CDROM  string // an ISO on the IDE CD-ROM
	// Firmware is "" or "bios" (SeaBIOS) or "ovmf" (UEFI).
	Firmware  string
	Boot      string // -boot order, e.g. "n" for PXE, "d" for the CD-ROM
	NICs      []NIC
	ExtraArgs []string
	LogDir    string // the console is also written to LogDir/<name>.console.log
	// Wrap runs QEMU through another command that execs it in place
	// (e.g. "ip netns exec NS"), so the process QEMU runs as is still ours.
	Wrap []string
}

// Drive interfaces.
const (
	DriveVirtio = "virtio" // virtio-blk-pci: the guest's /dev/vdX, by-id virtio-SERIAL
	DriveNVMe   = "nvme"   // an NVMe controller: /dev/nvmeXn1, by-id nvme-QEMU_NVMe_Ctrl_SERIAL
	DriveAHCI   = "ahci"   // a SATA disk on its own AHCI controller: /dev/sdX
	DriveSCSI   = "scsi"   // a SCSI disk on its own virtio-scsi controller: /dev/sdX
)

// MaxSerial is the longest serial a guest sees whole: virtio-blk's ID
// and NVMe's serial number field are 20 bytes.
const MaxSerial = 20

// Drive is a disk image attached as a device of its own, with a serial
// the guest's udev names it by.
type Drive struct {
	Path      string // a .qcow2 name is qcow2, anything else raw
	Interface string // DriveVirtio ("" too), DriveNVMe, DriveAHCI or DriveSCSI
	Serial    string // at most MaxSerial bytes; NVMe requires one
}

// Check says what QEMU would misread or a guest would not see of d.
func (d Drive) Check() error {
	if strings.Contains(d.Path, ",") {
		// QEMU would read the rest as options of -drive.
		return fmt.Errorf("drive %q: a comma in the path", d.Path)
	}
	if strings.Contains(d.Serial, ",") {
		return fmt.Errorf("drive %s: serial %q has a comma", d.Path, d.Serial)
	}
	if len(d.Serial) > MaxSerial {
		return fmt.Errorf("drive %s: serial %q is longer than the %d bytes a guest sees", d.Path, d.Serial, MaxSerial)
	}
	switch d.Interface {
	case "", DriveVirtio, DriveAHCI, DriveSCSI:
	case DriveNVMe:
		if d.Serial == "" {
			return fmt.Errorf("drive %s: an NVMe drive needs a serial", d.Path)
		}
	default:
		return fmt.Errorf("drive %s: interface %q: want %s, %s, %s or %s", d.Path, d.Interface, DriveVirtio, DriveNVMe, DriveAHCI, DriveSCSI)
	}
	return nil
}

// args is the -drive and -device pair that attaches d as drive id.
func (d Drive) args(id string) ([]string, error) {
	if err := d.Check(); err != nil {
		return nil, err
	}
	var ctrl []string // a controller of its own, for a disk on a bus
	dev := "virtio-blk-pci"
	switch d.Interface {
	case DriveNVMe:
		dev = "nvme"
	case DriveAHCI:
		ctrl = []string{"-device", "ahci,id=" + id + "c"}
		dev = "ide-hd,bus=" + id + "c.0"
	case DriveSCSI:
		ctrl = []string{"-device", "virtio-scsi-pci,id=" + id + "c"}
		dev = "scsi-hd,bus=" + id + "c.0"
	}
	dev += ",drive=" + id
	if d.Serial != "" {
		dev += ",serial=" + d.Serial
	}
	return append(ctrl, "-drive", "file="+d.Path+",format="+diskFormat(d.Path)+",if=none,id="+id, "-device", dev), nil
}

// diskFormat is QEMU's format of a disk image, by its name.
func diskFormat(path string) string {
	if strings.HasSuffix(path, ".qcow2") {
		return "qcow2"
	}
	return "raw"
}

// VM is a running machine.
type VM struct {
	cfg   Config
	cmd   *exec.Cmd
	start time.Time

	mu      sync.Mutex
	console []byte
	chunks  []chunk // when each part of console arrived, for match times
	cursor  int     // where the next Expect starts reading
	marks   []Mark
	changed chan struct{} // poked on each write and on exit

	done    chan struct{} // closed when QEMU has exited and its output is read
	waitErr error
}

// withDefaults fills in a Config's zero values.
func (c Config) withDefaults() Config {
	if c.Memory == 0 {
		c.Memory = 512
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.Name == "" {
		c.Name = "vm"
	}
	return c
}

// accelArgs selects the accelerator and the CPU model machines run with.
func accelArgs(accel string) []string {
	if accel == "kvm" {
		return []string{"-accel", "kvm", "-cpu", "host"}
	}
	return []string{"-accel", "tcg", "-cpu", "max"}
}

// args builds QEMU's command line for the given accelerator.
func (c Config) args(accel string) ([]string, error) {
	a := []string{"-name", c.Name, "-nographic", "-display", "none", "-no-reboot",
		"-nodefaults", "-no-user-config", "-serial", "stdio", "-monitor", "none",
		"-m", fmt.Sprint(c.Memory), "-smp", fmt.Sprint(c.CPUs)}
	a = append(a, accelArgs(accel)...)
	switch c.Firmware {
	case "", "bios":
	case "ovmf":
		if _, err := os.Stat(OVMF); err != nil {
			return nil, fmt.Errorf("firmware ovmf: %w (apt-get install ovmf)", err)
		}
		a = append(a, "-bios", OVMF)
	default:
		return nil, fmt.Errorf("firmware %q: want bios or ovmf", c.Firmware)
	}
	for _, kv := range [][2]string{{"-kernel", c.Kernel}, {"-initrd", c.Initrd}, {"-append", c.Append}, {"-boot", c.Boot}} {
		if kv[1] != "" {
			a = append(a, kv[0], kv[1])
		}
	}
	for _, d := range c.Disks {
		if strings.Contains(d, ",") {
			// QEMU would read the rest as options of -drive.
			return nil, fmt.Errorf("disk %q: a comma in the path", d)
		}
		a = append(a, "-drive", "file="+d+",format="+diskFormat(d)+",if=virtio")
	}
	for i, d := range c.Drives {
		da, err := d.args(fmt.Sprintf("d%d", i))
		if err != nil {
			return nil, err
		}
		a = append(a, da...)
	}
	if c.CDROM != "" {
		if strings.Contains(c.CDROM, ",") {
			return nil, fmt.Errorf("cdrom %q: a comma in the path", c.CDROM)
		}
		a = append(a, "-drive", "file="+c.CDROM+",media=cdrom,readonly=on,if=ide,index=2")
	}
	for i, n := range c.NICs {
		model := n.Model
		if model == "" {
			model = "virtio-net-pci"
		}
		netdev, id := netdevWithID(n.Netdev, fmt.Sprintf("n%d", i))
		a = append(a, "-netdev", netdev)
		dev := model + ",netdev=" + id
		if n.MAC != "" {
			dev += ",mac=" + n.MAC
		}
		if n.NoROM {
			dev += ",romfile="
		}
		if c.Boot == "n" {
			// Without a bootindex only the first card's ROM is tried.
			dev += fmt.Sprintf(",bootindex=%d", i+1)
		}
		a = append(a, "-device", dev)
	}
	return append(a, c.ExtraArgs...), nil
}

// netdevWithID returns the -netdev argument with an id and that id: the
// caller's id= when it has one, otherwise def appended.
func netdevWithID(netdev, def string) (string, string) {
	for _, opt := range strings.Split(netdev, ",") {
		if id, ok := strings.CutPrefix(opt, "id="); ok {
			return netdev, id
		}
	}
	return netdev + ",id=" + def, def
}

// Start boots a machine. The machine is killed when ctx is done and, with a
// testing.TB, when the test ends (its console tail is logged if the test
// failed). t may be nil for callers outside tests, which must Close.
func Start(ctx context.Context, t testing.TB, c Config) (*VM, error) {
	if _, err := exec.LookPath(Binary); err != nil {
		return nil, fmt.Errorf("start qemu: %w (apt-get install qemu-system-x86)", err)
	}
	c = c.withDefaults()
	args, err := c.args(Accel(ctx))
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", c.Name, err)
	}
	argv := append(append([]string{}, c.Wrap...), Binary)
	argv = append(argv, args...)
	v := &VM{cfg: c, changed: make(chan struct{}, 1), done: make(chan struct{})}
	v.cmd = exec.Command(argv[0], argv[1:]...)
	// Its own process group so Close can kill QEMU and anything Wrap left
	// around it; Pdeathsig so a test binary that dies (a panic on timeout)
	// takes its machines with it.
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var out io.Writer = writerFunc(v.write)
	var logFile *os.File
	if c.LogDir != "" {
		if err := os.MkdirAll(c.LogDir, 0o755); err != nil {
			return nil, fmt.Errorf("start %s: %w", c.Name, err)
		}
		logFile, err = os.Create(filepath.Join(c.LogDir, c.Name+".console.log"))
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", c.Name, err)
		}
		out = io.MultiWriter(out, logFile)
	}
	// One writer for both: exec then calls it from one goroutine at a time.
	v.cmd.Stdout, v.cmd.Stderr = out, out
	// Set before Start: the output goroutines read it from the first byte.
	v.start = time.Now()
	if err := v.cmd.Start(); err != nil {
		if logFile != nil {
			logFile.Close()
		}
		return nil, fmt.Errorf("start %s: %w", c.Name, err)
	}
	go func() {
		// Wait returns once QEMU exited and all its output was copied.
		err := v.cmd.Wait()
		if logFile != nil {
			logFile.Close()
		}
		v.mu.Lock()
		v.waitErr = err
		v.mu.Unlock()
		close(v.done)
	}()
	if t != nil {
		t.Cleanup(func() {
			v.Close()
			if t.Failed() {
				t.Logf("console of %s (last lines):\n%s", c.Name, v.Tail(60))
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

// Name is the machine's name from its Config.
func (v *VM) Name() string { return v.cfg.Name }

// Started is when QEMU was started.
func (v *VM) Started() time.Time { return v.start }

// Pid is QEMU's process id (also its process group id).
func (v *VM) Pid() int { return v.cmd.Process.Pid }

// Args is QEMU's command line, for logs.
func (v *VM) Args() []string { return append([]string(nil), v.cmd.Args...) }

// Exited reports whether QEMU has exited.
func (v *VM) Exited() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

// Wait waits for QEMU to exit and returns how it exited: nil after the guest
// powered off (-no-reboot turns a reboot into an exit too).
func (v *VM) Wait(ctx context.Context) error {
	select {
	case <-v.done:
		return v.exitErr()
	case <-ctx.Done():
		return fmt.Errorf("wait for %s to exit: %w after %s", v.cfg.Name, ctx.Err(), time.Since(v.start).Round(time.Millisecond))
	}
}

func (v *VM) exitErr() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.waitErr != nil {
		return fmt.Errorf("qemu %s: %w", v.cfg.Name, v.waitErr)
	}
	return nil
}

// ErrCloseTimeout is returned by Close when QEMU survived SIGKILL for
// closeGrace (a process stuck in the kernel, as with a hung KVM).
var ErrCloseTimeout = errors.New("qemu still running after SIGKILL")

const closeGrace = 10 * time.Second

// Close kills QEMU's whole process group and waits for it to be reaped. It
// is safe to call more than once and after QEMU exited.
func (v *VM) Close() error {
	if v.Exited() {
		return nil
	}
	_ = syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-v.done:
		return nil
	case <-time.After(closeGrace):
		return fmt.Errorf("close %s (pid %d): %w", v.cfg.Name, v.cmd.Process.Pid, ErrCloseTimeout)
	}
}
