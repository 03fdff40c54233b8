//go:build linux

package stage1

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/u-root/u-root/pkg/mount"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Linux is the real machine: every system call stage 1 makes.
type Linux struct {
	// LinkWait bounds the wait for the boot NIC to appear; default 20s.
	LinkWait time.Duration
}

var (
	_ Mounter      = Linux{}
	_ ModuleLoader = Linux{}
	_ Network      = Linux{}
	_ Kernel       = Linux{}
	_ Rescuer      = Linux{}
)

// MountBasics mounts the pseudo file systems; one already there is kept.
func (Linux) MountBasics() error {
	for _, m := range []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	return nil
}

// Reboot syncs and restarts the machine.
func (Linux) Reboot() error {
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}

// Console opens /dev/console for writing.
func (Linux) Console() (io.Writer, error) {
	return os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0)
}

// Cmdline returns the kernel command line.
func (Linux) Cmdline() (string, error) {
	b, err := os.ReadFile("/proc/cmdline")
	return strings.TrimSpace(string(b)), err
}

// Self returns the running executable: /proc/self/exe, not argv[0], which
// is a busybox symlink name.
func (Linux) Self() ([]byte, error) { return os.ReadFile("/proc/self/exe") }

// LoadModule inserts a module file with finit_module and its parameters
// ("name=value ..."); one already loaded (EEXIST) is fine.
func (Linux) LoadModule(path, params string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), params, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("finit_module: %w", err)
	}
	return nil
}

// Up picks the boot NIC and configures it with DHCPv4 (u-root's client),
// writing /etc/resolv.conf of the initramfs for name lookups.
func (l Linux) Up(ctx context.Context, iface string) (*NetInfo, error) {
	link, states, err := l.findLink(ctx, iface)
	if err != nil {
		return nil, err
	}
	var nics []NIC
	for _, st := range states {
		if st.Physical {
			nics = append(nics, NIC{Name: st.Name, MAC: st.MAC})
		}
	}
	name := link.Attrs().Name
	cfg := dhclient.Config{Timeout: 4 * time.Second, Retries: 3, LogLevel: dhclient.LogSummary}
	last := errors.New("no DHCP answer")
	for r := range dhclient.SendRequests(ctx, []netlink.Link{link}, true, false, cfg, 10*time.Second) {
		if r.Err != nil {
			last = r.Err
			continue
		}
		p, ok := r.Lease.(*dhclient.Packet4)
		if !ok {
			continue
		}
		if err := p.Configure(); err != nil {
			return nil, fmt.Errorf("configure %s: %w", name, err)
		}
		n := &NetInfo{Iface: name, MAC: link.Attrs().HardwareAddr.String(), DHCP: true, Domain: p.P.DomainName(), NICs: nics}
		if ipn := p.Lease(); ipn != nil {
			n.Address = ipn.String()
		}
		if rs := p.P.Router(); len(rs) > 0 {
			n.Gateway = rs[0].String()
		}
		ns, search, dom := p.GatherDNSSettings()
		for _, ip := range ns {
			n.DNS = append(n.DNS, ip.String())
		}
		if len(ns) > 0 {
			if err := dhclient.WriteDNSSettings(ns, search, dom, "/etc/resolv.conf"); err != nil {
				return nil, fmt.Errorf("resolv.conf: %w", err)
			}
		}
		return n, nil
	}
	return nil, fmt.Errorf("dhcp on %s: %w", name, last)
}

// findLink brings every NIC up (carrier shows only on an up link) and
// waits for ChooseLink to pick one; it returns the links it saw too.
func (l Linux) findLink(ctx context.Context, iface string) (netlink.Link, []LinkState, error) {
	wait := l.LinkWait
	if wait <= 0 {
		wait = 20 * time.Second
	}
	deadline := time.Now().Add(wait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, nil, fmt.Errorf("list links: %w", err)
		}
		var states []LinkState
		for _, k := range links {
			a := k.Attrs()
			if a.Flags&net.FlagLoopback != 0 {
				continue
			}
			physical := k.Type() == "device"
			if physical && a.Flags&net.FlagUp == 0 {
				_ = netlink.LinkSetUp(k)
			}
			states = append(states, LinkState{Name: a.Name, MAC: a.HardwareAddr.String(), Physical: physical, Carrier: carrier(a.Name)})
		}
		if c, ok := ChooseLink(states, iface); ok {
			link, err := netlink.LinkByName(c.Name)
			return link, states, err
		}
		if time.Now().After(deadline) {
			what := "a NIC with carrier"
			if iface != "" {
				what = "NIC " + iface
			}
			return nil, nil, fmt.Errorf("no %s after %s: %s", what, wait, describeLinks(states))
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return nil, nil, err
		}
	}
}

