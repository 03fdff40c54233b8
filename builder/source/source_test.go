package source

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/plinth-dev/plinth/builder/ocitar"
	"github.com/plinth-dev/plinth/images"
	"github.com/plinth-dev/plinth/internal/testutil"
)

var epoch = time.Unix(1700000000, 0)

// files lists the regular files of an image with their contents.
func files(t *testing.T, img v1.Image) map[string]string {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range ls {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(tr)
			if h.Typeflag == tar.TypeReg {
				out[h.Name] = string(b)
			}
		}
		rc.Close()
	}
	return out
}

func treeImage(t *testing.T, content string) v1.Image {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	os.WriteFile(filepath.Join(dir, "etc", "motd"), []byte(content), 0o644)
	l, err := ocitar.LayerFromDir(dir, "", epoch)
	if err != nil {
		t.Fatal(err)
	}
	img, err := ocitar.ImageFromLayers(epoch, l)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func resolve(t *testing.T, r *Resolver, raw string) v1.Image {
	t.Helper()
	s, err := images.ParseSource(raw, "/")
	if err != nil {
		t.Fatal(err)
	}
	img, err := r.Image(context.Background(), s)
	if err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	return img
}

func TestOCILayoutPicksImageByTag(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "oci")
	if err := ocitar.WriteLayout(dir, "one", treeImage(t, "1")); err != nil {
		t.Fatal(err)
	}
	if err := ocitar.WriteLayout(dir, "two", treeImage(t, "2")); err != nil {
		t.Fatal(err)
	}
	// Writing a tag again replaces it rather than adding a second image.
	if err := ocitar.WriteLayout(dir, "two", treeImage(t, "2b")); err != nil {
		t.Fatal(err)
	}
	r := &Resolver{}
	if got := files(t, resolve(t, r, "oci:"+dir+":two"))["etc/motd"]; got != "2b" {
		t.Errorf("oci:...:two has etc/motd %q, want 2b", got)
	}
	s, _ := images.ParseSource("oci:"+dir, "/")
	if _, err := r.Image(context.Background(), s); err == nil || !strings.Contains(err.Error(), "tags: one, two") {
		t.Errorf("an untagged reference to a layout of two images: %v", err)
	}
	s, _ = images.ParseSource("oci:"+dir+":three", "/")
	if _, err := r.Image(context.Background(), s); err == nil || !strings.Contains(err.Error(), `no image tagged "three"`) {
		t.Errorf("missing tag: %v", err)
	}
}

func TestDockerArchiveSource(t *testing.T) {
	p := filepath.Join(t.TempDir(), "img.tar")
	tag, _ := name.NewTag("example.org/fx:1")
	if err := tarball.WriteToFile(p, tag, treeImage(t, "docker")); err != nil {
		t.Fatal(err)
	}
	if got := files(t, resolve(t, &Resolver{}, "docker-archive:"+p))["etc/motd"]; got != "docker" {
		t.Errorf("etc/motd %q", got)
	}
}

func TestDirAndTarSourcesAreReproducible(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "usr", "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "usr", "bin", "tool"), []byte("#!/bin/sh\n"), 0o755)
	os.Link(filepath.Join(dir, "usr", "bin", "tool"), filepath.Join(dir, "usr", "bin", "tool2"))
	os.Symlink("../../outside", filepath.Join(dir, "usr", "bin", "up"))
	r := &Resolver{Epoch: epoch}
	a, b := resolve(t, r, "dir:"+dir), resolve(t, r, "dir:"+dir)
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Errorf("same tree, different digests %s %s", da, db)
	}
	if files(t, a)["usr/bin/tool"] != "#!/bin/sh\n" {
		t.Error("dir source lost usr/bin/tool")
	}
	var buf bytes.Buffer
	if err := ocitar.WriteDirTar(dir, epoch, &buf); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	kinds := map[string]byte{}
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		kinds[h.Name] = h.Typeflag
		if !h.ModTime.Equal(epoch) {
			t.Errorf("%s mtime %v", h.Name, h.ModTime)
		}
	}
	if kinds["usr/bin/tool2"] != tar.TypeLink || kinds["usr/bin/up"] != tar.TypeSymlink {
		t.Errorf("hardlink or symlink lost: %v", kinds)
	}
	tp := filepath.Join(t.TempDir(), "t.tar")
	buf.Reset()
	ocitar.WriteDirTar(dir, epoch, &buf)
	os.WriteFile(tp, buf.Bytes(), 0o644)
	if files(t, resolve(t, r, "tar:"+tp))["usr/bin/tool"] != "#!/bin/sh\n" {
		t.Error("tar source lost usr/bin/tool")
	}
}

