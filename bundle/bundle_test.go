package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/manifest"
)

var epoch = time.Unix(1700000000, 0).UTC()

// fakeImage writes an artifact directory with a manifest listing its files.
func fakeImage(t *testing.T, dir, name string, files map[string]string) {
	t.Helper()
	d := filepath.Join(dir, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Schema: manifest.Schema, Name: name, SpecSHA256: "sha256:" + strings.Repeat("0", 64)}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(d, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(c))
		m.Files = append(m.Files, manifest.File{Name: n, SHA256: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(c))})
	}
	data, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, manifest.FileName), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for n, c := range files {
		p := filepath.Join(root, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// inputs makes two images, a mirror and a site under dir.
func inputs(t *testing.T, dir string) Options {
	t.Helper()
	art := filepath.Join(dir, "artifacts")
	fakeImage(t, art, "base", map[string]string{
		"vmlinuz":            strings.Repeat("kernel", 1000),
		"initramfs.cpio.zst": strings.Repeat("initrd", 700),
		"rootfs.squashfs":    strings.Repeat("rootfs", 3000),
	})
	fakeImage(t, art, "etcd", map[string]string{"rootfs.squashfs": strings.Repeat("etcd", 500)})
	// A stray file beside the artifacts is not the build's and stays out.
	writeTree(t, filepath.Join(art, "base"), map[string]string{"notes.txt": "mine"})
	writeTree(t, filepath.Join(dir, "mirror"), map[string]string{
		"oci-layout": `{"imageLayoutVersion":"1.0.0"}`, "index.json": "{}",
		"blobs/sha256/" + strings.Repeat("a", 64):                                    "blob",
		"goproxy/github.com/some/really/long/module/path/that/goes/on/@v/v1.0.0.zip": strings.Repeat("z", 300),
	})
	writeTree(t, filepath.Join(dir, "site"), map[string]string{"site.toml": "[site]\nname = \"x\"\n"})
	return Options{Artifacts: art, Mirror: filepath.Join(dir, "mirror"), Site: filepath.Join(dir, "site"), Epoch: epoch}
}

func TestBundleSameInputsSameBytes(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	o := inputs(t, dir)
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	ma, da, err := Write(ctx, a, o)
	if err != nil {
		t.Fatal(err)
	}
	// Touch every input: host mtimes must not reach the bundle.
	later := time.Now().Add(time.Hour)
	_ = filepath.Walk(dir, func(p string, _ os.FileInfo, _ error) error { return os.Chtimes(p, later, later) })
	_, db, err := Write(ctx, b, o)
	if err != nil {
		t.Fatal(err)
	}
	ba, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ba, bb) || da != db {
		t.Fatalf("two bundles of the same inputs differ: %s vs %s", da, db)
	}
	sum := sha256.Sum256(ba)
	side, _ := os.ReadFile(a + ".sha256")
	if want := hex.EncodeToString(sum[:]) + "  a.tar\n"; string(side) != want {
		t.Errorf("a.tar.sha256 = %q, want %q", side, want)
	}
	if strings.Contains(strings.Join(names(t, a), " "), "notes.txt") {
		t.Error("a file the build did not list was packed")
	}
	if got := strings.Join(ma.Images, ","); got != "base,etcd" {
		t.Errorf("images %s, want base,etcd", got)
	}
	// Every header: root-owned, the epoch's mtime, sorted, manifest first.
	tr := tar.NewReader(bytes.NewReader(ba))
	prev := ""
	for i := 0; ; i++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 && h.Name != ManifestName {
			t.Errorf("first entry %s, want %s", h.Name, ManifestName)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(epoch) || h.Mode != 0o644 || h.Uname != "" {
			t.Errorf("%s: uid %d gid %d mtime %s mode %o uname %q", h.Name, h.Uid, h.Gid, h.ModTime, h.Mode, h.Uname)
		}
		if i > 1 && h.Name <= prev {
			t.Errorf("%s after %s: not sorted", h.Name, prev)
		}
		prev = h.Name
	}
	if _, err := Verify(ctx, a, unsigned); err != nil {
		t.Fatalf("a fresh bundle does not verify: %v", err)
	}
}

// entryOffsets maps each tar entry to the offset and size of its data.
func entryOffsets(t *testing.T, file string) map[string][2]int64 {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	out := map[string][2]int64{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		off, _ := f.Seek(0, io.SeekCurrent)
		out[h.Name] = [2]int64{off, h.Size}
	}
}

func names(t *testing.T, file string) []string {
	var out []string
	for n := range entryOffsets(t, file) {
		out = append(out, n)
	}
	return out
}

func flip(t *testing.T, file string, off int64) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyNamesAFlippedByteInEveryFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	o := inputs(t, dir)
	good := filepath.Join(dir, "good.tar")
	m, _, err := Write(ctx, good, o)
	if err != nil {
		t.Fatal(err)
	}
	orig, _ := os.ReadFile(good)
	offs := entryOffsets(t, good)
	for _, f := range m.Files {
		t.Run(f.Name, func(t *testing.T) {
			bad := filepath.Join(t.TempDir(), "bad.tar")
			if err := os.WriteFile(bad, orig, 0o644); err != nil {
				t.Fatal(err)
			}
			side, _ := os.ReadFile(good + ".sha256")
			_ = os.WriteFile(bad+".sha256", side, 0o644)
			at := offs[f.Name]
			flip(t, bad, at[0]+at[1]/2)
			_, err := Verify(ctx, bad, unsigned)
			if err == nil {
				t.Fatal("a flipped byte was not caught")
			}
			sum := sha256.Sum256(func() []byte { b, _ := os.ReadFile(bad); return b[at[0] : at[0]+at[1]] }())
			actual := "sha256:" + hex.EncodeToString(sum[:])
			want := fmt.Sprintf("%s: %s, %s says %s", f.Name, actual, ManifestName, f.SHA256)
			if !strings.Contains(err.Error(), want) || !errors.Is(err, ErrMismatch) {
				t.Errorf("error does not name the file with both digests (%q):\n%v", want, err)
			}
			if !strings.Contains(err.Error(), "bad.tar: sha256:") || !strings.Contains(err.Error(), "bad.tar.sha256 says") {
				t.Errorf("error does not say the whole bundle differs from its .sha256:\n%v", err)
			}
		})
	}
}

