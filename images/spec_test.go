package images

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/plinth-dev/plinth/internal/testutil"
	"github.com/plinth-dev/plinth/internal/tomlx"
)

// TestLoadReportsEveryProblemOfABadSpec loads each testdata/bad/*.toml and
// compares the whole report, one `file:line:col: field: msg` a line, with
// its .golden file.
func TestLoadReportsEveryProblemOfABadSpec(t *testing.T) {
	specs, _ := filepath.Glob("testdata/bad/*.toml")
	if len(specs) == 0 {
		t.Fatal("no testdata/bad/*.toml")
	}
	for _, p := range specs {
		t.Run(strings.TrimSuffix(filepath.Base(p), ".toml"), func(t *testing.T) {
			_, err := Load(p)
			if err == nil {
				t.Fatal("accepted")
			}
			var rep *tomlx.Report
			if !errors.As(err, &rep) {
				t.Fatalf("error %T is not a *tomlx.Report: %v", err, err)
			}
			for _, pr := range rep.Problems {
				if pr.Line == 0 {
					t.Errorf("problem without a position: %s", pr)
				}
			}
			testutil.Golden(t, strings.TrimSuffix(p, ".toml")+".golden", []byte(err.Error()+"\n"))
		})
	}
}

func TestLoadAppliesDefaultsVisibly(t *testing.T) {
	abs, _ := filepath.Abs("testdata/good")
	for _, tc := range []struct {
		file        string
		formats     []string
		compression string
		site        string
		kernel      bool
	}{
		{"smallest.toml", nil, "zstd", "", false},
		{"full.toml", []string{"netboot", "iso"}, "gzip", filepath.Join(abs, "../site"), true},
		{"inline.toml", []string{"netboot"}, "zstd", "", true},
	} {
		t.Run(tc.file, func(t *testing.T) {
			s, err := Load(filepath.Join("testdata/good", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(s.Output.Formats, tc.formats) || s.Output.Compression != tc.compression || s.Output.Site != tc.site {
				t.Errorf("output %+v, want formats %v compression %s site %s", s.Output, tc.formats, tc.compression, tc.site)
			}
			if (s.Kernel != nil) != tc.kernel || s.Dir != abs || s.File != filepath.Join("testdata/good", tc.file) {
				t.Errorf("kernel %v, dir %s, file %s", s.Kernel, s.Dir, s.File)
			}
		})
	}
}

func TestParseResolvesSourcesAgainstTheSpecDir(t *testing.T) {
	s, err := Parse("/specs/minion.toml", []byte(`name = "m"
[kernel]
source = "dir:kernel"
[[layer]]
source = "oci:./oci:base"
[[layer]]
source = "tar:/abs/extra.tar"
[[layer]]
source = "go:example.com/cmd/agent@v1.2.3"
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []Source{
		{Raw: "dir:kernel", Kind: KindDir, Path: "/specs/kernel"},
		{Raw: "oci:./oci:base", Kind: KindOCI, Path: "/specs/oci", Tag: "base"},
		{Raw: "tar:/abs/extra.tar", Kind: KindTar, Path: "/abs/extra.tar"},
		{Raw: "go:example.com/cmd/agent@v1.2.3", Kind: KindGo, Package: "example.com/cmd/agent", Version: "v1.2.3"},
	}
	if got := s.Sources(); !reflect.DeepEqual(got, want) {
		t.Errorf("Sources() =\n%+v\nwant\n%+v", got, want)
	}
}

func TestParseHashesTheSpecBytes(t *testing.T) {
	data := []byte("name = \"a\"\n[[layer]]\nsource = \"dir:/x\"\n")
	s, err := Parse("a.toml", data)
	if err != nil {
		t.Fatal(err)
	}
	// sha256sum of the bytes above, computed outside Go.
	const want = "sha256:5b8e1e4984fa7c6f843eadcb68631bdb29737cb1a9647e7760ef7d6885b194d9"
	if s.SHA256 != want {
		t.Errorf("SHA256 = %s, want %s", s.SHA256, want)
	}
}

func TestRootfsOnlySpecNeedsNoKernel(t *testing.T) {
	if _, err := Parse("r.toml", []byte("name = \"r\"\n[[layer]]\nsource = \"dir:/x\"\n[output]\ncompression = \"gzip\"\n")); err != nil {
		t.Errorf("rootfs-only spec refused: %v", err)
	}
	_, err := Parse("r.toml", []byte("name = \"r\"\n[[layer]]\nsource = \"dir:/x\"\n[output]\nformats = [\"netboot\"]\n"))
	if want := "r.toml:5:1: output.formats: netboot boot a kernel: add a [kernel] table, or leave formats out for a rootfs-only build"; err == nil || err.Error() != want {
		t.Errorf("explicit netboot without kernel: got %v, want %s", err, want)
	}
}

// TestValidateFileChecksWhatExistsOnDisk builds a spec dir whose sources,
// kernel tree and site are partly missing, and expects each named.
func TestValidateFileChecksWhatExistsOnDisk(t *testing.T) {
	dir := t.TempDir()
	mk := func(p, body string) {
		t.Helper()
		p = filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("oci/index.json", "{}")
	mk("notoci/x", "")
	mk("kernel/lib/modules/x", "")
	mk("base.tar", "")
	mk("site/site.toml", "[site]\nname = \"s\"\n[[machine]]\nname = \"node-1\"\nmac = \"52:54:00:00:00:01\"\nimage = \"a\"\n")
	spec := `name = "a"
[kernel]
source = "dir:kernel"
[[layer]]
source = "oci:oci:tag"
[[layer]]
source = "oci:notoci"
[[layer]]
source = "tar:base.tar"
[[layer]]
source = "tar:missing.tar"
[[layer]]
source = "dir:base.tar"
[[layer]]
source = "registry.example/a:1"
[output]
formats = ["iso"]
site    = "site"
machine = "node-2"
`
	mk("a.toml", spec)
	err := ValidateFile(filepath.Join(dir, "a.toml"))
	if err == nil {
		t.Fatal("accepted")
	}
	got := strings.ReplaceAll(err.Error(), dir, "DIR")
	want := "DIR/a.toml:3:1: kernel.source: DIR/kernel has no boot/vmlinuz-*\n" +
		"DIR/a.toml:7:1: layer[1].source: DIR/notoci is not an OCI image layout: DIR/notoci/index.json does not exist\n" +
		"DIR/a.toml:11:1: layer[3].source: DIR/missing.tar does not exist\n" +
		"DIR/a.toml:13:1: layer[4].source: DIR/base.tar is not a directory\n" +
		"DIR/a.toml:19:1: output.machine: no machine \"node-2\" in site DIR/site"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}

	// Fixing them all makes the spec valid; a broken site is reported with
	// its own positions.
	mk("kernel/boot/vmlinuz-6.1", "")
	fixed := strings.NewReplacer("oci:notoci", "oci:oci", "missing.tar", "base.tar", "dir:base.tar", "dir:kernel", "node-2", "node-1").Replace(spec)
	mk("a.toml", fixed)
	if err := ValidateFile(filepath.Join(dir, "a.toml")); err != nil {
		t.Errorf("fixed spec: %v", err)
	}
	mk("site/more.toml", "[[machine]]\nname = \"node-1\"\nuuid = \"x\"\nimage = \"a\"\n")
	err = ValidateFile(filepath.Join(dir, "a.toml"))
	if err == nil || !strings.Contains(err.Error(), "a.toml:18:1: output.site: site "+dir+"/site has problems") ||
		!strings.Contains(err.Error(), dir+"/site/more.toml:3:1: machine[0].uuid: \"x\" is not a UUID") {
		t.Errorf("broken site: %v", err)
	}
}

func TestValidateFileNamesAMissingFile(t *testing.T) {
	err := ValidateFile("testdata/nope.toml")
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "testdata/nope.toml") {
		t.Errorf("got %v", err)
	}
}

func FuzzParseSpec(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*/*.toml")
	for _, p := range seeds {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("[[layer]]\n[[layer]]\nx = '''\n[a]\n'''\n"))
	f.Add([]byte("a.\"b.c\" = [\n 1,\n]\n[x.y]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse("/specs/fuzz.toml", data)
		if err != nil {
			var rep *tomlx.Report
			if !errors.As(err, &rep) || err.Error() == "" {
				t.Fatalf("error %T %q is not a report", err, err)
			}
			return
		}
		if !nameRE.MatchString(s.Name) || len(s.Layers) == 0 || (s.Kernel != nil) != (len(s.Output.Formats) > 0) {
			t.Fatalf("accepted an invalid spec: %+v", s)
		}
		// What was accepted, written back as TOML, is accepted again and
		// means the same.
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(s); err != nil {
			t.Fatal(err)
		}
		again, err := Parse("/specs/fuzz.toml", buf.Bytes())
		if err != nil {
			t.Fatalf("re-encoded spec refused: %v\n%s", err, buf.Bytes())
		}
		again.SHA256 = s.SHA256
		if !reflect.DeepEqual(s, again) {
			t.Fatalf("re-encoded spec differs:\n%+v\n%+v", s, again)
		}
	})
}

func TestKernelDriversDefaultAndChecks(t *testing.T) {
	s, err := Parse("d.toml", []byte("name = \"d\"\n[kernel]\nsource = \"dir:k\"\n[[layer]]\nsource = \"dir:l\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Kernel.Drivers, []string{CommonSet}) {
		t.Errorf("default drivers %v, want [%s]", s.Kernel.Drivers, CommonSet)
	}
	s, err = Parse("d.toml", []byte("name = \"d\"\n[kernel]\nsource = \"dir:k\"\ndrivers = []\n[[layer]]\nsource = \"dir:l\"\n"))
	if err != nil || s.Kernel.Drivers == nil || len(s.Kernel.Drivers) != 0 {
		t.Errorf("drivers = []: %v, %v; want none", s.Kernel.Drivers, err)
	}
	_, err = Parse("d.toml", []byte("name = \"d\"\n[kernel]\nsource = \"dir:k\"\ndrivers = [\"@common\", \"bad/name\"]\n[[layer]]\nsource = \"dir:l\"\n[stage1]\nfirmware = \"go:example.com/x\"\n"))
	for _, want := range []string{"d.toml:4:", "kernel.drivers[1]: \"bad/name\" is not a module name", "stage1.firmware: firmware cannot come from a go: source"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}
