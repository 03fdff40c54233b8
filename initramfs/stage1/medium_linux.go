//go:build linux

package stage1

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

var _ MediumMounter = Linux{}

// mediumFS are the file systems a medium may have: the ISO, and the EFI
// system partition of a disk image or of the ISO written to a stick.
var mediumFS = []string{"iso9660", "vfat"}

// MountMedium tries every block device (CD-ROMs, disks and partitions, as
// their drivers bring them up) with each medium file system, read-only, and
// keeps the first whose plinth/rootfs.digest is want. The medium is
// recognised by what it carries, not by a label: two plinth media of other
// builds in one machine are passed over.
func (Linux) MountMedium(ctx context.Context, want, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	const wait = 30 * time.Second // drivers probe CD-ROMs and disks asynchronously
	deadline := time.Now().Add(wait)
	seen := map[string]string{} // device → what it holds, for the error
	for {
		for _, dev := range blockDevices() {
			if _, done := seen[dev]; done {
				continue
			}
			what, ok := tryMedium(dev, dir, want)
			if ok {
				return "/dev/" + dev, nil
			}
			if what != "" {
				seen[dev] = what
			}
		}
		if time.Now().After(deadline) {
			var tried []string
			for dev, what := range seen {
				tried = append(tried, dev+": "+what)
			}
			slices.Sort(tried)
			if len(tried) == 0 {
				tried = []string{"no block device with a medium"}
			}
			return "", fmt.Errorf("not found in %s (%s)", wait, strings.Join(tried, "; "))
		}
		if err := sleep(ctx, 300*time.Millisecond); err != nil {
			return "", err
		}
	}
}

// blockDevices lists /sys/class/block, without loop, RAM and zram devices.
func blockDevices() []string {
	ents, _ := os.ReadDir("/sys/class/block")
	var out []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "loop") || strings.HasPrefix(n, "ram") || strings.HasPrefix(n, "zram") {
			continue
		}
		out = append(out, n)
	}
	return out
}

// tryMedium mounts dev at dir and keeps it mounted if it is the medium.
// what says why not; "" when the device may yet change (no medium in the
// drive, no device node yet), so that it is tried again.
func tryMedium(dev, dir, want string) (what string, ok bool) {
	node := "/dev/" + dev
	if b, err := os.ReadFile(filepath.Join("/sys/class/block", dev, "size")); err != nil || strings.TrimSpace(string(b)) == "0" {
		return "", false
	}
	if _, err := os.Stat(node); err != nil {
		return "", false
	}
	var errs []string
	for _, fstype := range mediumFS {
		err := unix.Mount(node, dir, fstype, unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, "")
		if err != nil {
			errs = append(errs, fstype+" "+err.Error())
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, MediumDigest))
		if err == nil && strings.TrimSpace(string(b)) == want {
			return "", true
		}
		_ = unix.Unmount(dir, 0)
		if errors.Is(err, os.ErrNotExist) {
			return fstype + " without " + MediumDigest, false
		}
		if err != nil {
			return fstype + " " + err.Error(), false
		}
		return fstype + " with rootfs " + strings.TrimSpace(string(b)), false
	}
	return "not " + strings.Join(errs, ", not "), false
}