func TestVerifyCatchesATruncatedBundle(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	o := inputs(t, dir)
	p := filepath.Join(dir, "b.tar")
	if _, _, err := Write(ctx, p, o); err != nil {
		t.Fatal(err)
	}
	at := entryOffsets(t, p)["artifacts/etcd/manifest.json"]
	if err := os.Truncate(p, at[0]); err != nil {
		t.Fatal(err)
	}
	_, err := Verify(ctx, p, unsigned)
	if err == nil || !strings.Contains(err.Error(), "artifacts/etcd/rootfs.squashfs: missing from the bundle") {
		t.Fatalf("want the missing files named, got %v", err)
	}
}

func TestBundleRefusesACorruptArtifact(t *testing.T) {
	dir := t.TempDir()
	o := inputs(t, dir)
	flip(t, filepath.Join(o.Artifacts, "etcd", "rootfs.squashfs"), 3)
	_, _, err := Write(context.Background(), filepath.Join(dir, "b.tar"), o)
	if err == nil || !strings.Contains(err.Error(), "rootfs.squashfs: sha256:") {
		t.Fatalf("want the corrupt artifact named, got %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "b.tar")); err == nil {
		t.Error("a bundle was written anyway")
	}
}

func TestVerifyArtifactsNamesTheFlippedFile(t *testing.T) {
	dir := t.TempDir()
	o := inputs(t, dir)
	if _, err := VerifyArtifacts(o.Artifacts); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"vmlinuz", "initramfs.cpio.zst", "rootfs.squashfs"} {
		p := filepath.Join(o.Artifacts, "base", n)
		flip(t, p, 10)
		_, err := VerifyArtifacts(filepath.Join(o.Artifacts, "base"))
		if err == nil || !strings.Contains(err.Error(), n+": sha256:") || !strings.Contains(err.Error(), "manifest says sha256:") {
			t.Errorf("%s: want it named with both digests, got %v", n, err)
		}
		flip(t, p, 10)
	}
}

func TestUnpackServesOnlyAVerifiedBundle(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	o := inputs(t, dir)
	p := filepath.Join(dir, "b.tar")
	if _, _, err := Write(ctx, p, o); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	got, res, err := Unpack(ctx, p, state, ServeSet, unsigned)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyArtifacts(filepath.Join(got, ArtifactsDir)); err != nil {
		t.Errorf("unpacked artifacts do not verify: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(got, SiteDir, "site.toml")); !strings.Contains(string(b), "[site]") {
		t.Error("site not unpacked")
	}
	if _, err := os.Stat(filepath.Join(got, MirrorDir)); err == nil {
		t.Error("the mirror was unpacked for serving")
	}
	// Unpacking again swaps a fresh copy in.
	again, _, err := Unpack(ctx, p, state, ServeSet, unsigned)
	if err != nil || again != got {
		t.Fatalf("second unpack: %s %v", again, err)
	}
	// A bad bundle leaves nothing behind.
	at := entryOffsets(t, p)["artifacts/base/vmlinuz"]
	flip(t, p, at[0])
	if _, _, err := Unpack(ctx, p, filepath.Join(dir, "state2"), nil, unsigned); err == nil {
		t.Fatal("a corrupt bundle was unpacked")
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "state2"))
	if len(ents) != 0 {
		t.Errorf("a failed unpack left %d entries", len(ents))
	}
	if res.Digest == "" || !res.Sidecar {
		t.Errorf("result %+v", res)
	}
}
