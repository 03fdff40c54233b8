package mirror

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/builder"
	"github.com/plinth-dev/plinth/builder/kernel"
	"github.com/plinth-dev/plinth/builder/ocitar"
	"github.com/plinth-dev/plinth/builder/source"
	"github.com/plinth-dev/plinth/builder/squashfs"
	"github.com/plinth-dev/plinth/images"
	"github.com/plinth-dev/plinth/internal/testutil"
	"github.com/plinth-dev/plinth/manifest"
)

var epoch = time.Unix(1700000000, 0).UTC()

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

const fakeDep = `kernel/fs/squashfs/squashfs.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/net/llc/llc.ko:
`

// project writes a kernel tree, a dir: layer, a tar: layer, an OCI layout
// and two specs using them (one rootfs-only) under root.
func project(t *testing.T, root string) (kernelSpec, rootfsSpec string) {
	t.Helper()
	k := filepath.Join(root, "kernel")
	write(t, filepath.Join(k, "boot", "vmlinuz-6.1.0-test"), "kernel image")
	md := filepath.Join(k, "lib", "modules", "6.1.0-test")
	write(t, filepath.Join(md, "modules.dep"), fakeDep)
	write(t, filepath.Join(md, "modules.builtin"), "kernel/drivers/block/loop.ko\nkernel/fs/overlayfs/overlay.ko\nkernel/net/packet/af_packet.ko\n")
	for _, m := range []string{"fs/squashfs/squashfs", "drivers/net/virtio_net", "drivers/net/net_failover", "net/core/failover", "net/llc/llc"} {
		write(t, filepath.Join(md, "kernel", m+".ko"), "module "+m)
	}
	write(t, filepath.Join(root, "base", "etc", "os-release"), "ID=fixture\n")
	write(t, filepath.Join(root, "base", "usr", "bin", "tool"), "#!/bin/sh\n")
	write(t, filepath.Join(root, "top", "etc", "motd"), "welcome\n")
	tarPath := filepath.Join(root, "top.tar")
	var buf bytes.Buffer
	if err := ocitar.WriteDirTar(filepath.Join(root, "top"), epoch, &buf); err != nil {
		t.Fatal(err)
	}
	write(t, tarPath, buf.String())
	l, err := ocitar.LayerFromDir(filepath.Join(root, "base"), t.TempDir(), epoch)
	if err != nil {
		t.Fatal(err)
	}
	img, err := ocitar.ImageFromLayers(epoch, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := ocitar.WriteLayout(filepath.Join(root, "oci"), "base", img); err != nil {
		t.Fatal(err)
	}
	kernelSpec = filepath.Join(root, "specs", "node.toml")
	write(t, kernelSpec, `name = "node"
[kernel]
source  = "dir:../kernel"
modules = ["virtio_net", "loop"]
[[layer]]
source = "oci:../oci:base"
[[layer]]
source = "tar:../top.tar"
`)
	rootfsSpec = filepath.Join(root, "specs", "fx.toml")
	write(t, rootfsSpec, `name = "fx"
[[layer]]
source = "oci:../oci:base"
[[layer]]
source = "dir:../top"
`)
	return kernelSpec, rootfsSpec
}

func load(t *testing.T, paths ...string) []*images.Spec {
	t.Helper()
	var out []*images.Spec
	for _, p := range paths {
		s, err := images.Load(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// tree reads every file under dir.
func tree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestMirrorSameSpecsSameBytes(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	ks, fs := project(t, root)
	a, b := filepath.Join(root, "m1"), filepath.Join(root, "m2")
	idx, err := Write(ctx, load(t, ks, fs), a, Options{CacheDir: filepath.Join(root, "cache1"), Epoch: epoch})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Write(ctx, load(t, fs, ks), b, Options{CacheDir: filepath.Join(root, "cache2"), Epoch: epoch}); err != nil {
		t.Fatal(err)
	}
	ta, tb := tree(t, a), tree(t, b)
	if len(ta) != len(tb) {
		t.Fatalf("%d files vs %d", len(ta), len(tb))
	}
	for n, c := range ta {
		if !bytes.Equal(c, tb[n]) {
			t.Errorf("%s differs between two mirrors of the same specs", n)
		}
	}
	// One image per (use, source) with the spec's own string on it.
	var got []string
	for _, e := range idx.Sources {
		got = append(got, e.Use+" "+e.Source+" "+strings.Join(e.Specs, ","))
	}
	want := "kernel dir:../kernel node|layer dir:../top fx|layer oci:../oci:base fx,node|layer tar:../top.tar node"
	if strings.Join(got, "|") != want {
		t.Errorf("sources:\n%s\nwant\n%s", strings.Join(got, "|"), want)
	}
	index := string(ta["index.json"])
	for _, s := range []string{`"dev.plinth.mirror.source": "oci:../oci:base"`, `"dev.plinth.mirror.use": "kernel"`} {
		if !strings.Contains(strings.ReplaceAll(index, `":"`, `": "`), s) {
			t.Errorf("index.json lacks %s:\n%s", s, index)
		}
	}
	if _, ok := ta["specs/node.toml"]; !ok {
		t.Error("the specs are not in the mirror")
	}
	// Writing again over a mirror replaces it; over anything else, no.
	if _, err := Write(ctx, load(t, fs), a, Options{CacheDir: filepath.Join(root, "cache1"), Epoch: epoch}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(a, "specs", "node.toml")); err == nil {
		t.Error("the old mirror's content survived a rewrite")
	}
	if _, err := Write(ctx, load(t, fs), filepath.Join(root, "base"), Options{CacheDir: filepath.Join(root, "cache1"), Epoch: epoch}); err == nil {
		t.Error("a directory that is not a mirror was replaced")
	}
}

// TestKernelMirrorKeepsWhatTheBuildTakes checks the trimmed kernel: from
// the mirror, the same kernel and the same module files resolve.
func TestKernelMirrorKeepsWhatTheBuildTakes(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	ks, _ := project(t, root)
	m := filepath.Join(root, "mirror")
	if _, err := Write(ctx, load(t, ks), m, Options{CacheDir: filepath.Join(root, "cache"), Epoch: epoch}); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(root, "kernel"))
	mr, err := Open(m)
	if err != nil {
		t.Fatal(err)
	}
	spec := load(t, filepath.Join(m, "specs", "node.toml"))[0]
	r := &source.Resolver{CacheDir: filepath.Join(root, "farcache"), Epoch: epoch}
	if err := mr.Rewrite(ctx, spec, r); err != nil {
		t.Fatal(err)
	}
	if spec.Kernel.Src.Kind != images.KindDir || spec.Kernel.Source != "dir:../kernel" {
		t.Fatalf("kernel source rewritten to %+v (%s)", spec.Kernel.Src, spec.Kernel.Source)
	}
	k, err := kernel.Find(spec.Kernel.Src.Path)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := k.Resolve(spec.Kernel.Modules)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, md := range mods {
		names = append(names, md.Name)
		b, err := os.ReadFile(filepath.Join(k.Tree, md.Path))
		if err != nil || !strings.HasPrefix(string(b), "module ") {
			t.Errorf("%s: %q %v", md.Path, b, err)
		}
	}
	if got := strings.Join(names, " "); got != "failover net_failover virtio_net" {
		t.Errorf("modules %s", got)
	}
	if _, err := os.Stat(filepath.Join(k.ModulesDir, "kernel", "net", "llc", "llc.ko")); err == nil {
		t.Error("a module no spec loads was mirrored")
	}
	// What stage 1 loads for itself, unnamed by the spec, is there too.
	if _, err := os.Stat(filepath.Join(k.ModulesDir, "kernel", "fs", "squashfs", "squashfs.ko")); err != nil {
		t.Errorf("stage 1's own squashfs module was not mirrored: %v", err)
	}
}

// TestOfflineBuildFromMirrorGivesTheSameArtifacts builds a spec online,
// mirrors it, deletes every original source and builds the mirror's copy of
// the spec offline: the manifests and the root file systems are identical.
func TestOfflineBuildFromMirrorGivesTheSameArtifacts(t *testing.T) {
	testutil.NeedTool(t, squashfs.Tool, "make deps")
	ctx := context.Background()
	root := t.TempDir()
	_, fxs := project(t, root)
	online, err := builder.Build(ctx, load(t, fxs)[0], builder.Options{Out: filepath.Join(root, "out1"), CacheDir: filepath.Join(root, "cache1"), Epoch: epoch})
	if err != nil {
		t.Fatal(err)
	}
	m := filepath.Join(root, "far", "mirror")
	if _, err := Write(ctx, load(t, fxs), m, Options{CacheDir: filepath.Join(root, "cache1"), Epoch: epoch}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"oci", "top", "base", "top.tar", "specs", "cache1"} {
		os.RemoveAll(filepath.Join(root, p))
	}
	mr, err := Open(m)
	if err != nil {
		t.Fatal(err)
	}
	spec := load(t, filepath.Join(m, "specs", "fx.toml"))[0]
	cache := filepath.Join(root, "far", "cache")
	if err := mr.Rewrite(ctx, spec, &source.Resolver{CacheDir: filepath.Join(cache, "sources"), Epoch: epoch}); err != nil {
		t.Fatal(err)
	}
	offline, err := builder.Build(ctx, spec, builder.Options{Out: filepath.Join(root, "far", "out"), CacheDir: cache, Epoch: epoch, Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(online.Dir, manifest.FileName))
	b, _ := os.ReadFile(filepath.Join(offline.Dir, manifest.FileName))
	if !bytes.Equal(a, b) {
		t.Errorf("manifests differ:\nonline:\n%s\noffline:\n%s", a, b)
	}
	ra, _ := os.ReadFile(filepath.Join(online.Dir, manifest.Rootfs))
	rb, _ := os.ReadFile(filepath.Join(offline.Dir, manifest.Rootfs))
	if !bytes.Equal(ra, rb) || len(ra) == 0 {
		t.Error("root file systems differ")
	}
}

func TestRewriteNamesEverySourceMissingFromTheMirror(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	ks, fxs := project(t, root)
	m := filepath.Join(root, "mirror")
	if _, err := Write(ctx, load(t, fxs), m, Options{CacheDir: filepath.Join(root, "cache"), Epoch: epoch}); err != nil {
		t.Fatal(err)
	}
	mr, err := Open(m)
	if err != nil {
		t.Fatal(err)
	}
	err = mr.Rewrite(ctx, load(t, ks)[0], &source.Resolver{CacheDir: filepath.Join(root, "c2"), Epoch: epoch})
	for _, want := range []string{"node.toml: kernel.source dir:../kernel: not in mirror", "node.toml: layer[1] tar:../top.tar: not in mirror"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
	if err != nil && strings.Contains(err.Error(), "layer[0]") {
		t.Errorf("a mirrored source was reported missing: %v", err)
	}
}

func TestMirrorRefusesOneStringForTwoSources(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "a", "x", "f"), "a")
	write(t, filepath.Join(root, "b", "x", "f"), "b")
	write(t, filepath.Join(root, "a", "s.toml"), "name = \"a\"\n[[layer]]\nsource = \"dir:./x\"\n")
	write(t, filepath.Join(root, "b", "s.toml"), "name = \"b\"\n[[layer]]\nsource = \"dir:./x\"\n")
	_, err := Write(context.Background(), load(t, filepath.Join(root, "a", "s.toml"), filepath.Join(root, "b", "s.toml")),
		filepath.Join(root, "m"), Options{CacheDir: filepath.Join(root, "cache"), Epoch: epoch})
	if err == nil || !strings.Contains(err.Error(), `b/s.toml: layer source "dir:./x" means `+filepath.Join(root, "b", "x")) {
		t.Fatalf("want the clash named, got %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "m")); err == nil {
		t.Error("a mirror was written anyway")
	}
}
