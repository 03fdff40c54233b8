package flatten

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
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

func layer(t *testing.T, ents ...ent) v1.Layer {
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
	var buf bytes.Buffer
	if _, err := Flatten(context.Background(), layers, &buf, Options{Epoch: time.Unix(42, 0)}); err != nil {
		t.Fatal(err)
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
	return o
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

func BenchmarkFlatten(b *testing.B) {
	t := &testing.T{}
	var ents []ent
	body := strings.Repeat("x", 64<<10)
	for i := 0; i < 800; i++ {
		ents = append(ents, ent{name: "d" + string(rune('a'+i%26)) + "/f" + strings.Repeat("0", i%5) + string(rune('a'+i/26%26)) + string(rune('a'+i%26)), typ: F, body: body})
	}
	layers := []v1.Layer{layer(t, ents...), layer(t, ents[:400]...)}
	b.SetBytes(int64(len(ents)+400) * int64(len(body)))
	for i := 0; i < b.N; i++ {
		if _, err := Flatten(context.Background(), layers, io.Discard, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
