package disk

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// GRUB's platform names for grub-mkimage -O.
const (
	grubBIOS = "i386-pc-eltorito" // El Torito no-emulation image: cdboot.img + core.img
	grubEFI  = "x86_64-efi"
	// grubBootHybrid is GRUB's MBR boot code for an ISO booted as a disk.
	grubBootHybrid = "/usr/lib/grub/i386-pc/boot_hybrid.img"
)

// grubModules are built into the one-file images: enough to find the medium
// by its label, read the kernel and initramfs from ISO9660 or FAT and boot
// them, with GRUB's messages on the serial console as well as the screen.
var grubModules = map[string][]string{
	grubBIOS: {"biosdisk", "part_msdos", "part_gpt", "iso9660", "fat", "search", "search_label",
		"linux", "echo", "serial", "terminal", "test"},
	grubEFI: {"part_msdos", "part_gpt", "iso9660", "fat", "search", "search_label",
		"linux", "echo", "serial", "terminal", "test", "efi_gop"},
}

// GrubVersion names the grub-mkimage that builds the loaders, for cache keys;
// an error says which Debian packages to install.
func GrubVersion(ctx context.Context) (string, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "grub-mkimage", "--version")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("grub-mkimage: %w (apt-get install grub-common grub-pc-bin grub-efi-amd64-bin)", err)
	}
	for _, f := range []string{"/usr/lib/grub/i386-pc/linux.mod", "/usr/lib/grub/x86_64-efi/linux.mod", grubBootHybrid} {
		if _, err := os.Stat(f); err != nil {
			return "", fmt.Errorf("grub: %w (apt-get install grub-pc-bin grub-efi-amd64-bin)", err)
		}
	}
	return strings.TrimSpace(out.String()), nil
}

// grubConfig is the configuration built into the loader: it runs in GRUB's
// rescue parser (no menu, no normal.mod), finds the medium by its label and
// boots. A failure stops on GRUB's prompt with the error on the console.
func grubConfig(label, cmdline string) string {
	return fmt.Sprintf(`serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
echo "plinth: loading %[1]s"
search --no-floppy --set=root --label %[1]s
linux /boot/vmlinuz %[2]s
initrd /boot/initrd
boot
`, label, cmdline)
}

// mkGrub writes a one-file GRUB loader for the platform to out. grub-mkimage
// gives the same bytes for the same inputs (checked in the tests).
func mkGrub(ctx context.Context, platform, config, out string) error {
	cfg := out + ".cfg"
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		return err
	}
	defer os.Remove(cfg)
	args := []string{"-O", platform, "-o", out, "-p", "/boot/grub", "-c", cfg}
	args = append(args, grubModules[platform]...)
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "grub-mkimage", args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("grub-mkimage -O %s: %w: %s", platform, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
