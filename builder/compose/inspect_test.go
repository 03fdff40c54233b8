package compose

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// newc returns an archive of the named files, each holding its name.
func newc(t testing.TB, names ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	a := newArchive(&buf, time.Unix(1700000000, 0))
	for _, n := range names {
		if err := a.bytes(n, 0o644, []byte("<"+n+">")); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstdOf(b []byte) []byte {
	e, _ := zstd.NewWriter(nil)
	defer e.Close()
	return e.EncodeAll(b, nil)
}

func gzipOf(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func pad(b []byte, n int) []byte {
	return append(b, make([]byte, (n-len(b)%n)%n)...)
}

// skippable is a zstd skippable frame, which decoders ignore.
func skippable(data string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 0x184d2a5a)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

type summary struct {
	name, comp  string
	part, archv int
}

func walkBytes(img []byte) ([]summary, []Entry, error) {
	var sum []summary
	var ents []Entry
	err := walk(bytes.NewReader(img), int64(len(img)), func(e Entry, r io.Reader) error {
		b, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		if e.Mode.IsRegular() && string(b) != "<"+e.Name+">" {
			return fmt.Errorf("%s holds %q", e.Name, b)
		}
		if e.Mode.IsRegular() {
			sum = append(sum, summary{e.Name, e.Compression, e.Part, e.Archive})
		}
		ents = append(ents, e)
		return nil
	})
	return sum, ents, err
}

func TestWalkReadsEveryPartLikeTheKernel(t *testing.T) {
	stage1 := zstdOf(append(newc(t, "bbin/init"), newc(t, "etc/plinth/modules")...))
	img := pad(append(stage1, skippable("x")...), 512)
	rawAt := len(img)
	img = append(img, newc(t, "plinth/rootfs.squashfs", "plinth/config.json")...)
	img = pad(img, 4)
	img = append(img, gzipOf(newc(t, "late"))...)
	img = append(img, gzipOf(newc(t, "later"))...)
	img = append(img, make([]byte, 7)...)

	sum, ents, err := walkBytes(img)
	if err != nil {
		t.Fatal(err)
	}
	want := []summary{
		{"bbin/init", "zstd", 0, 0},
		{"etc/plinth/modules", "zstd", 0, 1},
		{"plinth/rootfs.squashfs", "", 1, 0},
		{"plinth/config.json", "", 1, 0},
		{"late", "gzip", 2, 0},
		{"later", "gzip", 3, 0},
	}
	if fmt.Sprint(sum) != fmt.Sprint(want) {
		t.Errorf("entries\n got %v\nwant %v", sum, want)
	}
	for _, e := range ents {
		switch {
		case e.Name == "plinth/rootfs.squashfs":
			if e.PartOffset != int64(rawAt) || string(img[e.DataOffset:e.DataOffset+e.Size]) != "<plinth/rootfs.squashfs>" {
				t.Errorf("raw entry %+v", e)
			}
		case e.Compression != "" && e.DataOffset != -1:
			t.Errorf("compressed entry with a data offset: %+v", e)
		case e.Name == "etc/plinth" && (!e.Mode.IsDir() || e.Mode.Perm() != 0o755):
			t.Errorf("directory entry %+v", e)
		}
		if !e.ModTime.Equal(time.Unix(1700000000, 0)) {
			t.Errorf("%s: mtime %v", e.Name, e.ModTime)
		}
	}
}

func TestWalkRefusesWhatTheKernelRefuses(t *testing.T) {
	good := newc(t, "a")
	for _, tc := range []struct {
		name string
		img  []byte
		want string
	}{
		{"a raw archive off the 4-byte grid", append(append(zstdOf(good), 0), good...), "not 4-byte aligned"},
		{"junk between parts", append(pad(zstdOf(good), 4), "junkjunk"...), "neither a newc archive"},
		{"a truncated raw archive", good[:len(good)-200], "unexpected EOF"},
		{"a truncated zstd stream", zstdOf(good)[:20], "truncated"},
		{"a corrupt gzip stream", gzipOf(good)[:30], "unexpected EOF"},
		{"an old binary cpio", append([]byte("070707"), good[6:]...), "want newc"},
		{"a name without NUL", bytes.Replace(good, []byte("a\x00"), []byte("ab"), 1), "not NUL-terminated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := walkBytes(tc.img)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("walk = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestFileModeMapsCpioTypes(t *testing.T) {
	for m, want := range map[uint32]string{
		0o100644: "-rw-r--r--",
		0o040755: "drwxr-xr-x",
		0o120777: "Lrwxrwxrwx",
		0o020600: "Dcrw-------",
		0o060660: "Drw-rw----",
		0o010644: "prw-r--r--",
		0o041777: "dtrwxrwxrwx",
		0o104755: "urwxr-xr-x",
	} {
		if got := fileMode(m).String(); got != want {
			t.Errorf("%o: %s, want %s", m, got, want)
		}
	}
}

func FuzzWalk(f *testing.F) {
	good := newc(f, "a", "dir/b")
	f.Add(good)
	f.Add(append(pad(zstdOf(good), 4), good...))
	f.Add(append(gzipOf(good), zstdOf(good)...))
	f.Add(append(skippable("pad"), zstdOf(good)...))
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, img []byte) {
		err := walk(bytes.NewReader(img), int64(len(img)), func(e Entry, r io.Reader) error {
			n, err := io.Copy(io.Discard, r)
			if err != nil {
				return err
			}
			if n > e.Size {
				t.Errorf("%s: read %d of %d bytes", e.Name, n, e.Size)
			}
			if e.Compression == "" && (e.DataOffset < e.PartOffset || e.DataOffset+e.Size > int64(len(img))) {
				t.Errorf("%s: data at %d+%d outside the image of %d", e.Name, e.DataOffset, e.Size, len(img))
			}
			return nil
		})
		_ = err // malformed input must fail cleanly, not panic or hang
	})
}
