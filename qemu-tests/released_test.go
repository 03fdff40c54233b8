package qemutests

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/module"
	modzip "golang.org/x/mod/zip"

	"github.com/plinth-dev/plinth/manifest"
)

// releaseVersion is the version the tree is published as in the test's own
// module proxy: plinth as `go install …@version` would fetch it.
const releaseVersion = "v0.99.0"

// localProxy writes a file:// GOPROXY holding the tree's committed files as
// github.com/plinth-dev/plinth@releaseVersion, and returns the GOPROXY value:
// that proxy, then the user's module cache (which holds every dependency at
// the version go.sum names). Nothing else is reachable.
func localProxy(t *testing.T, dir string) string {
	t.Helper()
	files, err := exec.Command("git", "-C", srcDir, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Fatalf("git ls-files in %s: %v", srcDir, err)
	}
	tree := filepath.Join(dir, "tree")
	for _, f := range strings.Split(strings.TrimRight(string(files), "\x00"), "\x00") {
		src := filepath.Join(srcDir, f)
		fi, err := os.Lstat(src)
		if err != nil || !fi.Mode().IsRegular() {
			continue // deleted in the working tree, or a symlink (a module zip holds neither)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(tree, f), string(b))
	}
	mv := module.Version{Path: "github.com/plinth-dev/plinth", Version: releaseVersion}
	at := filepath.Join(dir, "proxy", "github.com", "plinth-dev", "plinth", "@v")
	if err := os.MkdirAll(at, 0o755); err != nil {
		t.Fatal(err)
	}
	var zb bytes.Buffer
	if err := modzip.CreateFromDir(&zb, mv, tree); err != nil {
		t.Fatalf("module zip of the tree: %v", err)
	}
	gomod, err := os.ReadFile(filepath.Join(tree, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(at, releaseVersion+".zip"), zb.String())
	writeFile(t, filepath.Join(at, releaseVersion+".mod"), string(gomod))
	writeFile(t, filepath.Join(at, releaseVersion+".info"), fmt.Sprintf(`{"Version":%q,"Time":"2026-12-01T00:00:00Z"}`, releaseVersion))
	writeFile(t, filepath.Join(at, "list"), releaseVersion+"\n")
	userCache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	return "file://" + filepath.Join(dir, "proxy") + ",file://" + filepath.Join(strings.TrimSpace(string(userCache)), "cache", "download")
}

// isolatedGo is an environment with no plinth tree, a module cache of its
// own (empty at first), the given GOPROXY and no checksum database (the
// version exists only in the local proxy; plinth checks the module's hash
// against its own build info instead).
func isolatedGo(modcache, proxy string) []string {
	var env []string
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "PLINTH_SRC", "PLINTH_CACHE", "GOFLAGS", "GOPROXY", "GOMODCACHE", "GONOSUMDB", "GOPRIVATE", "GOSUMDB", "GOTOOLCHAIN", "GOWORK":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "GOMODCACHE="+modcache, "GOPROXY="+proxy, "GOSUMDB=off", "GOTOOLCHAIN=local", "CGO_ENABLED=0")
}

// run runs a command with no network (a new, empty network namespace) and
// returns its combined output.
func runOffline(t *testing.T, ctx context.Context, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, "unshare", append([]string{"-n", name}, args...)...)
	cmd.Dir, cmd.Env = dir, env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// cleanModcache removes a module cache (its files are read-only on disk).
func cleanModcache(t *testing.T, env []string) {
	t.Cleanup(func() {
		c := exec.Command("go", "clean", "-modcache")
		c.Env = env
		_ = c.Run()
	})
}

// TestReleasedPlinthBuildsWithoutTheTree installs plinth the way a CI job
// does — `go install github.com/plinth-dev/plinth/cmd/plinth@VERSION` from
// a clean module cache, here through a local module proxy holding the tree
// as that version — copies the binary into an empty directory and builds an
// image with a kernel there, with no source tree, no network and another
// empty module cache. The initramfs and rootfs must be the very bytes a
// build from the tree makes. The same binary with no proxy at all must say
// which module and version it could not get.
func TestReleasedPlinthBuildsWithoutTheTree(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	need(t, filepath.Join(fixtures, "kernel", ".done"), filepath.Join(fixtures, "oci", "index.json"))
	for _, tool := range []string{"unshare", "git"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing", tool)
		}
	}
	work := t.TempDir()
	proxy := localProxy(t, work)

	// go install, as a CI job types it.
	start := time.Now()
	installEnv := append(isolatedGo(filepath.Join(work, "modcache-install"), proxy), "GOBIN="+filepath.Join(work, "bin"))
	cleanModcache(t, installEnv)
	empty := filepath.Join(work, "elsewhere")
	if err := os.MkdirAll(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := runOffline(t, ctx, empty, installEnv, "go", "install", "github.com/plinth-dev/plinth/cmd/plinth@"+releaseVersion); err != nil {
		t.Fatalf("go install plinth@%s: %v\n%s", releaseVersion, err, out)
	}
	tInstall := time.Since(start)

	// The binary alone, in a directory with nothing else.
	dir := filepath.Join(work, "ci")
	bin := filepath.Join(dir, "plinth")
	copyExe(t, filepath.Join(work, "bin", "plinth"), bin)
	spec := fmt.Sprintf(`
name = "released"

[kernel]
source  = "dir:%s"
cmdline = "console=ttyS0"

[[layer]]
source = "oci:%s:debian-base"

[output]
formats = ["netboot"]
`, filepath.Join(fixtures, "kernel"), filepath.Join(fixtures, "oci"))
	writeFile(t, filepath.Join(dir, "released.toml"), spec)

	// No proxy and an empty cache: a clear error naming what it lacks.
	noProxy := isolatedGo(filepath.Join(work, "modcache-none"), "off")
	out, err := runOffline(t, ctx, dir, noProxy, bin, "build", "--out", "artifacts", "--cache", "cache-none", "released.toml")
	if err == nil {
		t.Fatalf("a build with GOPROXY=off and no plinth source succeeded:\n%s", out)
	}
	if want := "github.com/plinth-dev/plinth@" + releaseVersion; !strings.Contains(out, want) {
		t.Errorf("the error does not name %s:\n%s", want, out)
	}

	start = time.Now()
	buildEnv := isolatedGo(filepath.Join(work, "modcache-build"), proxy)
	cleanModcache(t, buildEnv)
	out, err = runOffline(t, ctx, dir, buildEnv, bin, "build", "--out", "artifacts", "--cache", "cache", "released.toml")
	if err != nil {
		t.Fatalf("plinth build from the installed binary: %v\n%s", err, out)
	}
	tBuild := time.Since(start)
	if !regexp.MustCompile(`stage 1 from plinth's module source.*version=` + regexp.QuoteMeta(releaseVersion)).MatchString(out) {
		t.Errorf("the build did not say it compiled stage 1 from plinth %s's module:\n%s", releaseVersion, out)
	}
	if !strings.Contains(out, "compiling initramfs busybox") {
		t.Errorf("the build did not compile stage 1 (a cache it should not have?):\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(work, "modcache-build", "github.com", "plinth-dev", "plinth@"+releaseVersion, "go.mod")); err != nil {
		t.Errorf("plinth's source did not come through the module proxy: %v", err)
	}
	released, err := manifest.Read(filepath.Join(dir, "artifacts", "released"))
	if err != nil {
		t.Fatal(err)
	}

	// The same spec built from the tree.
	treeDir := t.TempDir()
	writeFile(t, filepath.Join(treeDir, "released.toml"), spec)
	plinth(t, ctx, "build", "--out", filepath.Join(treeDir, "artifacts"), filepath.Join(treeDir, "released.toml"))
	tree, err := manifest.Read(filepath.Join(treeDir, "artifacts", "released"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{manifest.Initramfs, manifest.Rootfs, manifest.KernelFile} {
		r, tr := released.File(name), tree.File(name)
		if r == nil || tr == nil {
			t.Fatalf("%s missing from a manifest (released %v, tree %v)", name, r != nil, tr != nil)
		}
		if r.SHA256 != tr.SHA256 {
			t.Errorf("%s: the released binary built %s, the tree %s", name, r.SHA256, tr.SHA256)
		}
	}
	// The air-gapped path with the same binary: plinth mirror carries
	// plinth's own module beside the others, and the far side, with an
	// empty module cache and no proxy at all, builds the same bytes.
	out, err = runOffline(t, ctx, dir, buildEnv, bin, "mirror", "--to", "mirror", "--cache", "cache", "released.toml")
	if err != nil {
		t.Fatalf("plinth mirror from the installed binary: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "mirror", "goproxy", "github.com", "plinth-dev", "plinth", "@v", releaseVersion+".zip")); err != nil {
		t.Errorf("the mirror lacks plinth's own module: %v", err)
	}
	far := isolatedGo(filepath.Join(work, "modcache-far"), "off")
	cleanModcache(t, far)
	out, err = runOffline(t, ctx, dir, far, bin, "build", "--mirror", "mirror", "--out", "far-artifacts", "--cache", "cache-far", filepath.Join("mirror", "specs", "released.toml"))
	if err != nil {
		t.Fatalf("offline build from the mirror with the installed binary: %v\n%s", err, out)
	}
	farM, err := manifest.Read(filepath.Join(dir, "far-artifacts", "released"))
	if err != nil {
		t.Fatal(err)
	}
	if a, b := farM.File(manifest.Initramfs).SHA256, tree.File(manifest.Initramfs).SHA256; a != b {
		t.Errorf("the offline build from the mirror made initramfs %s, the tree %s", a, b)
	}

	figure(t, "released plinth: go install from an empty module cache %.0fs; build with a kernel from the binary alone %.0fs (stage-1 compile included); initramfs %s",
		tInstall.Seconds(), tBuild.Seconds(), released.File(manifest.Initramfs).SHA256)
}

func copyExe(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
