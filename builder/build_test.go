package builder

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/builder/squashfs"
	"github.com/plinth-dev/plinth/images"
	"github.com/plinth-dev/plinth/internal/testutil"
	"github.com/plinth-dev/plinth/manifest"
)

func needPacker(t testing.TB) {
	t.Helper()
	testutil.NeedTool(t, squashfs.Tool, "make deps")
}

// project writes a spec with two dir: layers (the second deletes a file of
// the first) under root, with content that does not depend on root.
func project(t testing.TB, root string) string {
	t.Helper()
	w := func(p, s string, mode os.FileMode) {
		p = filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
		// Different hosts, different times: the output must not care.
		os.Chtimes(p, time.Now(), time.Now())
	}
	w("base/etc/os-release", "ID=fixture\n", 0o644)
	w("base/etc/gone", "deleted above\n", 0o644)
	w("base/usr/bin/tool", "#!/bin/sh\necho tool\n", 0o755)
	w("top/etc/.wh.gone", "", 0o644)
	w("top/etc/motd", "welcome\n", 0o644)
	w("fx.toml", "name = \"fx\"\n[[layer]]\nsource = \"dir:base\"\n[[layer]]\nsource = \"dir:top\"\n", 0o644)
	return filepath.Join(root, "fx.toml")
}

func buildSpec(t testing.TB, spec, out, cache string) *Result {
	t.Helper()
	s, err := images.Load(spec)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Build(context.Background(), s, Options{Out: out, CacheDir: cache, Epoch: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTwoBuildsInDifferentDirectoriesAreByteIdentical(t *testing.T) {
	needPacker(t)
	a, b := t.TempDir(), t.TempDir()
	ra := buildSpec(t, project(t, a), filepath.Join(a, "out"), filepath.Join(a, "cache"))
	rb := buildSpec(t, project(t, b), filepath.Join(b, "out"), filepath.Join(b, "cache"))
	for _, name := range []string{manifest.Rootfs, manifest.FileName} {
		x, _ := os.ReadFile(filepath.Join(ra.Dir, name))
		y, _ := os.ReadFile(filepath.Join(rb.Dir, name))
		if len(x) == 0 || !bytes.Equal(x, y) {
			t.Errorf("%s differs between the two builds (%d and %d bytes)", name, len(x), len(y))
		}
	}
	if err := manifest.Verify(ra.Dir, ra.Manifest); err != nil {
		t.Fatal(err)
	}
	desc, err := exec.Command("rdsquashfs", "-d", filepath.Join(ra.Dir, manifest.Rootfs)).CombinedOutput()
	if err != nil {
		t.Fatalf("rdsquashfs: %v %s", err, desc)
	}
	for _, want := range []string{"file etc/motd 0644 0 0", "file usr/bin/tool 0755 0 0", "file etc/os-release"} {
		if !strings.Contains(string(desc), want) {
			t.Errorf("rootfs lacks %q:\n%s", want, desc)
		}
	}
	if strings.Contains(string(desc), "etc/gone") || strings.Contains(string(desc), ".wh.") {
		t.Errorf("the whiteout was not applied:\n%s", desc)
	}
	if len(ra.Manifest.Sources) != 2 || !strings.HasPrefix(ra.Manifest.Sources[0].Digest, "sha256:") {
		t.Errorf("sources %+v", ra.Manifest.Sources)
	}
}

func TestSecondBuildWithNothingChangedDoesNoWork(t *testing.T) {
	needPacker(t)
	dir := t.TempDir()
	spec, out, cache := project(t, dir), filepath.Join(dir, "out"), filepath.Join(dir, "cache")
	first := buildSpec(t, spec, out, cache)
	st1, _ := os.Stat(filepath.Join(first.Dir, manifest.FileName))
	second := buildSpec(t, spec, out, cache)
	if first.UpToDate || !second.UpToDate {
		t.Fatalf("up to date: first %v, second %v", first.UpToDate, second.UpToDate)
	}
	st2, _ := os.Stat(filepath.Join(second.Dir, manifest.FileName))
	if !os.SameFile(st1, st2) {
		t.Error("the up-to-date build rewrote the output")
	}
	// A changed input is noticed.
	os.WriteFile(filepath.Join(dir, "top", "etc", "motd"), []byte("changed\n"), 0o644)
	if third := buildSpec(t, spec, out, cache); third.UpToDate {
		t.Error("a changed layer was not rebuilt")
	}
}

func TestFailedBuildLeavesPreviousOutputIntact(t *testing.T) {
	needPacker(t)
	dir := t.TempDir()
	spec, out, cache := project(t, dir), filepath.Join(dir, "out"), filepath.Join(dir, "cache")
	good := buildSpec(t, spec, out, cache)
	os.WriteFile(spec, []byte("name = \"fx\"\n[[layer]]\nsource = \"dir:base\"\n[[layer]]\nsource = \"tar:missing.tar\"\n"), 0o644)
	s, err := images.Load(spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build(context.Background(), s, Options{Out: out, CacheDir: cache, Epoch: time.Unix(1700000000, 0)}); err == nil {
		t.Fatal("a build with a missing layer succeeded")
	}
	m, err := manifest.Read(good.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := manifest.Verify(good.Dir, m); err != nil {
		t.Fatalf("the previous output was damaged: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(out, ".*")); len(left) != 0 {
		t.Errorf("temporary files left in the output directory: %v", left)
	}
}
