package qemutests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/lab/qemu"
	"github.com/plinth-dev/plinth/manifest"
)

// smokeSpec writes a site with one machine and an image spec that embeds the
// Debian base (systemd) rootfs and that machine's profile in the initramfs.
func smokeSpec(t *testing.T, dir string) string {
	t.Helper()
	writeFile(t, filepath.Join(dir, "site", "site.toml"), `
[site]
name   = "smoke"
domain = "smoke.example"

[[machine]]
name     = "smoke-1"
hostname = "smoke-one"
mac      = "52:54:00:12:34:56"
image    = "smoke"
`)
	spec := filepath.Join(dir, "smoke.toml")
	writeFile(t, spec, fmt.Sprintf(`
name = "smoke"
description = "Debian minbase with systemd, booted from the initramfs alone"

[kernel]
source  = "dir:%s"
cmdline = "console=ttyS0"

[[layer]]
source = "oci:%s:debian-base"

[output]
formats = ["netboot", "embedded"]
site    = "site"
machine = "smoke-1"
`, filepath.Join(fixtures, "kernel"), filepath.Join(fixtures, "oci")))
	return spec
}

// buildSmoke builds the smoke image once per test binary.
func buildSmoke(t *testing.T, ctx context.Context) string {
	t.Helper()
	need(t, filepath.Join(fixtures, "kernel", ".done"), filepath.Join(fixtures, "oci", "index.json"))
	dir := t.TempDir()
	spec := smokeSpec(t, dir)
	out := filepath.Join(dir, "artifacts")
	plinth(t, ctx, "build", "--out", out, spec)
	return filepath.Join(out, "smoke")
}

var (
	initLine    = regexp.MustCompile(`plinth: \[init\]`)
	defaultTgt  = regexp.MustCompile(`Reached target .*(Multi-User System|multi-user\.target)`)
	agentReady  = regexp.MustCompile(`plinth-agent: ready host=(\S+) role=\S* root=overlay lower=ro upper=rw`)
	rootRefused = regexp.MustCompile(`plinth: \[rootfs\] REFUSED: sha256 mismatch: got (sha256:[0-9a-f]{64}), want (sha256:[0-9a-f]{64})`)
)

// TestSmokeEmbeddedBootReachesDefaultTarget boots the embedded image and reads
// from the console that systemd reached its default target on a read-only
// squashfs under a writable overlay, with the profile's hostname.
func TestSmokeEmbeddedBootReachesDefaultTarget(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	art := buildSmoke(t, ctx)
	vm, err := qemu.Start(ctx, t, qemu.Config{
		Name:   "smoke",
		Memory: 1024,
		Kernel: filepath.Join(art, manifest.KernelFile),
		Initrd: filepath.Join(art, "initramfs-embedded.cpio.zst"),
		Append: "console=ttyS0 panic=-1",
		LogDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(ctx, initLine); err != nil {
		t.Fatal(err)
	}
	tInit := vm.Since()
	if _, err := vm.Expect(ctx, defaultTgt); err != nil {
		t.Fatal(err)
	}
	tTarget := vm.Since()
	m, err := vm.Expect(ctx, agentReady)
	if err != nil {
		t.Fatal(err)
	}
	if m[1] != "smoke-one" {
		t.Errorf("hostname %q, the profile says smoke-one", m[1])
	}
	figure(t, "smoke boot (%s): /init first line %.1fs, default target %.1fs after QEMU start", qemu.Accel(ctx), tInit.Seconds(), tTarget.Seconds())
}

// TestSmokeCorruptRootfsIsRefused boots an initramfs whose embedded rootfs
// has one flipped byte and expects /init to refuse it, naming both digests.
func TestSmokeCorruptRootfsIsRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	art := buildSmoke(t, ctx)
	m, err := manifest.Read(art)
	if err != nil {
		t.Fatal(err)
	}
	good := m.File(manifest.Rootfs).SHA256
	bad := corruptEmbedded(t, ctx, art)
	vm, err := qemu.Start(ctx, t, qemu.Config{
		Name:   "corrupt",
		Memory: 1024,
		Kernel: filepath.Join(art, manifest.KernelFile),
		Initrd: bad,
		Append: "console=ttyS0 panic=-1",
		LogDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	sm, err := vm.Expect(ctx, rootRefused)
	if err != nil {
		t.Fatal(err)
	}
	if sm[2] != good || sm[1] == good {
		t.Errorf("refusal names got=%s want=%s; the manifest's digest is %s", sm[1], sm[2], good)
	}
	if defaultTgt.MatchString(vm.Console()) {
		t.Error("the machine booted the corrupt rootfs anyway")
	}
	_ = os.Remove(bad)
}