// carrier reads /sys/class/net/NAME/carrier (EINVAL while the link is down).
func carrier(name string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/class/net", name, "carrier"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// MountRoot attaches squashfs to a loop device read-only, mounts it at
// runDir/lower, a tmpfs at runDir/rw for the overlay's upper and work
// dirs, and the overlay at newRoot.
func (Linux) MountRoot(squashfs, runDir, newRoot string) error {
	lower, rw := filepath.Join(runDir, "lower"), filepath.Join(runDir, "rw")
	for _, d := range []string{lower, rw, newRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	dev, err := AttachLoop(squashfs)
	if err != nil {
		return err
	}
	err = unix.Mount(dev.Name(), lower, "squashfs", unix.MS_RDONLY|unix.MS_NODEV, "")
	// Closed only now: with autoclear, the last close of an unmounted loop
	// device detaches it.
	dev.Close()
	if err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", dev.Name(), squashfs, lower, err)
	}
	if err := unix.Mount("tmpfs", rw, "tmpfs", unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", rw, err)
	}
	upper, work := filepath.Join(rw, "upper"), filepath.Join(rw, "work")
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", newRoot, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay on %s: %w", newRoot, err)
	}
	return nil
}

// AttachLoop attaches file to a free loop device, read-only and
// autoclearing, and returns the open device: the caller mounts it, then
// closes it (the mount keeps it attached; unmounting frees it). It uses
// LOOP_CONFIGURE (Linux 5.8) and falls back to LOOP_SET_FD +
// LOOP_SET_STATUS64.
func AttachLoop(file string) (*os.File, error) {
	f, err := os.OpenFile(file, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop: %w", err)
	}
	defer ctl.Close()
	// Another process may take the free device between GET_FREE and the
	// attach (EBUSY): ask again.
	for try := 0; try < 10; try++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("loop: get free device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		l, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			if err = attach(l, f); err != nil {
				l.Close()
			}
		}
		if errors.Is(err, unix.EBUSY) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("loop: attach %s to %s: %w", file, dev, err)
		}
		return l, nil
	}
	return nil, fmt.Errorf("loop: attach %s: every free device was taken first", file)
}

func attach(l *os.File, f *os.File) error {
	fd := int(f.Fd())
	info := unix.LoopInfo64{Flags: unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR}
	// What losetup shows as the backing file; the kernel keeps 63 bytes.
	copy(info.File_name[:len(info.File_name)-1], f.Name())
	cfg := unix.LoopConfig{Fd: uint32(fd), Info: info}
	err := unix.IoctlLoopConfigure(int(l.Fd()), &cfg)
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
		return err
	}
	// A kernel before 5.8.
	if err := unix.IoctlSetInt(int(l.Fd()), unix.LOOP_SET_FD, fd); err != nil {
		return err
	}
	if err := unix.IoctlLoopSetStatus64(int(l.Fd()), &info); err != nil {
		_ = unix.IoctlSetInt(int(l.Fd()), unix.LOOP_CLR_FD, 0)
		return err
	}
	return nil
}

// SwitchRoot moves /dev /proc /sys /run into newRoot, makes it /, deletes
// the initramfs's files (freeing its memory) and execs init.
func (Linux) SwitchRoot(newRoot, init string) error {
	return mount.SwitchRoot(newRoot, init)
}

// Shell runs the first shell the initramfs has on the console.
func (Linux) Shell(ctx context.Context) error {
	for _, sh := range []string{"/bbin/gosh", "/bbin/sh", "/bin/sh"} {
		if _, err := os.Stat(sh); err != nil {
			continue
		}
		con, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer con.Close()
		cmd := exec.CommandContext(ctx, sh)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = con, con, con
		cmd.SysProcAttr = &unix.SysProcAttr{Setsid: true, Setctty: true}
		_ = cmd.Run() // its exit status is the operator's business
		return nil
	}
	return errors.New("no /bbin/gosh, /bbin/sh or /bin/sh in this initramfs (build with rescue commands)")
}
