//go:build linux

package stage1

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/u-root/u-root/pkg/mount"
	"github.com/u-root/u-root/pkg/mount/loop"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Linux is the System of a real machine.
type Linux struct{}

var _ System = Linux{}

// MountBasics mounts the pseudo file systems; one already there is kept.
func (Linux) MountBasics() error {
	for _, m := range []struct{ src, dst, fstype, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755"},
		{"devpts", "/dev/pts", "devpts", "mode=0620,ptmxmode=0666"},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	return nil
}

// Cmdline returns the kernel command line.
func (Linux) Cmdline() (string, error) {
	b, err := os.ReadFile("/proc/cmdline")
	return strings.TrimSpace(string(b)), err
}

// LoadModule inserts a module file; one already loaded is fine.
func (Linux) LoadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

// Network configures the boot NIC with DHCPv4 (u-root's client).
func (Linux) Network(ctx context.Context, iface string) (*NetInfo, error) {
	link, err := findLink(ctx, iface)
	if err != nil {
		return nil, err
	}
	if _, err := dhclient.IfUp(link.Attrs().Name, 20*time.Second); err != nil {
		return nil, fmt.Errorf("%s up: %w", link.Attrs().Name, err)
	}
	cfg := dhclient.Config{Timeout: 5 * time.Second, Retries: 4, LogLevel: dhclient.LogSummary}
	var last error = errors.New("no answer")
	for r := range dhclient.SendRequests(ctx, []netlink.Link{link}, true, false, cfg, 20*time.Second) {
		if r.Err != nil {
			last = r.Err
			continue
		}
		if err := r.Lease.Configure(); err != nil {
			return nil, fmt.Errorf("configure %s: %w", link.Attrs().Name, err)
		}
		n := &NetInfo{Iface: link.Attrs().Name, MAC: link.Attrs().HardwareAddr.String(), DHCP: true}
		if p, ok := r.Lease.(*dhclient.Packet4); ok {
			if ipn := p.Lease(); ipn != nil {
				n.Address = ipn.String()
			}
			if rs := p.P.Router(); len(rs) > 0 {
				n.Gateway = rs[0].String()
			}
			ns, sl, dom := p.GatherDNSSettings()
			for _, ip := range ns {
				n.DNS = append(n.DNS, ip.String())
			}
			_ = dhclient.WriteDNSSettings(ns, sl, dom, "/etc/resolv.conf")
		}
		return n, nil
	}
	return nil, fmt.Errorf("dhcp on %s: %w", link.Attrs().Name, last)
}

// findLink waits for the NIC named (or with the MAC) iface, or the first
// non-loopback device when iface is empty.
func findLink(ctx context.Context, iface string) (netlink.Link, error) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, err
		}
		for _, l := range links {
			a := l.Attrs()
			if a.Flags&net.FlagLoopback != 0 || l.Type() != "device" {
				continue
			}
			if iface == "" || a.Name == iface || strings.EqualFold(a.HardwareAddr.String(), iface) {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no network interface %q after 20s (is its driver among the spec's kernel modules?)", iface)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// MountRoot loop-mounts the squashfs read-only at /run/plinth/lower, a tmpfs
// at /run/plinth/rw, and the overlay of the two at newRoot.
func (Linux) MountRoot(squashfs, newRoot string) error {
	const lower, rw = "/run/plinth/lower", "/run/plinth/rw"
	for _, d := range []string{lower, rw, newRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	l, err := loop.New(squashfs, "squashfs", "")
	if err != nil {
		return fmt.Errorf("loop device for %s: %w", squashfs, err)
	}
	if _, err := l.Mount(lower, unix.MS_RDONLY); err != nil {
		return fmt.Errorf("mount squashfs: %w", err)
	}
	if err := unix.Mount("tmpfs", rw, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs: %w", err)
	}
	for _, d := range []string{rw + "/upper", rw + "/work"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	opts := "lowerdir=" + lower + ",upperdir=" + rw + "/upper,workdir=" + rw + "/work"
	if err := unix.Mount("overlay", newRoot, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay: %w", err)
	}
	return nil
}

// SwitchRoot moves /dev /proc /sys /run into newRoot, makes it /, deletes
// the initramfs and execs init.
func (Linux) SwitchRoot(newRoot, init string) error {
	return mount.SwitchRoot(newRoot, init)
}

// Self returns the running executable (the busybox holding init and agent).
func (Linux) Self() ([]byte, error) { return os.ReadFile("/proc/self/exe") }
