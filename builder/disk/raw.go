package disk

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/plinth-dev/plinth/internal/fsutil"
)

const (
	mib         = 1 << 20
	sector      = 512
	fat32MinESP = 64 * mib // comfortably above FAT32's 65525-cluster floor
)

// WriteRaw writes a raw GPT disk image to out (atomically): one EFI system
// partition, FAT32, holding GRUB as EFI/BOOT/BOOTX64.EFI and the medium's
// files. It boots under UEFI firmware; BIOS is not supported (use the ISO).
func WriteRaw(ctx context.Context, c Contents, out string) error {
	if err := c.check(); err != nil {
		return fmt.Errorf("disk.raw: %w", err)
	}
	tmp, err := tempDir(c.TempDir, out)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	label := c.Label()
	efi := filepath.Join(tmp, "BOOTX64.EFI")
	if err := mkGrub(ctx, grubEFI, grubConfig(label, c.cmdline()), efi); err != nil {
		return err
	}
	files := append([]file{{name: pathEFI, src: efi}}, c.files()...)
	var payload int64
	for _, f := range files {
		n, err := f.size()
		if err != nil {
			return fmt.Errorf("disk.raw: %w", err)
		}
		payload += n
	}
	// FAT32 with go-diskfs's cluster sizes: 512 B clusters up to 260 MB
	// (their table is 1/128 of the volume, twice), 4 KiB beyond.
	espSize := roundUp(payload+payload/32+8*mib, mib)
	espSize = max(espSize, fat32MinESP)
	total := mib + espSize + mib // GPT and alignment before, backup GPT after
	img := filepath.Join(tmp, "disk.raw")
	d, err := diskfs.Create(img, total, diskfs.SectorSize512)
	if err != nil {
		return fmt.Errorf("disk.raw: %w", err)
	}
	close := sync.OnceValue(d.Close) // go-diskfs panics on a second Close
	defer close()
	table := &gpt.Table{
		LogicalSectorSize:  sector,
		PhysicalSectorSize: sector,
		ProtectiveMBR:      true,
		GUID:               uuidFrom("disk", label, c.RootfsDigest),
		Partitions: []*gpt.Partition{{
			Index: 1,
			Start: uint64(mib / sector),
			End:   uint64((mib+espSize)/sector - 1),
			Type:  gpt.EFISystemPartition,
			Name:  "EFI system partition",
			GUID:  uuidFrom("esp", label, c.RootfsDigest),
		}},
	}
	if err := d.Partition(table); err != nil {
		return fmt.Errorf("disk.raw: partition: %w", err)
	}
	if err := writeFAT(ctx, d, 1, filesystem.TypeFat32, label, files, c.Epoch); err != nil {
		return fmt.Errorf("disk.raw: ESP: %w", err)
	}
	if err := close(); err != nil {
		return fmt.Errorf("disk.raw: %w", err)
	}
	return fsutil.CommitFile(img, out, 0o644)
}

// files are the medium's files beside the loader.
func (c *Contents) files() []file {
	return []file{
		{name: PathKernel, src: c.Kernel},
		{name: PathInitrd, src: c.Initrd},
		{name: PathConfig, data: c.Config},
		{name: PathDigest, data: []byte(c.RootfsDigest + "\n")},
		{name: PathRootfs, src: c.Rootfs},
	}
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// tempDir makes a scratch directory in dir, or beside out, so that the
// finished image is renamed (not copied) into place.
func tempDir(dir, out string) (string, error) {
	if dir == "" {
		dir = filepath.Dir(out)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return os.MkdirTemp(dir, "."+filepath.Base(out)+".tmp-*")
}
