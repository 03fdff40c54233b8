package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"os"
	"path/filepath"

	"github.com/plinth-dev/plinth/builder/compose"
	"github.com/plinth-dev/plinth/builder/disk"
)

// Output names of the boot media.
const (
	ISOFile = "plinth.iso"
	RawFile = "disk.raw"
)

// mediumModules are loaded by the stage 1 of a boot medium, after the
// spec's own, to reach the medium: QEMU's and common machines' disk and
// CD-ROM controllers, USB sticks, and the file systems of the ISO and the
// ESP. Those the kernel lacks are left out (the spec may name them anyway).
var mediumModules = []string{
	"virtio_pci", "virtio_blk", "virtio_scsi", "ata_piix", "ahci", "nvme", "sr_mod", "sd_mod",
	"xhci_pci", "ehci_pci", "usb_storage", "uas",
	"isofs", "vfat", "nls_cp437", "nls_ascii", "loop", "squashfs", "overlay",
}

// wantsMedium reports whether the spec asks for a boot medium.
func (b *build) wantsMedium() bool { return b.wants("iso") || b.wants("raw") }

// planMedium resolves the medium's initramfs modules and adds what the
// media depend on to the initramfs plan's hash h.
func (b *build) planMedium(ctx context.Context, p *initramfsPlan, h hash.Hash) error {
	grub, err := disk.GrubVersion(ctx)
	if err != nil {
		return fmt.Errorf("%s: output.formats: %w", b.spec.File, err)
	}
	names := append([]string(nil), b.spec.Kernel.Modules...)
	for _, m := range mediumModules {
		if _, err := p.kernel.Resolve([]string{m}); err == nil {
			names = append(names, m)
		}
	}
	if p.mediumMods, err = p.kernel.Resolve(names); err != nil {
		return fmt.Errorf("%s: kernel.modules: %w", b.spec.File, err)
	}
	fmt.Fprintf(h, "medium v1 %q %q\n", grub, b.spec.Kernel.Cmdline)
	for _, m := range p.mediumMods {
		fmt.Fprintln(h, "medium", m.Name, m.Path)
	}
	return nil
}

// media builds (or takes from the cache) plinth.iso and disk.raw: the
// kernel, a stage-1 initramfs that finds the medium, and the build's own
// rootfs.squashfs and profile beside them.
func (b *build) media(ctx context.Context, p *initramfsPlan, rootfs, rootDigest string) error {
	cfgJSON, err := b.nodeConfig(p, rootDigest)
	if err != nil {
		return err
	}
	dir := filepath.Join(b.o.CacheDir, "media")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	h := sha256.New()
	fmt.Fprintf(h, "media v%d\n%s\n%s\n%d\n", disk.Version, p.key, rootDigest, b.o.Epoch.Unix())
	h.Write(cfgJSON)
	key := hex.EncodeToString(h.Sum(nil))

	initrd := filepath.Join(b.o.CacheDir, "initramfs", "out", p.key+"-medium.cpio")
	if _, err := os.Stat(initrd); err != nil {
		cfg := p.cfg
		cfg.Modules = p.mediumMods
		t := b.o.Progress.Start("initramfs for boot media", -1)
		err := compose.Build(ctx, cfg, initrd)
		t.Done()
		if err != nil {
			return fmt.Errorf("initramfs for boot media: %w", err)
		}
	}
	c := disk.Contents{
		Kernel:       p.kernel.Image,
		Initrd:       initrd,
		Rootfs:       rootfs,
		RootfsDigest: rootDigest,
		Config:       cfgJSON,
		Cmdline:      b.spec.Kernel.Cmdline,
		Epoch:        b.o.Epoch,
	}
	for _, o := range []struct {
		format, name string
		write        func(context.Context, disk.Contents, string) error
	}{{"iso", ISOFile, disk.WriteISO}, {"raw", RawFile, disk.WriteRaw}} {
		if !b.wants(o.format) {
			continue
		}
		path := filepath.Join(dir, key+"-"+o.name)
		if _, err := os.Stat(path); err != nil {
			t := b.o.Progress.Start(o.name, -1)
			err := o.write(ctx, c, path)
			t.Done()
			if err != nil {
				return err
			}
			b.log.Info("boot medium written", "file", o.name, "label", c.Label())
		}
		b.files[o.name] = path
	}
	return nil
}
