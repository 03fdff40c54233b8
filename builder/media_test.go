package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"

	"github.com/plinth-dev/plinth/builder/compose"
	"github.com/plinth-dev/plinth/builder/disk"
	"github.com/plinth-dev/plinth/images"
	"github.com/plinth-dev/plinth/internal/testutil"
	"github.com/plinth-dev/plinth/manifest"
)

// mediaProject writes a fake kernel tree (stage 1 is composed for real;
// nothing is booted here, the QEMU tests boot real kernels), a site and a
// spec asking for every format.
func mediaProject(t *testing.T, root string) string {
	t.Helper()
	project(t, root)
	w := func(p, s string) {
		p = filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	md := "kernel/lib/modules/6.1.0-test/"
	w("kernel/boot/vmlinuz-6.1.0-test", "not really a kernel")
	w(md+"modules.dep", "kernel/fs/squashfs/squashfs.ko:\nkernel/fs/isofs/isofs.ko: kernel/drivers/cdrom/cdrom.ko\n"+
		"kernel/drivers/cdrom/cdrom.ko:\nkernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko\nkernel/fs/fat/fat.ko:\n")
	w(md+"modules.builtin", "kernel/drivers/block/loop.ko\nkernel/fs/overlayfs/overlay.ko\nkernel/net/packet/af_packet.ko\n")
	for _, m := range []string{"fs/squashfs/squashfs", "fs/isofs/isofs", "drivers/cdrom/cdrom", "fs/fat/vfat", "fs/fat/fat"} {
		w(md+"kernel/"+m+".ko", "module "+m)
	}
	w("site/site.toml", `
[site]
name   = "lab"
domain = "lab.example"

[[machine]]
name     = "box-1"
hostname = "box-one"
mac      = "52:54:00:00:00:01"
image    = "fx"
`)
	w("media.toml", `name = "fx"
[kernel]
source  = "dir:kernel"
modules = ["squashfs"]
cmdline = "console=ttyS0"
[[layer]]
source = "dir:base"
[[layer]]
source = "dir:top"
[output]
formats = ["netboot", "embedded", "iso", "raw"]
site    = "site"
machine = "box-1"
`)
	return filepath.Join(root, "media.toml")
}

// shareCompiledStage1 points the test cache's initramfs directory at the
// user's plinth cache when there is one: compiling stage 1 with gobusybox
// takes a minute, its archives are content-addressed, and the QEMU tests
// of make test then find the one this test compiled.
func shareCompiledStage1(t *testing.T, cache string) {
	t.Helper()
	user := os.Getenv("PLINTH_CACHE")
	if user == "" {
		home, _ := os.UserHomeDir()
		user = filepath.Join(home, ".cache", "plinth")
	}
	if st, err := os.Stat(filepath.Join(user, "initramfs")); err != nil || !st.IsDir() {
		return
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(user, "initramfs"), filepath.Join(cache, "initramfs")); err != nil {
		t.Fatal(err)
	}
}

func fileSHA(t *testing.T, b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// onMedium reads a file from the ISO (part 0) or the raw disk's ESP (part 1).
func onMedium(t *testing.T, img string, part int, name string) []byte {
	t.Helper()
	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if part == 0 {
		d.LogicalBlocksize = 2048
	}
	fs, err := d.GetFilesystem(part)
	if err != nil {
		t.Fatalf("%s: %v", img, err)
	}
	f, err := fs.OpenFile("/"+name, os.O_RDONLY)
	if err != nil {
		t.Fatalf("%s: %s: %v", img, name, err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEveryFormatCarriesTheSameRootfsAndMediaAreReproducible(t *testing.T) {
	needPacker(t)
	_, err := disk.GrubVersion(context.Background())
	testutil.Need(t, err == nil, "%v", err)
	src, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	build := func(root, cache string) *Result {
		s, err := images.Load(mediaProject(t, root))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		r, err := Build(context.Background(), s, Options{Out: filepath.Join(root, "out"), CacheDir: cache, SrcDir: src, Epoch: time.Unix(1700000000, 0)})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("build in %s: %.1fs", root, time.Since(start).Seconds())
		return r
	}
	a := t.TempDir()
	shareCompiledStage1(t, filepath.Join(a, "cache"))
	ra := build(a, filepath.Join(a, "cache"))
	if err := manifest.Verify(ra.Dir, ra.Manifest); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{ISOFile, RawFile, manifest.Initramfs, initramfsEmbedded} {
		if ra.Manifest.File(name) == nil {
			t.Errorf("manifest lacks %s", name)
		}
	}
	root := ra.Manifest.File(manifest.Rootfs).SHA256
	iso, raw := filepath.Join(ra.Dir, ISOFile), filepath.Join(ra.Dir, RawFile)
	for _, m := range []struct {
		img  string
		part int
	}{{iso, 0}, {raw, 1}} {
		if got := fileSHA(t, onMedium(t, m.img, m.part, disk.PathRootfs)); got != root {
			t.Errorf("%s: rootfs %s, the build's is %s", filepath.Base(m.img), got, root)
		}
		var cfg struct{ Hostname, Rootfs string }
		if err := json.Unmarshal(onMedium(t, m.img, m.part, disk.PathConfig), &cfg); err != nil || cfg.Hostname != "box-one" || cfg.Rootfs != root {
			t.Errorf("%s: profile %+v (%v), want host box-one and rootfs %s", filepath.Base(m.img), cfg, err, root)
		}
	}
	// The embedded initramfs names the same root.
	var embedded string
	err = compose.Walk(filepath.Join(ra.Dir, initramfsEmbedded), func(e compose.Entry, r io.Reader) error {
		if e.Name == compose.DigestFile {
			b, err := io.ReadAll(r)
			embedded = strings.TrimSpace(string(b))
			return err
		}
		return nil
	})
	if err != nil || embedded != root {
		t.Errorf("the embedded initramfs names rootfs %q (%v), the build's is %s", embedded, err, root)
	}
	// The medium's stage 1 loads what reaches the medium, after the spec's modules.
	initrd := filepath.Join(t.TempDir(), "initrd")
	os.WriteFile(initrd, onMedium(t, iso, 0, disk.PathInitrd), 0o644)
	var mods string
	err = compose.Walk(initrd, func(e compose.Entry, r io.Reader) error {
		if e.Name == compose.ModulesList {
			b, err := io.ReadAll(r)
			mods = string(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(mods, "squashfs.ko\n") || !strings.Contains(mods, "cdrom.ko\nlib/modules/6.1.0-test/kernel/fs/isofs/isofs.ko") || !strings.Contains(mods, "vfat.ko") {
		t.Errorf("the medium's module list:\n%s", mods)
	}
	if out, err := exec.Command("file", "-b", iso).Output(); err == nil && !strings.Contains(string(out), "ISO 9660") {
		t.Errorf("file(1) says the ISO is %s", out)
	}

	// Another directory, another media cache: the same bytes.
	b := t.TempDir()
	shareCompiledStage1(t, filepath.Join(b, "cache"))
	time.Sleep(2100 * time.Millisecond) // past FAT's time resolution
	rb := build(b, filepath.Join(b, "cache"))
	for _, name := range []string{ISOFile, RawFile} {
		if x, y := ra.Manifest.File(name), rb.Manifest.File(name); x.SHA256 != y.SHA256 {
			t.Errorf("%s differs between two builds: %s and %s", name, x.SHA256, y.SHA256)
		}
	}
	if again := build(a, filepath.Join(a, "cache")); !again.UpToDate {
		t.Error("a second build with nothing changed was not up to date")
	}
}
