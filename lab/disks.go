package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/plinth-dev/plinth/internal/fsutil"
	"github.com/plinth-dev/plinth/lab/netlab"
	"github.com/plinth-dev/plinth/lab/qemu"
	"github.com/plinth-dev/plinth/profiles"
	"github.com/plinth-dev/plinth/profiles/node"
)

// DefaultDiskSize is the size of a new lab state disk, unless the
// machine's selector asks for a larger min-size.
const DefaultDiskSize = 8 << 30

// Lab by-id link prefixes: what udev names the disks QEMU makes.
const (
	byIDVirtio = "/dev/disk/by-id/virtio-"
	byIDNVMe   = "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_"
)

// DisksDir is where a lab keeps its machines' state disks: dir when set,
// else the disks directory inside its log directory.
func DisksDir(logDir, dir string) string {
	if dir != "" {
		return dir
	}
	return filepath.Join(logDir, "disks")
}

// Disk is a machine's state disk in the lab: a sparse raw file attached
// as the device its selector finds.
type Disk struct {
	Machine string
	Drive   qemu.Drive // Path is DIR/MACHINE.raw
	Size    int64      // the size a new file gets
	min     int64      // the selector's min-size: a smaller file is refused
}

// driveFor is the device the lab attaches so that machine's state disk
// selector finds it (Path unset), and the least size it must have.
//
//	/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S  NVMe, serial S
//	/dev/disk/by-id/virtio-S               virtio-blk, serial S
//	serial:S                               virtio-blk, serial S
//	min-size:N                             virtio-blk, serial plinth-MACHINE (cut to 20 bytes)
//
// A WWN, a by-path link or another by-id link is something QEMU's
// disks cannot be given here: an error naming the machine.
func driveFor(machine, selector string) (qemu.Drive, int64, error) {
	sel, err := node.ParseDiskSelector(selector)
	if err != nil {
		return qemu.Drive{}, 0, fmt.Errorf("machine %s: state disk: %w", machine, err)
	}
	cannot := func(why string) error {
		return fmt.Errorf("machine %s: state disk %q: the lab cannot make such a disk (%s); use serial:S, min-size:N, %sS or %sS",
			machine, selector, why, byIDVirtio, byIDNVMe)
	}
	var d qemu.Drive
	var min int64
	switch sel.Kind {
	case node.DiskPath:
		if s, ok := strings.CutPrefix(sel.Value, byIDNVMe); ok {
			d = qemu.Drive{Interface: qemu.DriveNVMe, Serial: s}
		} else if s, ok := strings.CutPrefix(sel.Value, byIDVirtio); ok {
			d = qemu.Drive{Interface: qemu.DriveVirtio, Serial: s}
		} else if strings.HasPrefix(sel.Value, "/dev/disk/by-path/") {
			return d, 0, cannot("a by-path link names a bus address QEMU picks")
		} else {
			return d, 0, cannot("its by-id links are virtio-SERIAL and nvme-QEMU_NVMe_Ctrl_SERIAL only")
		}
		if d.Serial == "" {
			return d, 0, cannot("the link names no serial")
		}
	case node.DiskSerial:
		d = qemu.Drive{Interface: qemu.DriveVirtio, Serial: sel.Value}
	case node.DiskMinSize:
		s := "plinth-" + machine
		if len(s) > qemu.MaxSerial {
			s = s[:qemu.MaxSerial]
		}
		d, min = qemu.Drive{Interface: qemu.DriveVirtio, Serial: s}, sel.Bytes
	case node.DiskWWN:
		return d, 0, cannot("QEMU's virtio and NVMe disks carry no WWN")
	default:
		return d, 0, fmt.Errorf("machine %s: state disk %q: no disk to make", machine, selector)
	}
	if err := d.Check(); err != nil {
		return d, 0, fmt.Errorf("machine %s: state disk %q: %w", machine, selector, err)
	}
	return d, min, nil
}

