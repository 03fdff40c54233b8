package mirror

import (
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/plinth-dev/plinth/manifest"
	"github.com/plinth-dev/plinth/ociart"
)

// TestMirrorKeepsPushedImagesForServingByDigest pushes a built image to a
// registry, mirrors it with no spec, and pulls it back from the mirror's
// layout by the same digest, with the registry gone; a blob damaged in the
// layout is refused.
func TestMirrorKeepsPushedImagesForServingByDigest(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	ctx := context.Background()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	art := filepath.Join(t.TempDir(), "node")
	m := &manifest.Manifest{Schema: manifest.Schema, Name: "node", SpecSHA256: "sha256:" + strings.Repeat("0", 64)}
	for name, body := range map[string]string{manifest.KernelFile: "kernel", manifest.Rootfs: strings.Repeat("root ", 1000)} {
		write(t, filepath.Join(art, name), body)
		d, n, err := manifest.FileDigest(filepath.Join(art, name))
		if err != nil {
			t.Fatal(err)
		}
		m.Files = append(m.Files, manifest.File{Name: name, SHA256: d, Size: n})
	}
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(art, manifest.FileName), string(b))
	ref, err := ociart.Push(ctx, art, strings.TrimPrefix(srv.URL, "http://")+"/plinth/node:v1", ociart.Options{})
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	dir := filepath.Join(root, "mirror")
	idx, err := Write(ctx, nil, dir, Options{CacheDir: filepath.Join(root, "cache"), Epoch: epoch, Images: []string{ref.String()}})
	if err != nil {
		t.Fatal(err)
	}
	if len(idx.Sources) != 1 || idx.Sources[0].Use != UseImage || idx.Sources[0].Digest != ref.DigestStr() {
		t.Fatalf("mirror index %+v, want the image at %s", idx.Sources, ref.DigestStr())
	}
	srv.Close()
	local := ociart.LayoutPrefix + dir + "@" + ref.DigestStr()
	got, err := ociart.Pull(ctx, local, filepath.Join(root, "far"), ociart.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range m.Files {
		a, _ := os.ReadFile(filepath.Join(art, f.Name))
		b, err := os.ReadFile(filepath.Join(got, f.Name))
		if err != nil || string(a) != string(b) {
			t.Errorf("%s from the mirror differs (err %v)", f.Name, err)
		}
	}
	// Damage the rootfs blob in the layout: a fresh pull refuses it.
	blob := filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(m.File(manifest.Rootfs).SHA256, "sha256:"))
	if err := os.WriteFile(blob, []byte(strings.Repeat("ruin ", 1000)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ociart.Pull(ctx, local, filepath.Join(root, "far2"), ociart.Options{}); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("a damaged blob in the mirror: %v, want a refusal", err)
	}
}