func TestRegistrySourcePinnedByDigestIsFetchedOnce(t *testing.T) {
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	img := treeImage(t, "pulled")
	ref, _ := name.NewTag(u.Host + "/fx/base:1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	pinned := u.Host + "/fx/base@" + d.String()
	r := &Resolver{CacheDir: t.TempDir()}
	got := resolve(t, r, pinned)
	if files(t, got)["etc/motd"] != "pulled" {
		t.Fatal("pulled image content differs")
	}
	srv.Close() // the registry is gone: the cache must answer
	r.Offline = true
	again := resolve(t, r, pinned)
	if dd, _ := again.Digest(); dd != d {
		t.Errorf("cached digest %s, want %s", dd, d)
	}
	s, _ := images.ParseSource(u.Host+"/fx/base:1", "/")
	if _, err := r.Image(context.Background(), s); !errors.Is(err, ErrOffline) {
		t.Errorf("an unpinned tag offline: %v, want ErrOffline", err)
	}
}

func TestGoSourceBuildsStaticBinaryIntoUsrBin(t *testing.T) {
	testutil.NeedTool(t, "go", "see https://go.dev/doc/install")
	wd, _ := os.Getwd()
	r := &Resolver{Epoch: epoch, BaseDir: wd, CacheDir: t.TempDir()}
	img := resolve(t, r, "go:github.com/plinth-dev/plinth/builder/source/testdata/hello")
	fs := files(t, img)
	bin, ok := fs["usr/bin/hello"]
	if !ok {
		t.Fatalf("no usr/bin/hello in %v", fs)
	}
	if !strings.HasPrefix(bin, "\x7fELF") {
		t.Fatal("usr/bin/hello is not an ELF binary")
	}
	p := filepath.Join(t.TempDir(), "hello")
	os.WriteFile(p, []byte(bin), 0o755)
	out, err := exec.Command(p).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hello from a go: source") {
		t.Errorf("running it: %v %s", err, out)
	}
	if fo, _ := exec.Command("file", p).Output(); len(fo) > 0 && !strings.Contains(string(fo), "statically linked") {
		t.Errorf("not static: %s", fo)
	}
}

func TestBinaryNameSkipsMajorVersion(t *testing.T) {
	for in, want := range map[string]string{
		"go.etcd.io/etcd/etcdctl/v3":            "etcdctl",
		"github.com/u-root/u-root/cmds/core/ls": "ls",
		"example.com/v2":                        "example.com",
	} {
		if got := BinaryName(in); got != want {
			t.Errorf("BinaryName(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestTarSourceCacheFollowsTheFile(t *testing.T) {
	r := &Resolver{Epoch: epoch, CacheDir: t.TempDir()}
	p := filepath.Join(t.TempDir(), "t.tar")
	write := func(content string) {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Name: "etc/motd", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content))})
		tw.Write([]byte(content))
		tw.Close()
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("one")
	a, b := resolve(t, r, "tar:"+p), resolve(t, r, "tar:"+p)
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Errorf("same tar, digests %s and %s", da, db)
	}
	write("two")
	c := resolve(t, r, "tar:"+p)
	if got := files(t, c)["etc/motd"]; got != "two" {
		t.Errorf("after rewriting the tar, etc/motd is %q: a stale cache entry", got)
	}
	// Without a cache the digest is the same: the cache changes speed only.
	if dn, _ := resolve(t, &Resolver{Epoch: epoch}, "tar:"+p).Digest(); func() bool { dc, _ := c.Digest(); return dc != dn }() {
		t.Errorf("cached and uncached tar sources differ")
	}
}

