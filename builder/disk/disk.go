// Package disk writes the outputs that boot a machine without PXE: a hybrid
// ISO (plinth.iso: El Torito for BIOS and UEFI, and an MBR that lets UEFI
// boot it as a disk) and a raw GPT disk image (disk.raw) with an EFI system
// partition. Both are made with go-diskfs; the loaders are one-file GRUB
// images from Debian's grub-pc-bin and grub-efi-amd64-bin.
//
// Each medium carries the same files: the kernel, a stage-1 initramfs
// without the root filesystem, and beside it plinth/rootfs.squashfs (the
// build's rootfs, byte for byte), plinth/rootfs.digest and the machine's
// profile plinth/config.json. Stage 1 finds the medium by that digest,
// verifies and loop-mounts the squashfs from it: the root does not sit in RAM
// twice, and an operator may replace config.json on the medium (the ESP is
// plain FAT) to boot another profile with the same image.
package disk

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Version changes whenever the bytes this package writes for the same
// Contents change: builds cache media by it.
const Version = 2

// Paths on the medium (ISO9660 with Rock Ridge, or FAT).
const (
	PathKernel = "boot/vmlinuz"
	PathInitrd = "boot/initrd"
	PathRootfs = "plinth/rootfs.squashfs"
	PathDigest = "plinth/rootfs.digest"
	PathConfig = "plinth/config.json"
	pathEFI    = "EFI/BOOT/BOOTX64.EFI"
)

// Contents is what a medium boots.
type Contents struct {
	Kernel       string // vmlinuz
	Initrd       string // stage-1 initramfs with the modules to find the medium
	Rootfs       string // rootfs.squashfs
	RootfsDigest string // its "sha256:<hex>"
	Config       []byte // the machine's node config (JSON)
	Cmdline      string // the spec's kernel command line
	Epoch        time.Time
	TempDir      string // scratch space on the output's file system; default beside the output
}

func (c *Contents) check() error {
	var errs []error
	for _, f := range []struct{ name, v string }{{"kernel", c.Kernel}, {"initrd", c.Initrd}, {"rootfs", c.Rootfs}} {
		if f.v == "" {
			errs = append(errs, fmt.Errorf("no %s", f.name))
		}
	}
	if h, ok := strings.CutPrefix(c.RootfsDigest, "sha256:"); !ok || len(h) != 64 {
		errs = append(errs, fmt.Errorf("rootfs digest %q: want sha256:<64 hex>", c.RootfsDigest))
	}
	// The command line is written into GRUB's script: nothing GRUB's parser
	// would read as syntax.
	if i := strings.IndexAny(c.Cmdline, "$;'\"\\{}|&<>\n\r#"); i >= 0 {
		errs = append(errs, fmt.Errorf("kernel.cmdline %q: %q is not allowed on a GRUB command line", c.Cmdline, c.Cmdline[i]))
	}
	return errors.Join(errs...)
}

// Label is the volume label of a medium (ISO9660 volume id and FAT label;
// GRUB finds the medium by it): derived from the rootfs digest and the
// profile, so that two media of different builds are told apart and the
// same build always gets the same label. 11 characters, FAT's limit.
func (c *Contents) Label() string {
	h := sha256.New()
	h.Write([]byte(c.RootfsDigest))
	h.Write(c.Config)
	return "PLINTH" + strings.ToUpper(hex.EncodeToString(h.Sum(nil))[:5])
}

// cmdline is the kernel command line the loader passes: the spec's, then the
// rootfs digest stage 1 must find.
func (c *Contents) cmdline() string {
	return strings.TrimSpace(c.Cmdline + " plinth.rootfs=" + c.RootfsDigest)
}

// uuidFrom derives a stable RFC 4122 (version 4 layout) UUID from parts.
func uuidFrom(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	b := h[:16]
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	x := hex.EncodeToString(b)
	return strings.ToUpper(x[:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:])
}