// diskOf is machine m's state disk in dir; nil when the site gives it
// none.
func diskOf(site *profiles.Site, m *profiles.Machine, dir string) (*Disk, error) {
	st := site.StateOf(m)
	if st == nil {
		return nil, nil
	}
	if m.Name == "" || filepath.Base(m.Name) != m.Name || strings.HasPrefix(m.Name, ".") {
		return nil, fmt.Errorf("machine %q: not a file name for its state disk", m.Name)
	}
	d, min, err := driveFor(m.Name, st.Disk)
	if err != nil {
		return nil, err
	}
	d.Path = filepath.Join(dir, m.Name+".raw")
	return &Disk{Machine: m.Name, Drive: d, Size: max(DefaultDiskSize, min), min: min}, nil
}

// ensure creates the disk's file, blank and sparse, when it is missing,
// and reports whether it did. An existing file is never changed: it holds
// the machine's state from an earlier run.
func (d *Disk) ensure() (created bool, err error) {
	fi, err := os.Stat(d.Drive.Path)
	switch {
	case err == nil && !fi.Mode().IsRegular():
		return false, fmt.Errorf("machine %s: state disk %s is not a regular file", d.Machine, d.Drive.Path)
	case err == nil && fi.Size() < d.min:
		return false, fmt.Errorf("machine %s: state disk %s has %d bytes, less than the site's min-size of %d: remove it (plinth qemu down --delete-disks) for a new one",
			d.Machine, d.Drive.Path, fi.Size(), d.min)
	case err == nil:
		return false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return false, fmt.Errorf("machine %s: state disk: %w", d.Machine, err)
	}
	if err := d.blank(); err != nil {
		return false, err
	}
	return true, nil
}

// blank puts a new blank sparse file of Size bytes at the disk's path,
// replacing whatever is there in one rename.
func (d *Disk) blank() error {
	dir := filepath.Dir(d.Drive.Path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("machine %s: state disk: %w", d.Machine, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(d.Drive.Path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("machine %s: state disk: %w", d.Machine, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once committed
	err = f.Truncate(d.Size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// The disk may come to hold the machine's keys and etcd's data.
		err = fsutil.CommitFile(tmp, d.Drive.Path, 0o600)
	}
	if err != nil {
		return fmt.Errorf("machine %s: state disk: %w", d.Machine, err)
	}
	return nil
}

// PrepareDisks gives every machine of machines that has a state disk in
// site its disk file in dir: created when missing, kept as it is when
// there. It returns the disks by machine and the files it created and
// reused; an error names every machine whose disk the lab cannot make.
func PrepareDisks(dir string, site *profiles.Site, machines []*profiles.Machine) (disks map[string]*Disk, created, reused []string, err error) {
	disks = map[string]*Disk{}
	var errs []error
	for _, m := range machines {
		d, err := diskOf(site, m, dir)
		if err != nil {
			errs = append(errs, err)
		} else if d != nil {
			disks[m.Name] = d
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, nil, err // nothing made for a site the lab cannot run
	}
	for _, m := range machines {
		d := disks[m.Name]
		if d == nil {
			continue
		}
		made, err := d.ensure()
		switch {
		case err != nil:
			errs = append(errs, err)
		case made:
			created = append(created, d.Drive.Path)
		default:
			reused = append(reused, d.Drive.Path)
		}
	}
	return disks, created, reused, errors.Join(errs...)
}

// diskReport is the line saying which disk files a run created and which
// it reused ("" when there are none).
func diskReport(dir string, created, reused []string) string {
	var parts []string
	for _, p := range []struct {
		what  string
		files []string
	}{{"created", created}, {"reused", reused}} {
		if len(p.files) == 0 {
			continue
		}
		var b []string
		for _, f := range p.files {
			b = append(b, filepath.Base(f))
		}
		parts = append(parts, p.what+" "+strings.Join(b, " "))
	}
	if len(parts) == 0 {
		return ""
	}
	return fmt.Sprintf("state disks in %s: %s\n", dir, strings.Join(parts, "; "))
}

// DeleteDisks removes dir, the disks directory of the lab whose log
// directory is logDir, and returns the disk files it held. It refuses
// while that lab runs.
func DeleteDisks(logDir, dir string) ([]string, error) {
	if info, err := ReadInfo(logDir); err == nil && netlab.Exists(info.Netns) {
		return nil, fmt.Errorf("lab %s is running with log directory %s: stop it before deleting its disks", info.Netns, logDir)
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	return files, nil
}
