package flatten

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ent describes a tar entry for a test layer.
type ent struct {
	name string
	typ  byte
	body string // content, or link target
	mode int64
	uid  int
	xatt map[string]string
}

func layer(t testing.TB, ents ...ent) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, ModTime: time.Unix(1234567, 0), Uname: "builder"}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		switch e.typ {
		case tar.TypeReg:
			h.Size = int64(len(e.body))
		case tar.TypeSymlink, tar.TypeLink:
			h.Linkname = e.body
		case tar.TypeChar:
			h.Devmajor, h.Devminor = 1, 3
		}
		for k, v := range e.xatt {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

type out struct {
	hdrs  []*tar.Header
	files map[string]string
	raw   []byte
}

func run(t *testing.T, layers ...v1.Layer) out {
	t.Helper()
	o, _ := runStats(t, layers...)
	return o
}

func runStats(t *testing.T, layers ...v1.Layer) (out, Stats) {
	t.Helper()
	var buf bytes.Buffer
	st, err := Flatten(context.Background(), layers, &buf, Options{Epoch: time.Unix(42, 0)})
	if err != nil {
		t.Fatal(err)
	}
	// The in-memory spool (the fuzz target's) gives the same bytes.
	var mem bytes.Buffer
	mst, err := Flatten(context.Background(), layers, &mem, Options{Epoch: time.Unix(42, 0), InMemory: true})
	if err != nil || !bytes.Equal(mem.Bytes(), buf.Bytes()) || mst != st {
		t.Errorf("in memory: %v, %d bytes, %+v; on disk %d bytes, %+v", err, mem.Len(), mst, buf.Len(), st)
	}
	o := out{files: map[string]string{}, raw: buf.Bytes()}
	tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		o.hdrs = append(o.hdrs, h)
		o.files[h.Name] = string(b)
	}
	return o, st
}

func (o out) names() string {
	var n []string
	for _, h := range o.hdrs {
		n = append(n, h.Name)
	}
	return strings.Join(n, " ")
}

func (o out) hdr(name string) *tar.Header {
	for _, h := range o.hdrs {
		if h.Name == name {
			return h
		}
	}
	return nil
}

const D, F, L, S, C = tar.TypeDir, tar.TypeReg, tar.TypeLink, tar.TypeSymlink, tar.TypeChar

func TestWhiteoutsAcrossThreeLayersDeleteAndRecreate(t *testing.T) {
	base := layer(t,
		ent{name: "etc/", typ: D, mode: 0o755},
		ent{name: "etc/a", typ: F, body: "a0"},
		ent{name: "etc/b", typ: F, body: "b0"},
		ent{name: "var/", typ: D, mode: 0o755},
		ent{name: "var/cache/", typ: D, mode: 0o755},
		ent{name: "var/cache/x", typ: F, body: "x0"},
		ent{name: "opt/", typ: D, mode: 0o755},
		ent{name: "opt/old", typ: F, body: "old"},
	)
	mid := layer(t,
		ent{name: "etc/.wh.a", typ: F},          // delete a file
		ent{name: "var/.wh.cache", typ: F},      // delete a whole directory
		ent{name: "opt/", typ: D, mode: 0o700},  // opaque dir: lower contents gone
		ent{name: "opt/.wh..wh..opq", typ: F},   //
		ent{name: "opt/new", typ: F, body: "n"}, // same-layer sibling kept
	)
	top := layer(t,
		ent{name: "etc/a", typ: F, body: "a2"},       // re-created file
		ent{name: "var/cache/", typ: D, mode: 0o750}, // re-created directory, empty
		ent{name: "etc/.wh.b", typ: F},
		ent{name: "etc/b/", typ: D, mode: 0o755}, // a directory where a file was
		ent{name: "etc/b/c", typ: F, body: "c"},
	)
	o := run(t, base, mid, top)
	want := "etc/ etc/a etc/b/ etc/b/c opt/ opt/new var/ var/cache/"
	if got := o.names(); got != want {
		t.Errorf("entries:\n got %s\nwant %s", got, want)
	}
	if o.files["etc/a"] != "a2" {
		t.Errorf("etc/a = %q, want the re-created a2", o.files["etc/a"])
	}
	if h := o.hdr("opt/"); h == nil || h.Mode != 0o700 {
		t.Errorf("opaque dir lost its upper metadata: %+v", h)
	}
	if h := o.hdr("var/cache/"); h == nil || h.Mode != 0o750 {
		t.Errorf("re-created var/cache: %+v", h)
	}
	for _, h := range o.hdrs {
		if strings.Contains(h.Name, ".wh.") {
			t.Errorf("whiteout %s leaked into the output", h.Name)
		}
		if !h.ModTime.Equal(time.Unix(42, 0)) || h.Uname != "" {
			t.Errorf("%s: mtime %v uname %q, want the epoch and no names", h.Name, h.ModTime, h.Uname)
		}
	}
}

