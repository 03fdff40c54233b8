package tomlx

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

type part struct {
	Source string `toml:"source,required"`
	N      int    `toml:"n"`
}

type doc struct {
	Name   string            `toml:"name,required"`
	Tags   []string          `toml:"tags"`
	On     bool              `toml:"on"`
	Kernel *part             `toml:"kernel"`
	Layers []part            `toml:"layer"`
	Labels map[string]string `toml:"labels"`
	Skip   string            `toml:"-"`
}

func TestDecodeReportsEachProblemAtItsPosition(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"syntax error stops at the parser's position", "name = \"a\"\ntags = [\n", "f.toml:2:9: syntax: unexpected EOF; expected value"},
		{"duplicate key is a syntax error", "name = \"a\"\nname = \"b\"\n", "f.toml:2:12: syntax: Key 'name' has already been defined."},
		{"missing required key of the document points at its start", "on = true\n", "f.toml:1:1: name: missing: this field is required"},
		{"missing required key of a table points at the table",
			"name = \"a\"\n\n[kernel]\nn = 1\n", "f.toml:3:1: kernel.source: missing: this field is required"},
		{"unknown top-level key",
			"name = \"a\"\n  bogus = 1\n", "f.toml:2:3: bogus: unknown key (known: kernel, labels, layer, name, on, tags)"},
		{"unknown key in a nested table",
			"name = \"a\"\n[kernel]\nsource = \"s\"\nmodulez = []\n", "f.toml:4:1: kernel.modulez: unknown key (known: n, source)"},
		{"unknown key in the second of an array of tables",
			"name = \"a\"\n[[layer]]\nsource = \"x\"\n[[layer]]\nsource = \"y\"\n\tsrc = \"y\"\n", "f.toml:6:2: layer[1].src: unknown key (known: n, source)"},
		{"unknown key in a file with CRLF line ends",
			"name = \"a\"\r\n[kernel]\r\nsource = \"s\"\r\n  x = 1\r\n", "f.toml:4:3: kernel.x: unknown key (known: n, source)"},
		{"unknown dotted key",
			"name = \"a\"\nkernel.source = \"s\"\nkernel.extra.deep = 1\n", "f.toml:3:1: kernel.extra: unknown key (known: n, source)"},
		{"unknown quoted key",
			"name = \"a\"\n\"we ird\" = 1\n", "f.toml:2:1: \"we ird\": unknown key (known: kernel, labels, layer, name, on, tags)"},
		{"unknown key in an inline table",
			"name = \"a\"\nkernel = { source = \"s\", colour = \"red\" }\n", "f.toml:2:26: kernel.colour: unknown key (known: n, source)"},
		{"unknown key in an inline table of an array",
			"name = \"a\"\nlayer = [\n  { source = \"s\" },\n  { source = \"t\", x = 1 },\n]\n", "f.toml:4:19: layer[1].x: unknown key (known: n, source)"},
		{"wrong type of a string",
			"name = 3\n", "f.toml:1:1: name: want a string, found an integer"},
		{"wrong type of an array element points at the element",
			"name = \"a\"\ntags = [\"x\",\n   true]\n", "f.toml:3:4: tags[1]: want a string, found a boolean"},
		{"wrong type of a table",
			"name = \"a\"\nkernel = \"k\"\n", "f.toml:2:1: kernel: want a table, found a string"},
		{"a date-time is named as such",
			"name = 1979-05-27T07:32:00Z\n", "f.toml:1:1: name: want a string, found a date-time"},
		{"wrong type of a map value",
			"name = \"a\"\n[labels]\nrack = 1\n", "f.toml:3:1: labels.rack: want a string, found an integer"},
		{"every problem at once, sorted by position",
			"on = \"yes\"\n[[layer]]\nn = \"1\"\n[kernel]\nsource = 1\n",
			"f.toml:1:1: name: missing: this field is required\n" +
				"f.toml:1:1: on: want true or false, found a string\n" +
				"f.toml:2:1: layer[0].source: missing: this field is required\n" +
				"f.toml:3:1: layer[0].n: want an integer, found a string\n" +
				"f.toml:5:1: kernel.source: want a string, found an integer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d doc
			r := Decode("f.toml", []byte(tc.in), &d)
			err := r.Err()
			if err == nil {
				t.Fatal("no problem reported")
			}
			if err.Error() != tc.want {
				t.Errorf("got\n%s\nwant\n%s", err, tc.want)
			}
			var rep *Report
			if !errors.As(err, &rep) || len(rep.Problems) != strings.Count(tc.want, "\n")+1 {
				t.Errorf("errors.As gave %v", rep)
			}
		})
	}
}

func TestDecodeFillsEveryKindOfField(t *testing.T) {
	in := "name = \"a\"\ntags = [\"x\", \"y\"]\non = true\nkernel = { source = \"k\", n = 2 }\n" +
		"[[layer]]\nsource = \"l0\"\n[[layer]]\nsource = \"l1\"\n[labels]\nrack = \"r1\"\n"
	var d doc
	if err := Decode("f.toml", []byte(in), &d).Err(); err != nil {
		t.Fatal(err)
	}
	want := doc{Name: "a", Tags: []string{"x", "y"}, On: true, Kernel: &part{Source: "k", N: 2},
		Layers: []part{{Source: "l0"}, {Source: "l1"}}, Labels: map[string]string{"rack": "r1"}}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("decoded %+v, want %+v", d, want)
	}
}

