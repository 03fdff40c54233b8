//go:build linux

package stage1

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/internal/testutil"
)

// TestMountRootOverlaysAReadOnlySquashfs makes the real mounts: it needs
// root, /dev/loop-control and gensquashfs (squashfs-tools-ng, which make
// deps installs), and is skipped without them (failed, under CI).
func TestMountRootOverlaysAReadOnlySquashfs(t *testing.T) {
	testutil.NeedRoot(t, "mounting")
	_, err := os.Stat("/dev/loop-control")
	testutil.Need(t, err == nil, "no loop devices: %v", err)
	gensquashfs := testutil.NeedTool(t, "gensquashfs", "apt-get install squashfs-tools-ng (make deps does)")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "os-release"), []byte("ID=plinth-test\n"), 0o644)
	img := filepath.Join(dir, "root.sqfs")
	if out, err := exec.Command(gensquashfs, "--pack-dir", src, "--all-root", "--quiet", img).CombinedOutput(); err != nil {
		t.Fatalf("gensquashfs: %v\n%s", err, out)
	}
	run, newRoot := filepath.Join(dir, "run"), filepath.Join(dir, "newroot")
	if err := (Linux{}).MountRoot(img, run, newRoot); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, m := range []string{newRoot, filepath.Join(run, "rw"), filepath.Join(run, "lower")} {
			if err := unix.Unmount(m, 0); err != nil {
				t.Errorf("unmount %s: %v", m, err)
			}
		}
	})
	if b, err := os.ReadFile(filepath.Join(newRoot, "etc/os-release")); err != nil || string(b) != "ID=plinth-test\n" {
		t.Errorf("lower file through the overlay: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(newRoot, "etc/hostname"), []byte("x\n"), 0o644); err != nil {
		t.Errorf("overlay not writable: %v", err)
	}
	if _, err := os.Stat(filepath.Join(run, "rw/upper/etc/hostname")); err != nil {
		t.Errorf("write did not land in the tmpfs upper: %v", err)
	}
	if err := os.WriteFile(filepath.Join(run, "lower/etc/x"), nil, 0o644); err == nil {
		t.Error("the squashfs mount is writable")
	}
	// The loop device itself is read-only, not only the mount.
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	var dev string
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 8 && f[4] == filepath.Join(run, "lower") {
			dev = f[len(f)-2]
		}
	}
	ro, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "ro"))
	if err != nil || strings.TrimSpace(string(ro)) != "1" {
		t.Errorf("loop device %q ro=%q, %v", dev, ro, err)
	}
}