func TestFileReplacingDirectoryHidesItsContents(t *testing.T) {
	o := run(t,
		layer(t, ent{name: "srv/", typ: D, mode: 0o755}, ent{name: "srv/data", typ: F, body: "d"}),
		layer(t, ent{name: "srv", typ: S, body: "/mnt/srv"}),
	)
	if got := o.names(); got != "srv" {
		t.Errorf("entries %q, want only the symlink srv", got)
	}
}

func TestSymlinkOutsideRootIsKept(t *testing.T) {
	o := run(t, layer(t,
		ent{name: "usr/", typ: D, mode: 0o755},
		ent{name: "usr/lib/", typ: D, mode: 0o755},
		ent{name: "usr/lib/os-release", typ: S, body: "../../../../etc/os-release"},
		ent{name: "lib", typ: S, body: "usr/lib"},
	))
	if h := o.hdr("usr/lib/os-release"); h == nil || h.Linkname != "../../../../etc/os-release" {
		t.Fatalf("relative symlink leaving the root was dropped or changed: %+v", h)
	}
}

func TestHardlinkIsWrittenAfterItsTarget(t *testing.T) {
	// The link sorts before its target: the output must carry the content on
	// the first path and link the second to it.
	o := run(t, layer(t,
		ent{name: "z/", typ: D, mode: 0o755},
		ent{name: "z/target", typ: F, body: "payload", mode: 0o755},
		ent{name: "a", typ: L, body: "z/target"},
	))
	a, z := o.hdr("a"), o.hdr("z/target")
	if a == nil || z == nil {
		t.Fatalf("entries %s", o.names())
	}
	if a.Typeflag != tar.TypeReg || o.files["a"] != "payload" {
		t.Errorf("first path a: type %c content %q", a.Typeflag, o.files["a"])
	}
	if z.Typeflag != tar.TypeLink || z.Linkname != "a" {
		t.Errorf("second path z/target: type %c -> %q, want a hardlink to a", z.Typeflag, z.Linkname)
	}
}

func TestHardlinkWhoseTargetWasReplacedKeepsOldContent(t *testing.T) {
	o := run(t,
		layer(t, ent{name: "bin/", typ: D, mode: 0o755}, ent{name: "bin/a", typ: F, body: "v1"}, ent{name: "bin/b", typ: L, body: "bin/a"}),
		layer(t, ent{name: "bin/a", typ: F, body: "v2"}),
	)
	if o.files["bin/a"] != "v2" || o.files["bin/b"] != "v1" || o.hdr("bin/b").Typeflag != tar.TypeReg {
		t.Errorf("bin/a=%q bin/b=%q (%c)", o.files["bin/a"], o.files["bin/b"], o.hdr("bin/b").Typeflag)
	}
}

func TestDeviceNodesOwnersAndXattrsSurvive(t *testing.T) {
	o := run(t, layer(t,
		ent{name: "dev/", typ: D, mode: 0o755},
		ent{name: "dev/null", typ: C, mode: 0o666},
		ent{name: "home/", typ: D, mode: 0o755},
		ent{name: "home/u/", typ: D, mode: 0o700, uid: 1000},
		ent{name: "usr/bin/ping", typ: F, body: "p", mode: 0o4755, xatt: map[string]string{"security.capability": "\x01\x00\x00\x02"}},
	))
	if h := o.hdr("dev/null"); h == nil || h.Typeflag != tar.TypeChar || h.Devmajor != 1 || h.Devminor != 3 || h.Mode != 0o666 {
		t.Errorf("dev/null: %+v", h)
	}
	if h := o.hdr("home/u/"); h == nil || h.Uid != 1000 || h.Mode != 0o700 {
		t.Errorf("home/u: %+v", h)
	}
	h := o.hdr("usr/bin/ping")
	if h == nil || h.Mode != 0o4755 || h.PAXRecords["SCHILY.xattr.security.capability"] != "\x01\x00\x00\x02" {
		t.Errorf("usr/bin/ping lost setuid or its capability: %+v", h)
	}
}

