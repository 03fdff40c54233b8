package compose

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"

	"github.com/plinth-dev/plinth/builder/kernel"
)

// testConfig composes plinth's real stage 1 with one fake module; the
// compiled busybox is cached across runs in the user's plinth cache.
func testConfig(t *testing.T) Config {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	src := filepath.Join(filepath.Dir(file), "..", "..")
	home, _ := os.UserHomeDir()
	tree := t.TempDir()
	mod := "lib/modules/6.1.0-test/kernel/fs/squashfs/squashfs.ko"
	os.MkdirAll(filepath.Join(tree, filepath.Dir(mod)), 0o755)
	os.WriteFile(filepath.Join(tree, mod), []byte("\x7fELF module"), 0o644)
	return Config{
		Commands:  []string{"github.com/plinth-dev/plinth/initramfs/cmd/init", "github.com/plinth-dev/plinth/initramfs/cmd/plinth-agent"},
		ModuleDir: tree,
		Modules:   []kernel.Module{{Name: "squashfs", Path: mod}},
		Cmdline:   "plinth.rescue=0",
		Epoch:     time.Unix(1700000000, 0),
		CacheDir:  filepath.Join(home, ".cache", "plinth", "initramfs"),
		WorkDir:   src,
	}
}

// entries lists the archives of the compressed part, then of the raw part.
func entries(t *testing.T, b []byte) (names map[string]cpio.Header, rawStart int) {
	t.Helper()
	names = map[string]cpio.Header{}
	zr, err := zstd.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	plain, err := io.ReadAll(zr)
	if err != nil && !strings.Contains(err.Error(), "magic") {
		t.Fatal(err)
	}
	read := func(data []byte) {
		for len(data) > 0 {
			r := cpio.NewReader(bytes.NewReader(data))
			n := 0
			for {
				h, err := r.Next()
				if errors.Is(err, io.EOF) || err != nil {
					break
				}
				names[h.Name] = *h
				n++
			}
			if n == 0 {
				return
			}
			// next archive: skip to the next "070701" after this one's trailer
			i := bytes.Index(data, []byte("TRAILER!!!"))
			if i < 0 {
				return
			}
			j := bytes.Index(data[i:], []byte("070701"))
			if j < 0 {
				return
			}
			data = data[i+j:]
		}
	}
	read(plain)
	if i := bytes.LastIndex(b, []byte("070701")); i > 0 {
		// the embedded part is the first cpio magic after the zstd stream
		for k := 0; k < len(b); k += 512 {
			if bytes.HasPrefix(b[k:], []byte("070701")) {
				rawStart = k
				read(b[k:])
				break
			}
		}
	}
	return names, rawStart
}

func TestComposeIsReproducibleAndHasTheStage1Layout(t *testing.T) {
	cfg := testConfig(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root.sqfs")
	os.WriteFile(root, bytes.Repeat([]byte("sqsh"), 1000), 0o644)
	cfg.CACert = []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	cfg.Embedded = &Embedded{Rootfs: root, RootfsDigest: "sha256:" + strings.Repeat("0", 64), Config: []byte(`{"hostname":"a"}`)}
	a, b := filepath.Join(dir, "a.cpio.zst"), filepath.Join(dir, "b.cpio.zst")
	ctx := context.Background()
	if err := Build(ctx, cfg, a); err != nil {
		t.Fatal(err)
	}
	if err := Build(ctx, cfg, b); err != nil {
		t.Fatal(err)
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb) {
		t.Fatal("two builds of one config differ")
	}
	names, rawStart := entries(t, ab)
	for _, want := range []string{"init", "bbin/bb", "bbin/plinth-agent", ModulesList, CmdlineFile, CACertFile, cfg.Modules[0].Path, RootfsFile, DigestFile, ConfigFile} {
		if _, ok := names[want]; !ok {
			t.Errorf("initramfs lacks %s", want)
		}
	}
	if h := names["init"]; h.Linkname != "bbin/init" {
		t.Errorf("/init -> %q, want bbin/init", h.Linkname)
	}
	if rawStart == 0 || rawStart%512 != 0 {
		t.Errorf("embedded part at %d, want a 512-byte boundary after the compressed part", rawStart)
	}
	if h := names[ConfigFile]; h.Mode.Perm() != 0o600 || !h.ModTime.Equal(cfg.Epoch) || h.Uid != 0 {
		t.Errorf("config entry %+v", h)
	}
	t.Logf("figure: stage 1 + 1 module: %d bytes compressed before the embedded part", rawStart)
}
