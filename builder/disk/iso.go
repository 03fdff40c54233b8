package disk

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"

	"github.com/plinth-dev/plinth/internal/fsutil"
)

// Loader files on the ISO.
const (
	isoBIOSImage = "boot/grub/bios.img" // GRUB El Torito image (BIOS)
	isoEFIImage  = "boot/grub/efi.img"  // FAT16 EFI system partition image (UEFI)
	isoCatalog   = "boot/grub/boot.cat" // El Torito boot catalog
	efiImageMin  = 8 * mib              // FAT16 needs 4085 clusters of 1 KiB
	isoBlock     = 2048                 // ISO9660 logical block
	isoSlack     = 16 * mib             // room for the directory tree and descriptors
)

// WriteISO writes a hybrid ISO to out (atomically): ISO9660 with Rock Ridge
// and El Torito, GRUB for BIOS (no emulation) and for UEFI (a FAT16 image
// holding EFI/BOOT/BOOTX64.EFI). An MBR in the ISO's system area makes it
// boot as a disk too (a USB stick): GRUB's boot code for BIOS, and a
// partition naming the FAT image as an EFI system partition for UEFI.
func WriteISO(ctx context.Context, c Contents, out string) error {
	if err := c.check(); err != nil {
		return fmt.Errorf("plinth.iso: %w", err)
	}
	tmp, err := tempDir(c.TempDir, out)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	label := c.Label()
	cfg := grubConfig(label, c.cmdline())

	ws := filepath.Join(tmp, "iso")
	files := c.files()
	bios := filepath.Join(tmp, "bios.img")
	if err := mkGrub(ctx, grubBIOS, cfg, bios); err != nil {
		return err
	}
	efiImg, err := efiImage(ctx, tmp, cfg, label, c)
	if err != nil {
		return err
	}
	files = append(files, file{name: isoBIOSImage, src: bios}, file{name: isoEFIImage, src: efiImg})
	var payload int64
	for _, f := range files {
		if err := place(ws, f); err != nil {
			return fmt.Errorf("plinth.iso: %w", err)
		}
		n, _ := f.size()
		payload += roundUp(n, isoBlock)
	}
	if err := stampTree(ws, c.Epoch); err != nil {
		return err
	}

	img := filepath.Join(tmp, "plinth.iso")
	d, err := diskfs.Create(img, payload+isoSlack, diskfs.SectorSizeDefault)
	if err != nil {
		return fmt.Errorf("plinth.iso: %w", err)
	}
	close := sync.OnceValue(d.Close) // go-diskfs panics on a second Close
	defer close()
	d.LogicalBlocksize = isoBlock
	fs, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 0, FSType: filesystem.TypeISO9660, VolumeLabel: label, WorkDir: ws})
	if err != nil {
		return fmt.Errorf("plinth.iso: %w", err)
	}
	iso, ok := fs.(*iso9660.FileSystem)
	if !ok {
		return fmt.Errorf("plinth.iso: go-diskfs made a %T, not ISO9660", fs)
	}
	biosEntry := &iso9660.ElToritoEntry{
		Platform:  iso9660.BIOS,
		Emulation: iso9660.NoEmulation,
		BootFile:  isoBIOSImage,
		BootTable: true, // GRUB's cdboot.img reads the boot info table
	}
	biosEntry.SetLoadSize(4)
	err = iso.Finalize(iso9660.FinalizeOptions{
		RockRidge:        true,
		VolumeIdentifier: label,
		ElTorito: &iso9660.ElTorito{
			BootCatalog: isoCatalog,
			Entries: []*iso9660.ElToritoEntry{
				biosEntry,
				{Platform: iso9660.EFI, Emulation: iso9660.NoEmulation, BootFile: isoEFIImage},
			},
		},
	})
	if err != nil {
		return fmt.Errorf("plinth.iso: finalize: %w", err)
	}
	if err := close(); err != nil {
		return fmt.Errorf("plinth.iso: %w", err)
	}
	if err := fixISO(img, c.Epoch, label, grubBootHybrid); err != nil {
		return fmt.Errorf("plinth.iso: %w", err)
	}
	return fsutil.CommitFile(img, out, 0o644)
}

// efiImage makes the FAT16 image El Torito hands to UEFI firmware: GRUB
// alone, which then reads the kernel from the ISO9660 tree.
func efiImage(ctx context.Context, tmp, cfg, label string, c Contents) (string, error) {
	efi := filepath.Join(tmp, "BOOTX64.EFI")
	if err := mkGrub(ctx, grubEFI, cfg, efi); err != nil {
		return "", err
	}
	st, err := os.Stat(efi)
	if err != nil {
		return "", err
	}
	path := filepath.Join(tmp, "efi.img")
	d, err := diskfs.Create(path, max(efiImageMin, roundUp(st.Size()+mib, mib)), diskfs.SectorSize512)
	if err != nil {
		return "", fmt.Errorf("efi.img: %w", err)
	}
	close := sync.OnceValue(d.Close) // go-diskfs panics on a second Close
	defer close()
	if err := writeFAT(ctx, d, 0, filesystem.TypeFat16, label, []file{{name: pathEFI, src: efi}}, c.Epoch); err != nil {
		return "", fmt.Errorf("efi.img: %w", err)
	}
	return path, close()
}

// place copies f into the workspace. A copy, not a hard link: stampTree
// changes the times and modes of what is in there.
func place(ws string, f file) error {
	dst := filepath.Join(ws, filepath.FromSlash(f.name))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if f.src == "" {
		return os.WriteFile(dst, f.data, 0o644)
	}
	in, err := os.Open(f.src)
	if err != nil {
		return err
	}
	defer in.Close()
	o, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(o, in); err != nil {
		o.Close()
		return err
	}
	return o.Close()
}

// stampTree gives every entry of the workspace mode 0755/0644 and the epoch
// as its times: Rock Ridge records both.
func stampTree(ws string, epoch time.Time) error {
	return filepath.Walk(ws, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if fi.IsDir() {
			mode = 0o755
		}
		if err := os.Chmod(p, mode); err != nil {
			return err
		}
		return os.Chtimes(p, epoch, epoch)
	})
}
