package ocitar

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/internal/testutil"
)

var epoch = time.Unix(1700000000, 0).UTC()

// tree makes a small tree with the file kinds a root filesystem has.
func tree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "usr", "bin"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "usr", "bin", "ping"), []byte("ping"), 0o755))
	must(os.Chmod(filepath.Join(dir, "usr", "bin", "ping"), 0o755|os.ModeSetuid))
	must(os.Link(filepath.Join(dir, "usr", "bin", "ping"), filepath.Join(dir, "usr", "bin", "ping6")))
	must(os.Symlink("../../../etc/outside", filepath.Join(dir, "usr", "bin", "up")))
	must(os.MkdirAll(filepath.Join(dir, "home", "u"), 0o700))
	must(os.Chown(filepath.Join(dir, "home", "u"), 1000, 1000))
	return dir
}

func readTar(t *testing.T, r io.Reader) (map[string]*tar.Header, []string) {
	t.Helper()
	tr := tar.NewReader(r)
	hs := map[string]*tar.Header{}
	var order []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return hs, order
		}
		if err != nil {
			t.Fatal(err)
		}
		hs[h.Name] = h
		order = append(order, h.Name)
	}
}

func TestWriteDirTarKeepsKindsOwnersAndLinks(t *testing.T) {
	testutil.NeedRoot(t, "chown")
	dir := tree(t)
	var buf bytes.Buffer
	if err := WriteDirTar(dir, epoch, &buf); err != nil {
		t.Fatal(err)
	}
	hs, order := readTar(t, &buf)
	if got := strings.Join(order, " "); got != "home/ home/u/ usr/ usr/bin/ usr/bin/ping usr/bin/ping6 usr/bin/up" {
		t.Errorf("order %s", got)
	}
	if h := hs["usr/bin/ping"]; h.Typeflag != tar.TypeReg || h.Mode&0o7777 != 0o4755 || h.Size != 4 {
		t.Errorf("ping: %+v", h)
	}
	if h := hs["usr/bin/ping6"]; h.Typeflag != tar.TypeLink || h.Linkname != "usr/bin/ping" {
		t.Errorf("ping6 should link to the first path: %+v", h)
	}
	if h := hs["usr/bin/up"]; h.Typeflag != tar.TypeSymlink || h.Linkname != "../../../etc/outside" {
		t.Errorf("up: %+v", h)
	}
	if h := hs["home/u/"]; h.Uid != 1000 || h.Gid != 1000 || h.Mode&0o777 != 0o700 {
		t.Errorf("home/u: %+v", h)
	}
	for n, h := range hs {
		if !h.ModTime.Equal(epoch) || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: mtime %v owner names %q/%q", n, h.ModTime, h.Uname, h.Gname)
		}
	}
}

func TestWriteDirTarKeepsDeviceNodesFifosAndXattrs(t *testing.T) {
	dir := t.TempDir()
	err := unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))
	testutil.Need(t, err == nil, "mknod (needs CAP_MKNOD): %v", err)
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "ping")
	if err := os.WriteFile(bin, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	capv := "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
	err = unix.Lsetxattr(bin, "security.capability", []byte(capv), 0)
	testutil.Need(t, err == nil, "setxattr security.capability (needs CAP_SETFCAP): %v", err)
	var buf bytes.Buffer
	if err := WriteDirTar(dir, epoch, &buf); err != nil {
		t.Fatal(err)
	}
	hs, _ := readTar(t, &buf)
	if h := hs["null"]; h == nil || h.Typeflag != tar.TypeChar || h.Devmajor != 1 || h.Devminor != 3 {
		t.Errorf("null: %+v", h)
	}
	if h := hs["fifo"]; h == nil || h.Typeflag != tar.TypeFifo {
		t.Errorf("fifo: %+v", h)
	}
	if h := hs["ping"]; h == nil || h.PAXRecords["SCHILY.xattr.security.capability"] != capv {
		t.Errorf("ping lost its capability: %+v", h)
	}
}