func TestTreeUnpacksOnceByDigest(t *testing.T) {
	cache := t.TempDir()
	lay := filepath.Join(t.TempDir(), "oci")
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "boot"), 0o755)
	os.WriteFile(filepath.Join(src, "boot", "vmlinuz-6.1.0"), []byte("kernel"), 0o644)
	os.MkdirAll(filepath.Join(src, "lib", "modules", "6.1.0"), 0o755)
	os.Symlink("../../../boot/vmlinuz-6.1.0", filepath.Join(src, "lib", "modules", "6.1.0", "vmlinuz"))
	l, err := ocitar.LayerFromDir(src, "", epoch)
	if err != nil {
		t.Fatal(err)
	}
	img, _ := ocitar.ImageFromLayers(epoch, l)
	if err := ocitar.WriteLayout(lay, "kernel", img); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()

	r := &Resolver{Epoch: epoch, CacheDir: cache}
	s, _ := images.ParseSource("oci:"+lay+":kernel", "/")
	dir, dg, err := r.Tree(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if dg != want.String() {
		t.Errorf("digest %s, want the image digest %s", dg, want)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "boot", "vmlinuz-6.1.0")); err != nil || string(b) != "kernel" {
		t.Errorf("kernel file: %q %v", b, err)
	}
	if ln, _ := os.Readlink(filepath.Join(dir, "lib", "modules", "6.1.0", "vmlinuz")); ln != "../../../boot/vmlinuz-6.1.0" {
		t.Errorf("symlink %q", ln)
	}
	// A second call finds the tree by digest and leaves it alone.
	marker := filepath.Join(dir, "marker")
	os.WriteFile(marker, nil, 0o644)
	dir2, _, err := r.Tree(context.Background(), s)
	if err != nil || dir2 != dir {
		t.Fatalf("second Tree: %s %v", dir2, err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Error("the tree was unpacked again")
	}
	// A dir: source is used in place.
	ds, _ := images.ParseSource("dir:"+src, "/")
	if d, dg, err := r.Tree(context.Background(), ds); err != nil || d != src || dg != "" {
		t.Errorf("dir source: %s %q %v", d, dg, err)
	}
	if _, _, err := (&Resolver{}).Tree(context.Background(), s); err == nil {
		t.Error("unpacking without a cache directory should fail")
	}
}

// goProxy lays out a file:// module proxy holding one module with a main
// package at its root, so versioned go: sources build without the network.
func goProxy(t *testing.T, mod, version, msg string) string {
	t.Helper()
	dir := t.TempDir()
	vdir := filepath.Join(dir, filepath.FromSlash(mod), "@v")
	if err := os.MkdirAll(vdir, 0o755); err != nil {
		t.Fatal(err)
	}
	gomod := "module " + mod + "\n\ngo 1.22\n"
	main := "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"" + msg + "\") }\n"
	var zb bytes.Buffer
	zw := zip.NewWriter(&zb)
	for name, body := range map[string]string{"go.mod": gomod, "main.go": main} {
		w, _ := zw.Create(mod + "@" + version + "/" + name)
		io.WriteString(w, body)
	}
	zw.Close()
	for name, body := range map[string]string{
		"list":            version + "\n",
		version + ".info": `{"Version":"` + version + `","Time":"2024-01-01T00:00:00Z"}`,
		version + ".mod":  gomod,
		version + ".zip":  zb.String(),
	} {
		if err := os.WriteFile(filepath.Join(vdir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return "file://" + dir
}

func TestGoSourceWithVersionBuildsInThrowawayModuleAndIsCached(t *testing.T) {
	testutil.NeedTool(t, "go", "see https://go.dev/doc/install")
	proxy := goProxy(t, "example.com/greet/v2", "v2.1.0", "hello from a pinned module")
	base := []string{"GOSUMDB=off", "GOTOOLCHAIN=local", "GOMODCACHE=" + t.TempDir(), "GOFLAGS=-mod=mod -modcacherw"}
	r := &Resolver{Epoch: epoch, CacheDir: t.TempDir(), GoEnv: append(base, "GOPROXY="+proxy)}
	img := resolve(t, r, "go:example.com/greet/v2@v2.1.0")
	bin, ok := files(t, img)["usr/bin/greet"]
	if !ok {
		t.Fatalf("no usr/bin/greet (the name skips /v2) in %v", files(t, img))
	}
	p := filepath.Join(t.TempDir(), "greet")
	os.WriteFile(p, []byte(bin), 0o755)
	if out, err := exec.Command(p).CombinedOutput(); err != nil || !strings.Contains(string(out), "hello from a pinned module") {
		t.Errorf("running it: %v %s", err, out)
	}
	d1, _ := img.Digest()

	// Offline, with no proxy and an empty module cache, the pinned build is
	// served from the cache.
	off := &Resolver{Epoch: epoch, CacheDir: r.CacheDir, Offline: true, GoEnv: append(base, "GOMODCACHE="+t.TempDir())}
	again := resolve(t, off, "go:example.com/greet/v2@v2.1.0")
	if d2, _ := again.Digest(); d2 != d1 {
		t.Errorf("cached build digest %s, first build %s", d2, d1)
	}
	for _, raw := range []string{"go:example.com/greet/v2@v2.2.0", "go:example.com/greet/v2@latest"} {
		s, _ := images.ParseSource(raw, "/")
		if _, err := off.Image(context.Background(), s); !errors.Is(err, ErrOffline) {
			t.Errorf("%s offline: %v, want ErrOffline", raw, err)
		}
	}
}
