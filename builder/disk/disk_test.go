package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/plinth-dev/plinth/internal/testutil"
)

func needGrub(t *testing.T) {
	t.Helper()
	_, err := GrubVersion(context.Background())
	testutil.Need(t, err == nil, "%v", err)
}

// contents writes small stand-in boot files (the tests check the media's
// structure and bytes; the QEMU tests boot real ones).
func contents(t *testing.T, epoch time.Time) Contents {
	t.Helper()
	dir := t.TempDir()
	w := func(name string, n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7 + len(name))
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	root := w("rootfs.squashfs", 3<<20+123)
	b, _ := os.ReadFile(root)
	sum := sha256.Sum256(b)
	return Contents{
		Kernel:       w("vmlinuz", 700<<10),
		Initrd:       w("initrd", 300<<10),
		Rootfs:       root,
		RootfsDigest: "sha256:" + hex.EncodeToString(sum[:]),
		Config:       []byte(`{"machine":"m1","hostname":"one"}`),
		Cmdline:      "console=ttyS0",
		Epoch:        epoch,
	}
}

func sha(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// firstDiff returns the offset of the first byte that differs between two
// files, or -1.
func firstDiff(t *testing.T, a, b string) int {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range min(len(x), len(y)) {
		if x[i] != y[i] {
			return i
		}
	}
	if len(x) != len(y) {
		return min(len(x), len(y))
	}
	return -1
}

// readFS reads name from the file system on partition part of img.
func readFS(t *testing.T, img string, part int, name string) []byte {
	t.Helper()
	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if filepath.Ext(img) == ".iso" {
		d.LogicalBlocksize = isoBlock
	}
	fs, err := d.GetFilesystem(part)
	if err != nil {
		t.Fatalf("%s partition %d: %v", img, part, err)
	}
	f, err := fs.OpenFile("/"+name, os.O_RDONLY)
	if err != nil {
		t.Fatalf("%s: open %s: %v", img, name, err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("%s: read %s: %v", img, name, err)
	}
	return b
}

func TestISOIsReproducibleAcrossWallClockTime(t *testing.T) {
	needGrub(t)
	ctx := context.Background()
	c := contents(t, time.Unix(1700000000, 0))
	out := t.TempDir()
	a, b := filepath.Join(out, "a.iso"), filepath.Join(out, "b.iso")
	if err := WriteISO(ctx, c, a); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2100 * time.Millisecond) // past FAT's 2 s and ISO's 1 s resolution
	if err := WriteISO(ctx, c, b); err != nil {
		t.Fatal(err)
	}
	if d := firstDiff(t, a, b); d >= 0 {
		t.Fatalf("two builds of one ISO differ, first at byte %d (block %d +%d)", d, d/isoBlock, d%isoBlock)
	}
	c.Epoch = time.Unix(1800000000, 0)
	cc := filepath.Join(out, "c.iso")
	if err := WriteISO(ctx, c, cc); err != nil {
		t.Fatal(err)
	}
	if sha(t, a) == sha(t, cc) {
		t.Error("a different SOURCE_DATE_EPOCH gave the same ISO: the epoch is not in it")
	}
	if entries, _ := os.ReadDir(out); len(entries) != 3 {
		t.Errorf("output dir holds %d entries, want the 3 ISOs and no leftovers", len(entries))
	}
}

func TestISOCarriesTheRootfsByteForByte(t *testing.T) {
	needGrub(t)
	c := contents(t, time.Unix(0, 0))
	iso := filepath.Join(t.TempDir(), "plinth.iso")
	if err := WriteISO(context.Background(), c, iso); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(c.Rootfs)
	if got := readFS(t, iso, 0, PathRootfs); !bytes.Equal(got, want) {
		t.Errorf("%s on the ISO: %d bytes, differs from the build's rootfs (%d bytes)", PathRootfs, len(got), len(want))
	}
	if got := string(readFS(t, iso, 0, PathDigest)); got != c.RootfsDigest+"\n" {
		t.Errorf("%s = %q, want %q", PathDigest, got, c.RootfsDigest)
	}
	if got := readFS(t, iso, 0, PathConfig); !bytes.Equal(got, c.Config) {
		t.Errorf("%s = %q", PathConfig, got)
	}
	b, _ := os.ReadFile(iso)
	if st, _ := os.Stat(iso); st.Size()%isoBlock != 0 || st.Size() > 32<<20 {
		t.Errorf("ISO size %d: want whole blocks and no trailing slack", st.Size())
	}
	if label := string(b[vdStart*isoBlock+40 : vdStart*isoBlock+72]); label != c.Label()+strings.Repeat(" ", 32-len(c.Label())) {
		t.Errorf("volume id %q, want %q (GRUB searches for it)", label, c.Label())
	}
}

// TestISOHybridMBRBootsBIOSAndUEFI checks the ISO read as a disk: its MBR's
// one partition, type EF, holds the FAT image with GRUB for UEFI, and its
// boot code leads to the El Torito BIOS image.
func TestISOHybridMBRBootsBIOSAndUEFI(t *testing.T) {
	needGrub(t)
	c := contents(t, time.Unix(0, 0))
	iso := filepath.Join(t.TempDir(), "plinth.iso")
	if err := WriteISO(context.Background(), c, iso); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(iso)
	if b[510] != 0x55 || b[511] != 0xaa {
		t.Fatal("no MBR signature in the ISO's first sector")
	}
	p := b[446:462]
	if p[4] != 0xef {
		t.Fatalf("partition 1 type %#x, want 0xef (EFI system partition)", p[4])
	}
	start, n := binary.LittleEndian.Uint32(p[8:12]), binary.LittleEndian.Uint32(p[12:16])
	efi := readFS(t, iso, 0, isoEFIImage)
	if got := b[int64(start)*512 : int64(start+n)*512]; !bytes.Equal(got[:len(efi)], efi) {
		t.Fatalf("partition 1 (sectors %d+%d) is not %s", start, n, isoEFIImage)
	}
	// BIOS: GRUB's hybrid boot code, pointed past cdboot.img at diskboot.img,
	// whose block list starts at the next sector.
	code, _ := os.ReadFile(grubBootHybrid)
	if !bytes.Equal(b[:432], code[:432]) {
		t.Error("the MBR does not hold GRUB's boot_hybrid.img code")
	}
	bios := readFS(t, iso, 0, isoBIOSImage)
	at := binary.LittleEndian.Uint64(b[432:440])
	if got := b[at*512 : at*512+512]; !bytes.Equal(got, bios[2048:2560]) {
		t.Errorf("the MBR points at sector %d, which is not the BIOS image's diskboot sector", at)
	}
	if next := binary.LittleEndian.Uint64(bios[2548:2556]); next != at+1 {
		t.Errorf("diskboot's block list starts at sector %d, want %d", next, at+1)
	}
	var sum uint32
	for i := 64; i+4 <= len(bios); i += 4 {
		sum += binary.LittleEndian.Uint32(bios[i:])
	}
	if got := binary.LittleEndian.Uint32(bios[20:24]); got != sum {
		t.Errorf("boot info table checksum %#x, the image sums to %#x", got, sum)
	}

	img := filepath.Join(t.TempDir(), "efi.img")
	os.WriteFile(img, efi, 0o644)
	if got := readFS(t, img, 0, pathEFI); len(got) < 100<<10 || string(got[:2]) != "MZ" {
		t.Errorf("%s in the EFI image: %d bytes, not a PE file", pathEFI, len(got))
	}
}

func TestRawIsReproducibleAndHasAnESP(t *testing.T) {
	needGrub(t)
	ctx := context.Background()
	c := contents(t, time.Unix(1700000000, 0))
	out := t.TempDir()
	a, b := filepath.Join(out, "a.raw"), filepath.Join(out, "b.raw")
	if err := WriteRaw(ctx, c, a); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2100 * time.Millisecond)
	if err := WriteRaw(ctx, c, b); err != nil {
		t.Fatal(err)
	}
	if d := firstDiff(t, a, b); d >= 0 {
		t.Errorf("two builds of one raw disk differ, first at byte %d (sector %d +%d)", d, d/512, d%512)
	}
	d, err := diskfs.Open(a, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pt, err := d.GetPartitionTable()
	if err != nil {
		t.Fatal(err)
	}
	tbl, ok := pt.(*gpt.Table)
	if !ok || len(tbl.Partitions) != 1 || tbl.Partitions[0].Type != gpt.EFISystemPartition {
		t.Fatalf("partition table %+v: want GPT with one EFI system partition", pt)
	}
	fs, err := d.GetFilesystem(1)
	if err != nil {
		t.Fatal(err)
	}
	if fs.Type() != filesystem.TypeFat32 || fs.Label() != c.Label() {
		t.Errorf("ESP: %v labelled %q, want FAT32 labelled %q", fs.Type(), fs.Label(), c.Label())
	}
	want, _ := os.ReadFile(c.Rootfs)
	if got := readFS(t, a, 1, PathRootfs); !bytes.Equal(got, want) {
		t.Errorf("%s on the ESP differs from the build's rootfs", PathRootfs)
	}
	if got := readFS(t, a, 1, pathEFI); string(got[:2]) != "MZ" {
		t.Errorf("%s is not a PE file", pathEFI)
	}
}

func TestContentsRejectsWhatGRUBWouldParse(t *testing.T) {
	c := contents(t, time.Unix(0, 0))
	for _, bad := range []string{"console=ttyS0; reboot", "x=$y", "a\nb", `q="x"`} {
		c.Cmdline = bad
		if err := WriteISO(context.Background(), c, filepath.Join(t.TempDir(), "x.iso")); err == nil {
			t.Errorf("cmdline %q accepted", bad)
		}
	}
	c.Cmdline, c.RootfsDigest = "console=ttyS0", "sha256:abc"
	if err := WriteRaw(context.Background(), c, filepath.Join(t.TempDir(), "x.raw")); err == nil {
		t.Error("a short digest was accepted")
	}
}