func TestOutputIsSortedParentsFirstAndDeterministic(t *testing.T) {
	mk := func() []v1.Layer {
		return []v1.Layer{layer(t,
			ent{name: "a-b/", typ: D, mode: 0o755},
			ent{name: "a/", typ: D, mode: 0o755},
			ent{name: "a/z", typ: F, body: "1"},
			ent{name: "a.txt", typ: F, body: "2"},
		)}
	}
	o1, o2 := run(t, mk()...), run(t, mk()...)
	if !bytes.Equal(o1.raw, o2.raw) {
		t.Fatal("two runs differ")
	}
	names := strings.Split(o1.names(), " ")
	if !sort.SliceIsSorted(names, func(i, j int) bool {
		return pathLess(strings.TrimSuffix(names[i], "/"), strings.TrimSuffix(names[j], "/"))
	}) {
		t.Errorf("not sorted: %v", names)
	}
	if o1.names() != "a/ a/z a-b/ a.txt" {
		t.Errorf("order %q: a directory's contents must follow it directly", o1.names())
	}
}

func TestHiddenContentIsNotSpooled(t *testing.T) {
	big := strings.Repeat("x", 1<<20)
	o, st := runStats(t,
		layer(t, ent{name: "var/", typ: D, mode: 0o755}, ent{name: "var/big", typ: F, body: big}, ent{name: "var/keep", typ: F, body: "k"}),
		layer(t, ent{name: "var/.wh.big", typ: F}),
	)
	if o.names() != "var/ var/keep" {
		t.Errorf("entries %s", o.names())
	}
	if st.Spooled != 1 || st.Bytes != 1 {
		t.Errorf("spooled %d bytes and wrote %d, want only var/keep's 1", st.Spooled, st.Bytes)
	}
}

func TestHardlinkWhoseTargetWasDeletedBecomesRegularFile(t *testing.T) {
	o := run(t,
		layer(t, ent{name: "a", typ: F, body: "data"}, ent{name: "b", typ: L, body: "a"}),
		layer(t, ent{name: ".wh.a", typ: F}),
	)
	if o.names() != "b" || o.hdr("b").Typeflag != tar.TypeReg || o.files["b"] != "data" {
		t.Errorf("entries %s, b %+v %q", o.names(), o.hdr("b"), o.files["b"])
	}
}

func TestHardlinkIntoLowerLayer(t *testing.T) {
	o := run(t,
		layer(t, ent{name: "bin/", typ: D, mode: 0o755}, ent{name: "bin/tool", typ: F, body: "t"}),
		layer(t, ent{name: "0tool", typ: L, body: "bin/tool"}, ent{name: "bin/tool2", typ: L, body: "bin/tool"}),
	)
	if got := o.names(); got != "0tool bin/ bin/tool bin/tool2" {
		t.Fatalf("entries %s", got)
	}
	if h := o.hdr("0tool"); h.Typeflag != tar.TypeReg || o.files["0tool"] != "t" {
		t.Errorf("0tool (first in order) should carry the content: %+v", h)
	}
	for _, n := range []string{"bin/tool", "bin/tool2"} {
		if h := o.hdr(n); h.Typeflag != tar.TypeLink || h.Linkname != "0tool" {
			t.Errorf("%s: %c -> %q, want a link to 0tool", n, h.Typeflag, h.Linkname)
		}
	}
}

func TestHardlinkToSymlinkIsCopiedAndDanglingLinkDropped(t *testing.T) {
	o, st := runStats(t, layer(t,
		ent{name: "z", typ: S, body: "/etc/target"},
		ent{name: "a", typ: L, body: "z"},
		ent{name: "gone", typ: L, body: "nowhere"},
	))
	if o.names() != "a z" {
		t.Errorf("entries %s", o.names())
	}
	if h := o.hdr("a"); h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "/etc/target" {
		t.Errorf("a: %+v, want a copy of the symlink z", h)
	}
	if st.DroppedLinks != 1 {
		t.Errorf("dropped links %d, want 1", st.DroppedLinks)
	}
}

func TestMissingParentsAreMadeAndNothingIsWrittenThroughASymlink(t *testing.T) {
	o := run(t, layer(t,
		ent{name: "usr/share/doc/x", typ: F, body: "x"},
		ent{name: "lib", typ: S, body: "/etc"},
		ent{name: "lib/passwd", typ: F, body: "evil"},
	))
	if got := o.names(); got != "lib usr/ usr/share/ usr/share/doc/ usr/share/doc/x" {
		t.Fatalf("entries %s", got)
	}
	if h := o.hdr("usr/share/"); h.Mode != 0o755 || h.Uid != 0 || h.Typeflag != tar.TypeDir {
		t.Errorf("made parent: %+v", h)
	}
}

func TestCancelledContextStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Flatten(ctx, []v1.Layer{layer(t, ent{name: "a", typ: F, body: "a"})}, io.Discard, Options{})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err %v, want context.Canceled", err)
	}
}

// tarBytes makes a plain tar for fuzz seeds.
func tarBytes(ents ...ent) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644}
		if e.typ == F {
			h.Size = int64(len(e.body))
		} else {
			h.Linkname = e.body
		}
		tw.WriteHeader(h)
		if e.typ == F {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

// rawLayer is b as an uncompressed layer: no gzip on the way (a fuzz
// input would spend its time compressing).
func rawLayer(b []byte) (v1.Layer, error) {
	return static.NewLayer(b, types.OCIUncompressedLayer), nil
}

// FuzzFlatten feeds two arbitrary layers and checks the output's invariants:
// a readable tar, sorted parents first, no whiteouts, every parent present
// and a directory, every hardlink after its target.
func FuzzFlatten(f *testing.F) {
	f.Add(tarBytes(ent{name: "a/", typ: D}, ent{name: "a/b", typ: F, body: "1"}, ent{name: "c", typ: L, body: "a/b"}),
		tarBytes(ent{name: "a/.wh..wh..opq", typ: F}, ent{name: ".wh.c", typ: F}, ent{name: "a", typ: S, body: "../x"}))
	f.Add(tarBytes(ent{name: "x", typ: F, body: "1"}, ent{name: "y", typ: L, body: "x"}),
		tarBytes(ent{name: "x/", typ: D}, ent{name: "x/../../e", typ: F, body: "2"}, ent{name: "./", typ: D}))
	f.Add([]byte("not a tar"), []byte{})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		la, err := rawLayer(a)
		if err != nil {
			return
		}
		lb, err := rawLayer(b)
		if err != nil {
			return
		}
		var buf bytes.Buffer
		// In memory: a temporary directory and a file per entry would
		// cost more than the flattening (~250 executions/s on disk).
		if _, err := Flatten(context.Background(), []v1.Layer{la, lb}, &buf, Options{InMemory: true}); err != nil {
			return // malformed input may fail, but must not panic
		}
		tr := tar.NewReader(&buf)
		kinds := map[string]byte{}
		prev := ""
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("output unreadable: %v", err)
			}
			p := strings.TrimSuffix(h.Name, "/")
			if p == "." {
				p = ""
			}
			if strings.Contains(h.Name, ".wh.") {
				t.Errorf("whiteout %q in output", h.Name)
			}
			if prev != "" && !pathLess(prev, p) {
				t.Errorf("%q after %q", p, prev)
			}
			if d := parentDir(p); d != "" && kinds[d] != tar.TypeDir {
				t.Errorf("%q without a directory parent (%q is %q)", p, d, kinds[d])
			}
			if h.Typeflag == tar.TypeLink {
				if k, ok := kinds[h.Linkname]; !ok || k != tar.TypeReg {
					t.Errorf("hardlink %q to %q, not an earlier file", p, h.Linkname)
				}
			}
			kinds[p] = h.Typeflag
			prev = p
		}
	})
}

// BenchmarkFlatten flattens a generated three-layer image of ~100 MB of
// gzip-compressed content, where upper layers replace and delete part of
// the lower ones.
func BenchmarkFlatten(b *testing.B) {
	const fileSize = 64 << 10
	body := make([]byte, fileSize)
	for i := range body {
		body[i] = byte(i*7 + i/251) // compressible, but not trivially
	}
	var total int64
	mk := func(n int, prefix string, extra ...ent) v1.Layer {
		var buf bytes.Buffer
		gw := gzip.NewWriter(&buf)
		tw := tar.NewWriter(gw)
		for i := 0; i < n; i++ {
			name := fmt.Sprintf("usr/lib/%s%02d/f%05d", prefix, i%64, i)
			tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: fileSize})
			tw.Write(body)
			total += fileSize
		}
		for _, e := range extra {
			tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644})
		}
		tw.Close()
		gw.Close()
		raw := buf.Bytes()
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
		if err != nil {
			b.Fatal(err)
		}
		return l
	}
	layers := []v1.Layer{
		mk(800, "a"),
		mk(400, "a", ent{name: "usr/lib/a00/.wh..wh..opq", typ: F}),
		mk(400, "b", ent{name: "usr/lib/a01/.wh.f00001", typ: F}),
	}
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Flatten(context.Background(), layers, io.Discard, Options{Spool: b.TempDir()}); err != nil {
			b.Fatal(err)
		}
	}
}
