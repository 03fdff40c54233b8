package qemutests

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/lab/qemu"
	"github.com/plinth-dev/plinth/manifest"
)

// mediaArtifacts builds the Debian base as plinth.iso and disk.raw for the
// one machine of a site, once per test binary, in the binary's temporary
// directory (TestMain removes it).
func mediaArtifacts(t *testing.T, ctx context.Context) string {
	t.Helper()
	need(t, filepath.Join(fixtures, "kernel", ".done"), filepath.Join(fixtures, "oci", "index.json"))
	mediaOnce.Do(func() {
		dir := filepath.Join(filepath.Dir(plinthBin), "media")
		writeFile(t, filepath.Join(dir, "site", "site.toml"), `
[site]
name   = "media"
domain = "media.example"

[[machine]]
name     = "disk-1"
hostname = "disk-one"
mac      = "52:54:00:12:34:60"
image    = "media"
`)
		spec := filepath.Join(dir, "media.toml")
		writeFile(t, spec, fmt.Sprintf(`
name = "media"
description = "Debian minbase with systemd on an ISO and a raw disk"

[kernel]
source  = "dir:%s"
modules = ["squashfs", "overlay", "loop"]
cmdline = "console=ttyS0 panic=-1"

[[layer]]
source = "oci:%s:debian-base"

[output]
formats = ["iso", "raw"]
site    = "site"
machine = "disk-1"
`, filepath.Join(fixtures, "kernel"), filepath.Join(fixtures, "oci")))
		out := filepath.Join(dir, "artifacts")
		plinth(t, ctx, "build", "--out", out, spec)
		mediaDir = filepath.Join(out, "media")
	})
	if mediaDir == "" {
		t.Fatal("the media build failed in an earlier test")
	}
	return mediaDir
}

var (
	mediaOnce sync.Once
	mediaDir  string

	mediumLine   = regexp.MustCompile(`plinth: \[medium\] (\S+) holds rootfs (sha256:[0-9a-f]{64}), mounted`)
	mediumRootfs = regexp.MustCompile(`plinth: \[rootfs\] (sha256:[0-9a-f]{64}) on the medium verified \(([0-9.]+)s\)`)
)

// bootMedium boots one machine from a medium and checks, on its console,
// that stage 1 found the medium, verified the build's rootfs on it and that
// systemd came up with the profile's host name.
func bootMedium(t *testing.T, name string, c qemu.Config) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	art := mediaArtifacts(t, ctx)
	m, err := manifest.Read(art)
	if err != nil {
		t.Fatal(err)
	}
	root := m.File(manifest.Rootfs).SHA256
	c.Name, c.Memory, c.LogDir = name, 1024, t.TempDir()
	// -snapshot: the guest and the firmware write to a throwaway overlay,
	// never to the artifact.
	c.ExtraArgs = append(c.ExtraArgs, "-snapshot")
	if c.CDROM != "" {
		c.CDROM = filepath.Join(art, c.CDROM)
	}
	for i, d := range c.Disks {
		c.Disks[i] = filepath.Join(art, d)
	}
	for i := range c.Drives {
		c.Drives[i].Path = filepath.Join(art, c.Drives[i].Path)
	}
	vm, err := qemu.Start(ctx, t, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(ctx, initLine); err != nil {
		t.Fatal(err)
	}
	tInit := vm.Since()
	md, err := vm.Expect(ctx, mediumLine)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := vm.Expect(ctx, mediumRootfs)
	if err != nil {
		t.Fatal(err)
	}
	if md[2] != root || rd[1] != root {
		t.Errorf("stage 1 looked for %s and verified %s; the manifest's rootfs is %s", md[2], rd[1], root)
	}
	// The agent runs once systemd reaches its default target. systemd's own
	// "Reached target" line is not waited for: it stops writing status to
	// the console once the serial getty has it, which races with the target.
	ready, err := vm.Expect(ctx, agentReady)
	if err != nil {
		t.Fatal(err)
	}
	tReady := vm.Since()
	if ready[1] != "disk-one" {
		t.Errorf("host name %q, the profile says disk-one", ready[1])
	}
	figure(t, "%s (%s): medium %s, /init %.1fs, rootfs verified in %ss, agent ready %.1fs after QEMU start",
		name, qemu.Accel(ctx), md[1], tInit.Seconds(), rd[2], tReady.Seconds())
}

// TestISOBootsUnderSeaBIOS boots plinth.iso from the IDE CD-ROM with BIOS
// firmware: El Torito, GRUB for i386-pc, the kernel's 16-bit entry.
func TestISOBootsUnderSeaBIOS(t *testing.T) {
	bootMedium(t, "iso-bios", qemu.Config{CDROM: "plinth.iso", Boot: "d"})
}

// TestISOBootsUnderOVMF boots plinth.iso from the CD-ROM with UEFI
// firmware: El Torito's EFI entry, the FAT image's BOOTX64.EFI.
func TestISOBootsUnderOVMF(t *testing.T) {
	bootMedium(t, "iso-uefi", qemu.Config{CDROM: "plinth.iso", Firmware: "ovmf"})
}

// TestRawDiskBootsUnderOVMF boots disk.raw as a virtio disk with UEFI
// firmware: GPT, the ESP's EFI/BOOT/BOOTX64.EFI, the rootfs on that FAT32.
func TestRawDiskBootsUnderOVMF(t *testing.T) {
	bootMedium(t, "raw-uefi", qemu.Config{Disks: []string{"disk.raw"}, Firmware: "ovmf"})
}

// TestRawDiskBootsOnEveryController boots disk.raw, whose spec names no
// disk driver, on an NVMe, an AHCI (SATA) and a virtio-scsi controller:
// stage 1 loads the controller's driver (and sd_mod for the SCSI disks it
// makes) by hardware and finds its medium there.
func TestRawDiskBootsOnEveryController(t *testing.T) {
	for _, iface := range []string{qemu.DriveNVMe, qemu.DriveAHCI, qemu.DriveSCSI} {
		t.Run(iface, func(t *testing.T) {
			bootMedium(t, "raw-uefi-"+iface, qemu.Config{Firmware: "ovmf",
				Drives: []qemu.Drive{{Path: "disk.raw", Interface: iface, Serial: "plinth-medium"}}})
		})
	}
}

// TestISOBootsAsADiskUnderOVMF boots plinth.iso attached as a disk, the way
// it runs from a USB stick: UEFI finds the EFI system partition its MBR
// names, GRUB and stage 1 the ISO9660 file system on the whole disk.
func TestISOBootsAsADiskUnderOVMF(t *testing.T) {
	bootMedium(t, "iso-disk-uefi", qemu.Config{Disks: []string{"plinth.iso"}, Firmware: "ovmf"})
}

// TestISOBootsAsADiskUnderSeaBIOS boots plinth.iso attached as a disk with
// BIOS firmware: the MBR's GRUB boot code, then the El Torito BIOS image.
func TestISOBootsAsADiskUnderSeaBIOS(t *testing.T) {
	bootMedium(t, "iso-disk-bios", qemu.Config{Disks: []string{"plinth.iso"}})
}
