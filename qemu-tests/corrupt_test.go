package qemutests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cavaliergopher/cpio"

	"github.com/plinth-dev/plinth/manifest"
	"github.com/plinth-dev/plinth/profiles/node"
)

// corruptEmbedded writes an initramfs that is the image's stage 1 followed by
// an embedded part whose rootfs has one byte flipped while rootfs.digest
// still names the good image — what a bad disk or a tampered file looks like.
func corruptEmbedded(t *testing.T, ctx context.Context, art string) string {
	t.Helper()
	m, err := manifest.Read(art)
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.ReadFile(filepath.Join(art, manifest.Rootfs))
	if err != nil {
		t.Fatal(err)
	}
	root[len(root)/2] ^= 0x5a
	stage1, err := os.ReadFile(filepath.Join(art, manifest.Initramfs))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "corrupt.cpio")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(stage1); err != nil {
		t.Fatal(err)
	}
	// The kernel reads concatenated archives; an uncompressed one must start
	// aligned, so pad with NULs as the builder does.
	if pad := (512 - len(stage1)%512) % 512; pad > 0 {
		f.Write(make([]byte, pad))
	}
	w := cpio.NewWriter(f)
	add := func(name string, mode cpio.FileMode, body []byte) {
		if err := w.WriteHeader(&cpio.Header{Name: name, Mode: mode, Size: int64(len(body))}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	add("plinth", cpio.TypeDir|0o755, nil)
	add("plinth/rootfs.squashfs", cpio.TypeReg|0o644, root)
	add("plinth/rootfs.digest", cpio.TypeReg|0o644, []byte(m.File(manifest.Rootfs).SHA256+"\n"))
	add("plinth/config.json", cpio.TypeReg|0o600, []byte(fmt.Sprintf(`{"version":%d,"machine":"smoke-1","hostname":"smoke-one"}`, node.SchemaVersion)))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}
