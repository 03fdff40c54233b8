package firstboot

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/internal/testutil"
	"github.com/plinth-dev/plinth/profiles/node"
)

// loopDisk attaches a sparse file of size MiB as a loop device with
// partition scanning and returns its kernel name.
func loopDisk(t *testing.T, mib int64) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(f, mib<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", "--partscan", f).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "--detach", dev).Run() })
	return filepath.Base(dev)
}

// digest is the sha256 of a device's first and last MiB.
func digest(t *testing.T, dev string) string {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, io.LimitReader(f, 1<<20))
	end, _ := f.Seek(0, io.SeekEnd)
	f.Seek(end-(1<<20), io.SeekStart)
	io.Copy(h, f)
	return string(h.Sum(nil))
}

// TestStateDiskOnRealDisks runs the step's work with the real tools on
// loop devices: a blank disk is partitioned and formatted, found again as
// this machine's on the next boot and checked; another machine's state
// partition and a foreign filesystem are left byte for byte as they were
// and refused with the reason, unless the machine may wipe its disk.
func TestStateDiskOnRealDisks(t *testing.T) {
	testutil.NeedRoot(t, "attaching loop devices")
	for _, tool := range []string{"losetup", "sfdisk", "wipefs", "mkfs.ext4", "e2fsck"} {
		testutil.NeedTool(t, tool, "make deps installs it (fdisk, e2fsprogs, util-linux)")
	}
	ctx := context.Background()
	blank := loopDisk(t, 64)
	small := loopDisk(t, 16)
	only := map[string]bool{blank: true, small: true}
	o := DiskOS{Sys: "/sys", Run: runTool, Include: func(n string) bool { return only[n] }}
	me := node.StatePartUUID("lab", "etcd-1")
	st := &node.State{Disk: "min-size:32MiB", PartUUID: me}

	// First boot: the 16 MiB disk is too small; the blank 64 MiB one is
	// formatted.
	s, err := PrepareState(ctx, o, st)
	if err != nil || s.Status != "formatted" || s.Disk != "/dev/"+blank || s.Part != "/dev/"+blank+"p1" {
		t.Fatalf("first boot: %+v, %v", s, err)
	}
	out, err := runTool(ctx, "sfdisk", "--json", "/dev/"+blank)
	if err != nil {
		t.Fatal(err)
	}
	var d sfdiskDump
	json.Unmarshal(out, &d)
	if p := d.PartitionTable.Partitions; d.PartitionTable.Label != "gpt" || len(p) != 1 ||
		!strings.EqualFold(p[0].Type, node.StatePartType) || !strings.EqualFold(p[0].UUID, me) || p[0].Name != node.StatePartLabel {
		t.Fatalf("partition table %+v", d.PartitionTable)
	}
	if out, err := runTool(ctx, "wipefs", "--no-act", "--json", p0(d)); err != nil || !strings.Contains(string(out), `"ext4"`) {
		t.Fatalf("no ext4 on %s: %s %v", p0(d), out, err)
	}

	// Next boot: the same disk is this machine's, checked, not formatted.
	before := digest(t, "/dev/"+blank)
	s, err = PrepareState(ctx, o, st)
	if err != nil || s.Status != "mounted" || s.Part != "/dev/"+blank+"p1" || !strings.Contains(s.Message, "clean") {
		t.Fatalf("second boot: %+v, %v", s, err)
	}
	if digest(t, "/dev/"+blank) != before {
		t.Error("the second boot changed the disk's partition table")
	}

	// Another machine boots with this disk: it is not its own.
	other := &node.State{Disk: "min-size:32MiB", PartUUID: node.StatePartUUID("lab", "etcd-2")}
	s, err = PrepareState(ctx, o, other)
	if err == nil || s.Status != "refused" || !strings.Contains(s.Message, "none of at least 32.0 MiB is blank") || !strings.Contains(s.Message, "another machine") {
		t.Errorf("another machine's disk: %+v, %v", s, err)
	}
	// Named directly, it says whose it is.
	c, err := o.Classify(ctx, Disk{Name: blank, Dev: "/dev/" + blank}, other.PartUUID)
	if err != nil || c.Kind != DiskForeign || !strings.Contains(c.What, "another machine's plinth state") {
		t.Errorf("classify for another machine: %+v, %v", c, err)
	}
	if digest(t, "/dev/"+blank) != before {
		t.Error("refusing the disk changed it")
	}

	// A disk with a filesystem of its own (no partition table).
	foreign := loopDisk(t, 64)
	only = map[string]bool{foreign: true}
	if _, err := runTool(ctx, "mkfs.ext4", "-q", "-F", "-L", "precious", "/dev/"+foreign); err != nil {
		t.Fatal(err)
	}
	was := digest(t, "/dev/"+foreign)
	c, err = o.Classify(ctx, Disk{Name: foreign, Dev: "/dev/" + foreign}, me)
	if err != nil || c.Kind != DiskForeign || !strings.Contains(c.What, "ext4") {
		t.Fatalf("classify a foreign ext4: %+v, %v", c, err)
	}
	s, err = PrepareState(ctx, o, st)
	if err == nil || s.Status != "refused" || !strings.Contains(s.Message, "ext4") {
		t.Errorf("foreign disk: %+v, %v", s, err)
	}
	if digest(t, "/dev/"+foreign) != was {
		t.Error("the foreign disk was changed")
	}
	// With wipe, and selected by a path the machine names: the site says
	// this disk may be erased.
	c, err = o.Classify(ctx, Disk{Name: foreign, Dev: "/dev/" + foreign}, me)
	if err != nil {
		t.Fatal(err)
	}
	part, err := o.Format(ctx, Disk{Name: foreign, Dev: "/dev/" + foreign}, me, c.Kind != DiskBlank)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := o.Classify(ctx, Disk{Name: foreign, Dev: "/dev/" + foreign}, me); err != nil || c.Kind != DiskOurs || c.Part != part {
		t.Errorf("after wiping: %+v, %v", c, err)
	}
}

func p0(d sfdiskDump) string { return d.PartitionTable.Partitions[0].Node }

func TestParseToolOutputOfAnEmptyDisk(t *testing.T) {
	// wipefs prints nothing at all for a disk without signatures.
	o := DiskOS{Run: func(_ context.Context, name string, _ ...string) ([]byte, error) { return nil, nil }}
	c, err := o.Classify(context.Background(), Disk{Dev: "/dev/x"}, "u")
	if err != nil || c.Kind != DiskBlank {
		t.Errorf("%+v, %v", c, err)
	}
}
