package lab

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/plinth-dev/plinth/lab/qemu"
	"github.com/plinth-dev/plinth/profiles"
)

// TestDriveForGivesEachSelectorADeviceItFinds: the lab makes the disk a
// machine's selector finds through udev's links and properties, and says
// which selectors it cannot make a disk for.
func TestDriveForGivesEachSelectorADeviceItFinds(t *testing.T) {
	tests := []struct {
		machine, selector string
		want              qemu.Drive
		min               int64
		wantErr           string
	}{
		{machine: "etcd-3", selector: "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_plinth-etcd-3",
			want: qemu.Drive{Interface: qemu.DriveNVMe, Serial: "plinth-etcd-3"}},
		{machine: "m", selector: "/dev/disk/by-id/virtio-st1", want: qemu.Drive{Interface: qemu.DriveVirtio, Serial: "st1"}},
		{machine: "m", selector: "serial:ABC123", want: qemu.Drive{Interface: qemu.DriveVirtio, Serial: "ABC123"}},
		{machine: "minion-1", selector: "min-size:4GiB", want: qemu.Drive{Interface: qemu.DriveVirtio, Serial: "plinth-minion-1"}, min: 4 << 30},
		{machine: "a-rather-long-machine-name", selector: "min-size:4GiB", want: qemu.Drive{Interface: qemu.DriveVirtio, Serial: "plinth-a-rather-long"}, min: 4 << 30},
		{machine: "etcd-9", selector: "wwn:0x5000c500a1b2c3d4", wantErr: `machine etcd-9: state disk "wwn:0x5000c500a1b2c3d4": the lab cannot make such a disk`},
		{machine: "etcd-9", selector: "/dev/disk/by-path/pci-0000:00:04.0", wantErr: "machine etcd-9: state disk \"/dev/disk/by-path/pci-0000:00:04.0\": the lab cannot make such a disk"},
		{machine: "etcd-9", selector: "/dev/disk/by-id/ata-QEMU_HARDDISK_QM00001", wantErr: "the lab cannot make such a disk"},
		{machine: "etcd-9", selector: "/dev/disk/by-id/virtio-", wantErr: "names no serial"},
		{machine: "etcd-9", selector: "serial:123456789012345678901", wantErr: "longer than the 20 bytes"},
		{machine: "etcd-9", selector: "serial:a,b", wantErr: "has a comma"},
		{machine: "etcd-9", selector: "/dev/sda", wantErr: "machine etcd-9: state disk"},
	}
	for _, tt := range tests {
		t.Run(tt.selector, func(t *testing.T) {
			got, min, err := driveFor(tt.machine, tt.selector)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || min != tt.min {
				t.Errorf("drive %+v min %d, want %+v min %d", got, min, tt.want, tt.min)
			}
		})
	}
}

// labSite is a site whose etcd role keeps its state on a disk: etcd-1 by
// the role's default, etcd-2 on its own NVMe disk, plain with none.
func labSite(etcdDefault string) (*profiles.Site, []*profiles.Machine) {
	ms := []*profiles.Machine{
		{Name: "etcd-1", Role: "etcd"},
		{Name: "etcd-2", Role: "etcd", State: &profiles.StateDisk{Disk: "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_plinth-etcd-2"}},
		{Name: "etcd-3", Role: "etcd", State: &profiles.StateDisk{Disk: "none"}},
		{Name: "plain"},
	}
	return &profiles.Site{State: map[string]*profiles.StateDisk{"etcd": {Disk: etcdDefault}}, Machines: ms}, ms
}

