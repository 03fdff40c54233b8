package ociart

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/plinth-dev/plinth/manifest"
)

// artifactDir writes a small built image: three files and their manifest.
func artifactDir(t *testing.T) (string, *manifest.Manifest) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "demo")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Schema: manifest.Schema, Name: "demo", Role: "etcd", SpecSHA256: "sha256:" + strings.Repeat("0", 64)}
	for name, body := range map[string]string{manifest.KernelFile: "kernel bytes", manifest.Initramfs: "initramfs bytes", manifest.Rootfs: strings.Repeat("rootfs ", 4096)} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		d, n, err := manifest.FileDigest(p)
		if err != nil {
			t.Fatal(err)
		}
		m.Files = append(m.Files, manifest.File{Name: name, SHA256: d, Size: n})
	}
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, manifest.FileName), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, m
}

// corrupting wraps a registry so that blob downloads whose path holds
// digest come back with one byte flipped.
func corrupting(h http.Handler, digest *string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if *digest == "" || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/"+*digest) {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if len(body) > 0 {
			body[len(body)/2] ^= 0xff
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
	})
}

func TestPushThenPullGivesTheSameFilesAndRefusesACorruptedBlob(t *testing.T) {
	var corrupt string
	srv := httptest.NewServer(corrupting(registry.New(registry.Logger(log.New(io.Discard, "", 0))), &corrupt))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // no credentials: anonymous
	o := Options{}
	dir, m := artifactDir(t)

	d, err := Push(ctx, dir, host+"/plinth/demo:v1", o)
	if err != nil {
		t.Fatal(err)
	}
	// The registry's manifest is a plinth artifact whose layers are the
	// files, by the digests manifest.json names.
	desc, err := remote.Get(d)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(desc.Manifest, []byte(`"artifactType":"`+ArtifactType+`"`)) {
		t.Errorf("manifest has no artifactType %s:\n%s", ArtifactType, desc.Manifest)
	}
	for _, f := range m.Files {
		if !bytes.Contains(desc.Manifest, []byte(f.SHA256)) {
			t.Errorf("manifest does not name %s by %s", f.Name, f.SHA256)
		}
	}
	// Pushing again gives the same digest (nothing in it varies).
	d2, err := Push(ctx, dir, host+"/plinth/demo:v2", o)
	if err != nil || d2.DigestStr() != d.DigestStr() {
		t.Errorf("second push: %v, digest %s then %s", err, d.DigestStr(), d2.DigestStr())
	}

	cache := t.TempDir()
	got, err := Pull(ctx, d.String(), cache, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range append(m.Files, manifest.File{Name: manifest.FileName}) {
		a, _ := os.ReadFile(filepath.Join(dir, f.Name))
		b, err := os.ReadFile(filepath.Join(got, f.Name))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s pulled differs from the pushed file (err %v)", f.Name, err)
		}
	}

	// A blob that does not match its digest: refused, nothing kept.
	corrupt = m.File(manifest.Rootfs).SHA256
	fresh := t.TempDir()
	_, err = Pull(ctx, d.String(), fresh, o)
	if err == nil || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), manifest.Rootfs) {
		t.Fatalf("a corrupted rootfs blob: err %v, want a refusal naming %s", err, manifest.Rootfs)
	}
	if ents, _ := os.ReadDir(filepath.Join(fresh, "pulled")); len(ents) != 0 {
		t.Errorf("the refused pull left %d entries in the cache", len(ents))
	}
	// The pulled copy in the first cache is used without the registry.
	corrupt = ""
	srv.Close()
	if again, err := Pull(ctx, d.String(), cache, o); err != nil || again != got {
		t.Errorf("pull from cache: %v (%s, want %s)", err, again, got)
	}
}

func TestPullNeedsADigestAndAPlinthArtifact(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // no credentials: anonymous
	o := Options{}
	if _, err := Pull(context.Background(), host+"/plinth/demo:v1", t.TempDir(), o); err == nil || !strings.Contains(err.Error(), "pinned by digest") {
		t.Errorf("a tag: %v, want an error asking for a digest", err)
	}
	// An ordinary manifest (no artifactType) is not a plinth image.
	raw := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[]}`)
	ref, _ := name.ParseReference(host + "/other/thing:v1")
	if err := remote.WriteLayer(ref.Context(), fileBlob{data: emptyConfig, desc: mustEmpty(t)}); err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(ref, rawManifest{raw: raw}); err != nil {
		t.Fatal(err)
	}
	h, _, _ := v1.SHA256(bytes.NewReader(raw))
	_, err := Pull(context.Background(), ref.Context().Digest(h.String()).String(), t.TempDir(), o)
	if err == nil || !strings.Contains(err.Error(), "not a plinth image") {
		t.Errorf("an ordinary manifest: %v, want 'not a plinth image'", err)
	}
}

func TestPushRefusesFilesThatDoNotMatchTheManifest(t *testing.T) {
	dir, _ := artifactDir(t)
	if err := os.WriteFile(filepath.Join(dir, manifest.Rootfs), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Push(context.Background(), dir, "127.0.0.1:1/plinth/demo:v1", Options{})
	if err == nil || !strings.Contains(err.Error(), "not pushed") {
		t.Errorf("push of a changed file: %v, want 'not pushed'", err)
	}
	_, err = Push(context.Background(), filepath.Dir(dir), "127.0.0.1:1/plinth/demo:v1", Options{})
	if err == nil || !strings.Contains(err.Error(), "not a built image") {
		t.Errorf("push of the artifacts root: %v, want 'not a built image'", err)
	}
}

func mustEmpty(t *testing.T) v1.Descriptor {
	t.Helper()
	h, n, err := v1.SHA256(bytes.NewReader(emptyConfig))
	if err != nil {
		t.Fatal(err)
	}
	return v1.Descriptor{MediaType: emptyType, Size: n, Digest: h}
}
