package bundle

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/plinth-dev/plinth/manifest"
)

// countingSink is a scan sink that writes nothing and counts, per entry,
// the bytes scan handed it.
type countingSink struct {
	mu sync.Mutex
	n  map[string]int64
}

type counter struct {
	s    *countingSink
	name string
}

func (c counter) Write(p []byte) (int, error) {
	c.s.mu.Lock()
	c.s.n[c.name] += int64(len(p))
	c.s.mu.Unlock()
	return len(p), nil
}
func (counter) Close() error { return nil }

func (s *countingSink) sink(name string) (io.WriteCloser, error) { return counter{s, name}, nil }

// bundleWithManifest is a tar whose first entry is a bundle manifest
// listing one file, name, as size bytes of content.
func bundleWithManifest(t testing.TB, tw *tar.Writer, name, content string) {
	t.Helper()
	sum := sha256.Sum256([]byte(content))
	m := Manifest{Schema: Schema, Files: []manifest.File{{Name: name, SHA256: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(content))}}}
	b, _ := json.Marshal(m)
	if err := tw.WriteHeader(&tar.Header{Name: ManifestName, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))}); err != nil {
		t.Fatal(err)
	}
	tw.Write(b)
}

// sparseEntry appends, as raw blocks, a PAX 1.0 sparse file: realSize
// bytes to whoever expands it, one block of data in the tar. (archive/tar
// reads these but will not write them.)
func sparseEntry(buf *bytes.Buffer, name string, realSize int64) {
	block := func(typ byte, name string, size int64) {
		var h [512]byte
		copy(h[0:], name)
		copy(h[100:], "0000644\x00")
		copy(h[108:], "0000000\x00")
		copy(h[116:], "0000000\x00")
		copy(h[124:], fmt.Sprintf("%011o\x00", size))
		copy(h[136:], "00000000000\x00")
		h[156] = typ
		copy(h[257:], "ustar\x0000")
		for i := 148; i < 156; i++ {
			h[i] = ' '
		}
		var sum int64
		for _, c := range h {
			sum += int64(c)
		}
		copy(h[148:], fmt.Sprintf("%06o\x00 ", sum))
		buf.Write(h[:])
	}
	pad := func(n int) { buf.Write(make([]byte, (512-n%512)%512)) }
	recs := ""
	for _, kv := range [][2]string{{"GNU.sparse.major", "1"}, {"GNU.sparse.minor", "0"}, {"GNU.sparse.name", name}, {"GNU.sparse.realsize", fmt.Sprint(realSize)}} {
		recs += paxRecord(kv[0], kv[1])
	}
	block('x', "PaxHeaders/x", int64(len(recs)))
	buf.WriteString(recs)
	pad(len(recs))
	// The sparse map (one fragment of 512 bytes at offset 0), then data.
	sparseMap := "1\n0\n512\n"
	block('0', "GNUSparseFile.0/x", int64(512+512))
	buf.WriteString(sparseMap)
	pad(len(sparseMap))
	buf.Write(bytes.Repeat([]byte("A"), 512))
}

// paxRecord is "LEN key=value\n" where LEN counts the whole record.
func paxRecord(k, v string) string {
	body := " " + k + "=" + v + "\n"
	n := len(body) + 1
	for len(fmt.Sprint(n))+len(body) != n {
		n++
	}
	return fmt.Sprint(n) + body
}

// The attack of issue 14: a bundle entry whose tar header (here a sparse
// file: 1 GiB to whoever expands it, 1 KiB in the tar) declares far more
// than the bundle manifest's size for it. Nothing of it is written; so for
// a plain entry longer than its manifest size: never more than that size.
func TestScanWritesNoMoreThanTheManifestSaysOfAnyEntry(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name  string
		entry func(*bytes.Buffer, *tar.Writer)
	}{
		{"sparse", func(buf *bytes.Buffer, tw *tar.Writer) {
			tw.Flush()
			sparseEntry(buf, "site/site.toml", 1<<30)
		}},
		{"long", func(buf *bytes.Buffer, tw *tar.Writer) {
			tw.WriteHeader(&tar.Header{Name: "site/site.toml", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5 << 20})
			tw.Write(bytes.Repeat([]byte("B"), 5<<20))
			tw.Flush()
		}},
	} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		bundleWithManifest(t, tw, "site/site.toml", "name = \"x\"\n")
		tc.entry(&buf, tw)
		buf.Write(make([]byte, 1024)) // end of archive
		file := filepath.Join(dir, tc.name+".tar")
		if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		if tc.name == "sparse" {
			// The entry is what it claims to be for archive/tar.
			tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
			tr.Next()
			h, err := tr.Next()
			if err != nil || h.Size != 1<<30 || h.Name != "site/site.toml" {
				t.Fatalf("test bundle: sparse entry %+v, %v", h, err)
			}
		}
		cs := &countingSink{n: map[string]int64{}}
		_, err := scan(context.Background(), file, cs.sink, unsigned)
		want := map[string]string{"sparse": "site/site.toml: a sparse entry", "long": "site/site.toml: size"}[tc.name]
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want the size named", tc.name, err)
		}
		if n := cs.n["site/site.toml"]; n > int64(len("name = \"x\"\n")) {
			t.Errorf("%s: %d bytes written for an entry of %d", tc.name, n, len("name = \"x\"\n"))
		}
		// And Unpack leaves nothing behind.
		state := filepath.Join(dir, tc.name+"-state")
		if _, _, err := Unpack(context.Background(), file, state, nil, unsigned); err == nil {
			t.Errorf("%s: unpacked", tc.name)
		}
		if left, _ := os.ReadDir(state); len(left) != 0 {
			t.Errorf("%s: left %v in the state directory", tc.name, left)
		}
	}
}

// FuzzScan: whatever the tar holds, scan hands no entry more bytes than the
// bundle manifest gives it, and what it accepts is what the manifest says.
func FuzzScan(f *testing.F) {
	var ok bytes.Buffer
	tw := tar.NewWriter(&ok)
	bundleWithManifest(f, tw, "site/site.toml", "abc")
	tw.WriteHeader(&tar.Header{Name: "site/site.toml", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3})
	tw.Write([]byte("abc"))
	tw.Close()
	f.Add(ok.Bytes())
	var sparse bytes.Buffer
	tw = tar.NewWriter(&sparse)
	bundleWithManifest(f, tw, "site/site.toml", "abc")
	tw.Flush()
	sparseEntry(&sparse, "site/site.toml", 1<<20)
	sparse.Write(make([]byte, 1024))
	f.Add(sparse.Bytes())
	f.Add([]byte("not a tar"))
	file := filepath.Join(f.TempDir(), "b.tar")
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(file, b, 0o644); err != nil {
			t.Fatal(err)
		}
		cs := &countingSink{n: map[string]int64{}}
		res, err := scan(context.Background(), file, cs.sink, unsigned)
		if res != nil && res.Manifest != nil {
			for name, n := range cs.n {
				if fl := res.Manifest.File(name); fl == nil || n > fl.Size {
					t.Fatalf("%s: %d bytes handed out, manifest entry %+v", name, n, fl)
				}
			}
		}
		if err != nil {
			return
		}
		for _, fl := range res.Manifest.Files {
			if cs.n[fl.Name] != fl.Size {
				t.Fatalf("accepted with %s at %d bytes, manifest says %d", fl.Name, cs.n[fl.Name], fl.Size)
			}
		}
	})
}