// TestPrepareDisksCreatesOnceAndKeepsWhatAMachineWrote: a machine's state
// survives `plinth qemu up` after `plinth qemu up`.
func TestPrepareDisksCreatesOnceAndKeepsWhatAMachineWrote(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disks")
	site, ms := labSite("min-size:16GiB")
	disks, created, reused, err := PrepareDisks(dir, site, ms)
	if err != nil {
		t.Fatal(err)
	}
	p1, p2 := filepath.Join(dir, "etcd-1.raw"), filepath.Join(dir, "etcd-2.raw")
	if !slices.Equal(created, []string{p1, p2}) || len(reused) != 0 {
		t.Fatalf("created %q reused %q, want both etcd-1's and etcd-2's created", created, reused)
	}
	if len(disks) != 2 || disks["etcd-3"] != nil || disks["plain"] != nil {
		t.Fatalf("disks %v: want etcd-1 and etcd-2 only", disks)
	}
	if d := disks["etcd-2"].Drive; d != (qemu.Drive{Path: p2, Interface: qemu.DriveNVMe, Serial: "plinth-etcd-2"}) {
		t.Errorf("etcd-2's drive %+v", d)
	}
	for p, size := range map[string]int64{p1: 16 << 30, p2: DefaultDiskSize} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != size || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %d bytes, mode %v; want %d, 0600", p, fi.Size(), fi.Mode().Perm(), size)
		}
		if blocks := fi.Sys().(*syscall.Stat_t).Blocks; blocks*512 > 1<<20 {
			t.Errorf("%s: %d bytes allocated, want a sparse file", p, blocks*512)
		}
	}

	// The machine writes its state; the next run keeps it.
	state := []byte("plinth-state partition of etcd-1")
	f, err := os.OpenFile(p1, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(state, 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, created, reused, err = PrepareDisks(dir, site, ms)
	if err != nil {
		t.Fatal(err)
	}
	if len(created) != 0 || !slices.Equal(reused, []string{p1, p2}) {
		t.Fatalf("second run created %q reused %q, want both reused", created, reused)
	}
	got := make([]byte, len(state))
	f, err = os.Open(p1)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, state) {
		t.Errorf("etcd-1's disk after the second run holds %q (%v), want %q", got, err, state)
	}
	if fi, _ := f.Stat(); fi.Size() != 16<<30 {
		t.Errorf("etcd-1's disk is %d bytes after the second run", fi.Size())
	}
	if r := diskReport(dir, created, reused); r != "state disks in "+dir+": reused etcd-1.raw etcd-2.raw\n" {
		t.Errorf("report %q", r)
	}
}

// TestPrepareDisksRefusesWhatTheLabCannotMakeBeforeMakingAnything: a
// site with a WWN or by-path selector fails naming every such machine,
// and no disk file is made.
func TestPrepareDisksRefusesWhatTheLabCannotMakeBeforeMakingAnything(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "disks")
	site, ms := labSite("wwn:0x5000c500a1b2c3d4")
	ms = append(ms, &profiles.Machine{Name: "minion-1", Role: "minion", State: &profiles.StateDisk{Disk: "/dev/disk/by-path/pci-0000:00:05.0"}})
	_, _, _, err := PrepareDisks(dir, site, ms)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"machine etcd-1: state disk \"wwn:", "machine minion-1: state disk \"/dev/disk/by-path/", "the lab cannot make such a disk"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "etcd-2") {
		t.Errorf("error %q names etcd-2, whose disk the lab can make", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("disk directory made for a site the lab cannot run: %v", err)
	}
}

// TestPrepareDisksRefusesAnExistingDiskSmallerThanTheMinSize: a machine
// that looks for a blank disk of N would find none on a smaller file.
func TestPrepareDisksRefusesAnExistingDiskSmallerThanTheMinSize(t *testing.T) {
	dir := t.TempDir()
	site, ms := labSite("min-size:16GiB")
	if err := os.WriteFile(filepath.Join(dir, "etcd-1.raw"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dir, "etcd-1.raw"), 8<<30); err != nil {
		t.Fatal(err)
	}
	_, _, _, err := PrepareDisks(dir, site, ms)
	if err == nil || !strings.Contains(err.Error(), "less than the site's min-size") || !strings.Contains(err.Error(), "--delete-disks") {
		t.Fatalf("error %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "etcd-1.raw")); fi.Size() != 8<<30 {
		t.Errorf("the small disk was changed to %d bytes", fi.Size())
	}
}

// TestDeleteDisksRemovesTheDirectoryAndSaysWhatItHeld: plinth qemu down
// --delete-disks, with no lab running.
func TestDeleteDisksRemovesTheDirectoryAndSaysWhatItHeld(t *testing.T) {
	logDir := t.TempDir()
	dir := DisksDir(logDir, "")
	site, ms := labSite("min-size:1GiB")
	if _, _, _, err := PrepareDisks(dir, site, ms); err != nil {
		t.Fatal(err)
	}
	// A lab.json left by a killed qemu up whose namespace is gone.
	if err := os.WriteFile(filepath.Join(logDir, InfoFile), []byte(`{"netns":"plinth-nl-gone-1-abcdef"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	removed, err := DeleteDisks(logDir, dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{filepath.Join(dir, "etcd-1.raw"), filepath.Join(dir, "etcd-2.raw")}; !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still there: %v", dir, err)
	}
	if removed, err := DeleteDisks(logDir, dir); err != nil || len(removed) != 0 {
		t.Errorf("deleting again: %q, %v", removed, err)
	}
}
