package api

import (
	"go/ast"
	"go/parser"
	"go/token"
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