func TestLayerFromDirIsDeterministicZstd(t *testing.T) {
	dir := tree(t)
	// Enough content for the encoder to work on several blocks.
	big := bytes.Repeat([]byte("plinth layer content "), 300000)
	if err := os.WriteFile(filepath.Join(dir, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := LayerFromDir(dir, t.TempDir(), epoch)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LayerFromDir(dir, t.TempDir(), epoch)
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Fatalf("same tree, digests %s and %s", da, db)
	}
	if mt, _ := a.MediaType(); mt != types.OCILayerZStd {
		t.Errorf("media type %s", mt)
	}
	rc, err := a.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	head := make([]byte, 4)
	io.ReadFull(rc, head)
	if !bytes.Equal(head, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
		t.Errorf("blob starts %x, want the zstd magic", head)
	}
}

// blobDigest hashes what a layer's Compressed stream really yields.
func blobDigest(t *testing.T, l v1.Layer) string {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatal(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func TestLayerFromTarDetectsCompressionAndLabelsItTruly(t *testing.T) {
	var plain bytes.Buffer
	tw := tar.NewWriter(&plain)
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
	tw.Write(body)
	tw.Close()
	var gz, zs bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(plain.Bytes())
	gw.Close()
	zw, _ := zstd.NewWriter(&zs)
	zw.Write(plain.Bytes())
	zw.Close()

	for _, tc := range []struct {
		name  string
		data  []byte
		mt    types.MediaType
		magic []byte
	}{
		{"plain", plain.Bytes(), types.OCILayerZStd, []byte{0x28, 0xb5, 0x2f, 0xfd}},
		{"gzip", gz.Bytes(), types.OCILayer, []byte{0x1f, 0x8b}},
		{"zstd", zs.Bytes(), types.OCILayerZStd, []byte{0x28, 0xb5, 0x2f, 0xfd}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "l.tar")
			os.WriteFile(p, tc.data, 0o644)
			l, err := LayerFromTar(p)
			if err != nil {
				t.Fatal(err)
			}
			if mt, _ := l.MediaType(); mt != tc.mt {
				t.Errorf("media type %s, want %s", mt, tc.mt)
			}
			rc, _ := l.Compressed()
			head := make([]byte, len(tc.magic))
			io.ReadFull(rc, head)
			rc.Close()
			if !bytes.Equal(head, tc.magic) {
				t.Errorf("blob starts %x, want %x", head, tc.magic)
			}
			// The blob read later must still match the digest taken first
			// (a plain tar is compressed again on every read).
			d, _ := l.Digest()
			if got := blobDigest(t, l); got != d.String() {
				t.Errorf("blob hashes to %s, digest says %s", got, d)
			}
			diff, _ := l.DiffID()
			if want := sha256.Sum256(plain.Bytes()); diff.Hex != hex.EncodeToString(want[:]) {
				t.Errorf("diff id %s is not the hash of the tar", diff)
			}
		})
	}
}

func TestImageFromLayersHasFixedPlatformAndTime(t *testing.T) {
	l, err := LayerFromDir(tree(t), t.TempDir(), epoch)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ImageFromLayers(epoch, l)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := a.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" || !cf.Created.Time.Equal(epoch) {
		t.Errorf("config: os %s arch %s created %v", cf.OS, cf.Architecture, cf.Created)
	}
	if len(cf.RootFS.DiffIDs) != 1 {
		t.Errorf("diff ids %v", cf.RootFS.DiffIDs)
	}
	if mt, _ := a.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s", mt)
	}
	b, _ := ImageFromLayers(epoch, l)
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Errorf("same layers, image digests %s and %s", da, db)
	}
}

func TestWriteLayoutReplacesTheSameTag(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "oci")
	img := func(content string) v1.Image {
		src := t.TempDir()
		os.WriteFile(filepath.Join(src, "f"), []byte(content), 0o644)
		l, err := LayerFromDir(src, t.TempDir(), epoch)
		if err != nil {
			t.Fatal(err)
		}
		i, err := ImageFromLayers(epoch, l)
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	one, two := img("1"), img("2")
	for _, step := range []struct {
		tag string
		img v1.Image
	}{{"a", one}, {"b", two}, {"a", two}, {"a", two}} {
		if err := WriteLayout(dir, step.tag, step.img); err != nil {
			t.Fatal(err)
		}
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := p.ImageIndex()
	im, _ := idx.IndexManifest()
	d2, _ := two.Digest()
	tags := map[string]v1.Hash{}
	for _, d := range im.Manifests {
		if _, dup := tags[d.Annotations[RefName]]; dup {
			t.Errorf("tag %s appears twice", d.Annotations[RefName])
		}
		tags[d.Annotations[RefName]] = d.Digest
	}
	if len(tags) != 2 || tags["a"] != d2 || tags["b"] != d2 {
		t.Errorf("layout tags %v, want a and b both at %s", tags, d2)
	}
	// Every blob the layout names must be there and hash to its name.
	got, err := p.Image(d2)
	if err != nil {
		t.Fatal(err)
	}
	ls, _ := got.Layers()
	for _, l := range ls {
		d, _ := l.Digest()
		if bd := blobDigest(t, l); bd != d.String() {
			t.Errorf("blob %s hashes to %s", d, bd)
		}
	}
}