func TestReportSyntaxMarksAnUnparsedFile(t *testing.T) {
	var d doc
	if r := Decode("f.toml", []byte("name = \n"), &d); !r.Syntax() {
		t.Error("syntax error not flagged")
	}
	if r := Decode("f.toml", []byte("name = 1\n"), &d); r.Syntax() {
		t.Error("type error flagged as syntax")
	}
}

func TestReportAddfUsesNearestWrittenAncestor(t *testing.T) {
	var d doc
	r := Decode("f.toml", []byte("name = \"a\"\n[[layer]]\nsource = \"x\"\n[[layer]]\nsource = \"y\"\n"), &d)
	r.Addf("f.toml", "layer[1].source", "bad %s", "source")
	r.Addf("f.toml", "layer[1].n", "absent key")
	r.Addf("f.toml", "output.site", "absent table")
	r.Addf("other.toml", "x", "a file the report did not decode")
	want := "f.toml:1:1: output.site: absent table\n" +
		"f.toml:4:1: layer[1].n: absent key\n" +
		"f.toml:5:1: layer[1].source: bad source\n" +
		"other.toml: x: a file the report did not decode"
	if got := r.Err().Error(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if !r.Has("f.toml", "layer[1].n") || r.Has("f.toml", "layer[0].n") {
		t.Error("Has does not tell recorded fields")
	}
}

func TestReportErrIsNilWithoutProblems(t *testing.T) {
	var r *Report
	if r.Err() != nil || (&Report{}).Err() != nil {
		t.Error("empty report is an error")
	}
}

func TestLocateFindsEveryKindOfKey(t *testing.T) {
	in := `# comment [not] = a table
top = 1 # trailing
"quoted.key" = 2
a.'b c'.d = 3
s = """
[fake]
x = 1
"""
t = '''one''' 
arr = [
  1,   # comment ]
  [2, 3],
  { k = "v" },
]
[tbl]
k = "]"
[[fruit]]
name = "apple"
[[fruit.variety]]
name = "red"
[[fruit]]
[[fruit.variety]]
name = "plantain"
[fruit.info]
 when = 1979-05-27 07:32:00
`
	want := map[string]Pos{
		"top":                      {2, 1},
		`"quoted.key"`:             {3, 1},
		"a":                        {4, 1},
		`a."b c"`:                  {4, 1},
		`a."b c".d`:                {4, 1},
		"s":                        {5, 1},
		"t":                        {9, 1},
		"arr":                      {10, 1},
		"arr[0]":                   {11, 3},
		"arr[1]":                   {12, 3},
		"arr[1][1]":                {12, 7},
		"arr[2]":                   {13, 3},
		"arr[2].k":                 {13, 5},
		"tbl":                      {15, 1},
		"tbl.k":                    {16, 1},
		"fruit":                    {17, 1},
		"fruit[0]":                 {17, 1},
		"fruit[0].name":            {18, 1},
		"fruit[0].variety[0]":      {19, 1},
		"fruit[0].variety[0].name": {20, 1},
		"fruit[1]":                 {21, 1},
		"fruit[1].variety[0]":      {22, 1},
		"fruit[1].variety[0].name": {23, 1},
		"fruit[1].info":            {24, 1},
		"fruit[1].info.when":       {25, 2},
	}
	got := Locate([]byte(in))
	for k, p := range want {
		if got[k] != p {
			t.Errorf("%s at %v, want %v", k, got[k], p)
		}
	}
	for _, k := range []string{"fake", "x", "not", "fruit[0].variety[1]", "fruit[1].variety[1]"} {
		if p, ok := got[k]; ok {
			t.Errorf("%s located at %v though it is not a key", k, p)
		}
	}
}

func FuzzLocate(f *testing.F) {
	f.Add([]byte("a = 1\n[b]\nc = [1, {d = 2}]\n[[e]]\nf = \"\"\"x\n\"\"\"\n"))
	f.Add([]byte("\"a\\\"\" = '\n[[x.y]]\n[x.y.z]\n"))
	f.Add([]byte("k = [[[[[[[[[[[[[{a={b={c=[1]}}}]]]]]]]]]]]]]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		lines := strings.Count(string(data), "\n") + 1
		for k, p := range Locate(data) {
			if p.Line < 1 || p.Line > lines || p.Col < 1 {
				t.Fatalf("%q located at %v outside a %d-line document", k, p, lines)
			}
		}
	})
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte("name = \"a\"\n[[layer]]\nsource = \"x\"\nkernel = {source = 1}\n"))
	f.Add([]byte("on = \"yes\"\n[[layer]]\nn = \"1\"\n[kernel]\nsource = 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var d doc
		r := Decode("f.toml", data, &d)
		for _, p := range r.Problems {
			if p.Msg == "" || (p.Line == 0 && !r.Syntax()) {
				t.Fatalf("problem without message or position: %s", p)
			}
		}
		if r.Err() == nil && d.Name == "" && !strings.Contains(string(data), "name") {
			t.Fatal(fmt.Sprintf("accepted a document without its required name: %q", data))
		}
	})
}
