package api

import (
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// stageConstants reads this package's source for its Stage* constants, so
// that a stage added as a constant but not to Stages fails a test.
func stageConstants(t *testing.T) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "api.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	consts := map[string]string{}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, name := range vs.Names {
				if !strings.HasPrefix(name.Name, "Stage") || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Fatalf("%s: %s is not a string literal", fset.Position(name.Pos()), name.Name)
				}
				v, _ := strconv.Unquote(lit.Value)
				consts[name.Name] = v
			}
		}
	}
	return consts
}

func TestStagesListsEveryStageConstantOnce(t *testing.T) {
	consts := stageConstants(t)
	stages := Stages()
	if len(consts) < 10 {
		t.Fatalf("found only %d Stage constants: %v", len(consts), consts)
	}
	for name, v := range consts {
		if !KnownStage(v) {
			t.Errorf("%s = %q is missing from Stages", name, v)
		}
	}
	if len(stages) != len(consts) {
		t.Errorf("Stages has %d entries, the source %d Stage constants", len(stages), len(consts))
	}
	sorted := slices.Clone(stages)
	slices.Sort(sorted)
	if len(slices.Compact(sorted)) != len(stages) {
		t.Errorf("Stages has duplicates: %v", stages)
	}
}

func TestKnownStageRefusesOthers(t *testing.T) {
	for _, s := range []string{"", "Ready", "ready ", "halt", "x"} {
		if KnownStage(s) {
			t.Errorf("KnownStage(%q) = true", s)
		}
	}
}

func TestStagesReturnsACopy(t *testing.T) {
	Stages()[0] = "changed"
	if Stages()[0] != StageKernel {
		t.Error("changing the returned slice changed Stages")
	}
}

// TestPathHelpersMatchTheServedPatterns: the paths the machine side builds
// are the ones the server's mux routes, with the values where it reads them.
func TestPathHelpersMatchTheServedPatterns(t *testing.T) {
	for _, tc := range []struct {
		pattern, path string
		want          map[string]string
	}{
		{PathProfile, ProfilePath("etcd-1"), map[string]string{"id": "etcd-1"}},
		{PathLogs, LogPath("master-1", "kubelet.service"), map[string]string{"id": "master-1", "unit": "kubelet.service"}},
		{PathArtifact, ArtifactPath("ab12"), map[string]string{"hex": "ab12"}},
	} {
		mux := http.NewServeMux()
		got := map[string]string{}
		mux.HandleFunc("GET "+tc.pattern, func(w http.ResponseWriter, r *http.Request) {
			for k := range tc.want {
				got[k] = r.PathValue(k)
			}
		})
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if rec.Code != http.StatusOK || !maps.Equal(got, tc.want) {
			t.Errorf("%s on %s: %d %v, want %v", tc.path, tc.pattern, rec.Code, got, tc.want)
		}
	}
}

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]string
	}{
		{"", map[string]string{}},
		{"quiet", map[string]string{"quiet": ""}},
		{"console=ttyS0 console=tty0", map[string]string{"console": "tty0"}}, // last wins, as for the kernel's own params
		{`msg="two words" x=1`, map[string]string{"msg": "two words", "x": "1"}},
		{`"plinth.token=a b"`, map[string]string{"plinth.token": "a b"}},
		{"a=b=c\tinit=/x\n", map[string]string{"a": "b=c", "init": "/x"}},
		{"  lots   of  space  ", map[string]string{"lots": "", "of": "", "space": ""}},
		{`"a b=c" d=e`, map[string]string{"d": "e"}}, // no parameter's name has a blank
	} {
		if got := ParseCmdline(tc.in); !maps.Equal(got, tc.want) {
			t.Errorf("ParseCmdline(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
