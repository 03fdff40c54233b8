package images

import (
	"errors"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/internal/tomlx"
)

func TestParseSmallestSpecGetsDefaults(t *testing.T) {
	s, err := Parse("/specs/fx.toml", []byte("name = \"fx\"\n[[layer]]\nsource = \"oci:./oci:fixture\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Layers[0].Src.Kind != KindOCI || s.Layers[0].Src.Path != "/specs/oci" || s.Layers[0].Src.Tag != "fixture" {
		t.Errorf("layer source parsed as %+v", s.Layers[0].Src)
	}
	if strings.Join(s.Output.Formats, ",") != "netboot" || s.Output.Compression != "zstd" {
		t.Errorf("defaults not applied: %+v", s.Output)
	}
	if !strings.HasPrefix(s.SHA256, "sha256:") || len(s.SHA256) != 71 {
		t.Errorf("spec hash %q", s.SHA256)
	}
}

func TestParseReportsEachProblemWithPosition(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"syntax", "name = \n", []string{"f.toml:1:8: syntax: expected value but found '\\n' instead"}},
		{"missing name and layers", "description = \"x\"\n", []string{
			"f.toml: name: missing: this field is required",
			"f.toml: layer: missing: this field is required"}},
		{"unknown top-level key", "name = \"a\"\nbogus = 1\n[[layer]]\nsource = \"dir:/x\"\n",
			[]string{"f.toml:2:1: bogus: unknown key"}},
		{"unknown key in array of tables", "name = \"a\"\n[[layer]]\nsource = \"dir:/x\"\n[[layer]]\n  src = \"dir:/y\"\n",
			[]string{"f.toml:5:3: layer[1].src: unknown key", "f.toml:4:1: layer[1].source: missing: this field is required"}},
		{"unknown key in table", "name = \"a\"\n[[layer]]\nsource = \"dir:/x\"\n[kernel]\nsource = \"dir:/k\"\nmodulez = [\"x\"]\n",
			[]string{"f.toml:6:1: kernel.modulez: unknown key"}},
		{"wrong type", "name = 3\n[[layer]]\nsource = \"dir:/x\"\n", []string{"f.toml:1:1: name: want a string, found an integer"}},
		{"wrong element type", "name = \"a\"\n[[layer]]\nsource = \"dir:/x\"\n[kernel]\nsource = \"dir:/k\"\nmodules = [\"a\", 2]\n",
			[]string{"f.toml:6:1: kernel.modules[1]: want a string, found an integer"}},
		{"bad source", "name = \"a\"\n[[layer]]\nsource = \"oci:\"\n", []string{"f.toml:3:1: layer[0].source: source \"oci:\": missing path"}},
		{"bad name", "name = \"A_b\"\n[[layer]]\nsource = \"dir:/x\"\n", []string{"f.toml:1:1: name: \"A_b\": want lower-case"}},
		{"bad role and format", "name = \"a\"\n[[layer]]\nsource = \"dir:/x\"\n[role]\nname = \"db\"\n[output]\nformats = [\"floppy\"]\n",
			[]string{"f.toml:5:1: role.name: \"db\": want one of etcd, master, minion", "f.toml:7:1: output.formats[0]: \"floppy\""}},
		{"stage1 settings", "name = \"a\"\n[[layer]]\nsource = \"dir:/x\"\n[stage1]\nparams = \"\"\"a\nb\"\"\"\nca = \"ca.pem\"\n",
			[]string{"f.toml:5:1: stage1.params: must be one line", "f.toml:7:1: stage1.ca: only an image with a [kernel]"}},
		{"embedded needs kernel and profile", "name = \"a\"\n[[layer]]\nsource = \"dir:/x\"\n[output]\nformats = [\"embedded\"]\n",
			[]string{"output.formats: [embedded] boot a kernel", "output.site: embedded", "output.machine: embedded"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("f.toml", []byte(tc.in))
			if err == nil {
				t.Fatal("accepted")
			}
			var rep *tomlx.Report
			if !errors.As(err, &rep) {
				t.Fatalf("error %T is not a report", err)
			}
			if len(rep.Problems) != len(tc.want) {
				t.Errorf("got %d problems, want %d:\n%v", len(rep.Problems), len(tc.want), err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("missing %q in:\n%v", w, err)
				}
			}
		})
	}
}

func FuzzParseSpec(f *testing.F) {
	f.Add([]byte("name = \"fx\"\n[[layer]]\nsource = \"oci:./oci:fixture\"\n"))
	f.Add([]byte("name = \"m\"\n[kernel]\nsource = \"dir:/k\"\nmodules = [\"a\"]\n[[layer]]\nsource = \"docker.io/library/debian:12\"\n[role]\nname = \"minion\"\n"))
	f.Add([]byte("[[layer]]\n[[layer]]\nx = '''\n[a]\n'''\n"))
	f.Add([]byte("a.\"b.c\" = [\n 1,\n]\n[x.y]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse("fuzz.toml", data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if s.Name == "" || len(s.Layers) == 0 {
			t.Fatalf("accepted a spec without name or layers: %+v", s)
		}
	})
}
