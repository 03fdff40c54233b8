package bootserver

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/bootserver/api"
)

// machineSide is the code that runs on a machine and posts events: stage 1,
// the agent, and what they import from the tree.
var machineSide = []string{"../initramfs", "api"}

func TestDecodeEventAcceptsEveryStage(t *testing.T) {
	for _, s := range api.Stages() {
		body := `{"machine":"m1","stage":` + strconv.Quote(s) + `,"time":"2024-01-01T00:00:00Z"}`
		if _, err := DecodeEvent(strings.NewReader(body)); err != nil {
			t.Errorf("stage %q: %v", s, err)
		}
	}
	if _, err := DecodeEvent(strings.NewReader(`{"machine":"m1","stage":"halt"}`)); err == nil {
		t.Error("accepted a stage outside api.Stages")
	}
}

// TestMachineSidePostsOnlyAPIStages reads the source of stage 1 and the
// agent and fails where a stage is anything but an api.Stage* constant or
// a value passed through from one: a string literal or a local constant
// would reach the server unchecked. With TestDecodeEventAcceptsEveryStage
// and api's own test (every Stage* constant is in api.Stages) this proves
// that the server accepts every stage the machine can post.
//
// A stage position is an argument to a parameter named stage (or …Stage),
// or one the function passes on to a stage position; a struct field named
// Stage or stage (keyed or not); the result of a function called in a
// stage position.
func TestMachineSidePostsOnlyAPIStages(t *testing.T) {
	sc := scanStages(t, machineSide...)
	if sc.positions < 10 {
		t.Fatalf("found only %d stage positions; the scan misses the code", sc.positions)
	}
	for _, p := range sc.bad {
		t.Error(p)
	}
	t.Logf("%d stage positions checked", sc.positions)
}

func TestStageScanCatchesLiteralsAndLocalConstants(t *testing.T) {
	dir := t.TempDir()
	src := `package x

import (
	"context"

	papi "github.com/plinth-dev/plinth/bootserver/api"
)

const mine = "mine"

type Event struct{ Machine, Stage string }
type phase struct {
	stage string
	run   func() error
}

type C struct{}

func (c *C) Step(ctx context.Context, stage, msg string) { c.line(ctx, stage, stage, msg) }
func (c *C) line(ctx context.Context, tag, event, msg string) { post(Event{Stage: event}) }
func post(e Event) {}
func pick(ok bool) string {
	if ok {
		return papi.StageReady
	}
	return "broken"
}

func run(c *C, ctx context.Context) {
	c.Step(ctx, papi.StageInit, "fine")
	c.Step(ctx, "literal", "bad")
	c.line(ctx, papi.StageInit, "event literal", "bad")
	c.Step(ctx, mine, "bad")
	c.Step(ctx, pick(true), "bad via return")
	_ = []phase{{"unkeyed", nil}, {stage: papi.StageMount}}
	e := Event{"m", "positional"}
	e.Stage = "assigned"
	_ = e
}
`
	if err := os.WriteFile(filepath.Join(dir, "x.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	sc := scanStages(t, dir)
	want := []string{`"literal"`, `"event literal"`, "mine", `"broken"`, `"unkeyed"`, `"positional"`, `"assigned"`}
	got := strings.Join(sc.bad, "\n")
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("the scan missed %s; it found:\n%s", w, got)
		}
	}
	if len(sc.bad) != len(want) {
		t.Errorf("the scan found %d problems, want %d:\n%s", len(sc.bad), len(want), got)
	}
}

type stageScan struct {
	fset      *token.FileSet
	files     []*ast.File
	consts    map[string]bool  // constants declared in the scanned code
	params    map[string][]int // function name → indices of stage parameters
	fields    map[string][]int // struct type name → indices of stage fields
	funcs     map[string][]*ast.FuncDecl
	positions int
	bad       []string
}

func scanStages(t *testing.T, dirs ...string) *stageScan {
	t.Helper()
	sc := &stageScan{fset: token.NewFileSet(), consts: map[string]bool{}, params: map[string][]int{},
		fields: map[string][]int{}, funcs: map[string][]*ast.FuncDecl{}}
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(sc.fset, p, nil, 0)
			if err != nil {
				return err
			}
			elidedTypes(f)
			sc.files = append(sc.files, f)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	sc.declarations()
	sc.stageParams()
	for _, f := range sc.files {
		sc.check(f)
	}
	return sc
}

func isStageName(n string) bool {
	return n == "stage" || n == "Stage" || strings.HasSuffix(n, "Stage")
}

// declarations records constants, functions, and struct fields named for
// a stage.
func (sc *stageScan) declarations() {
	for _, f := range sc.files {
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.GenDecl:
				if n.Tok == token.CONST {
					for _, s := range n.Specs {
						for _, id := range s.(*ast.ValueSpec).Names {
							sc.consts[id.Name] = true
						}
					}
				}
			case *ast.TypeSpec:
				st, ok := n.Type.(*ast.StructType)
				if !ok {
					break
				}
				i := 0
				for _, fl := range st.Fields.List {
					names := fl.Names
					if len(names) == 0 {
						i++
						continue
					}
					for _, id := range names {
						if isStageName(id.Name) {
							sc.fields[n.Name.Name] = append(sc.fields[n.Name.Name], i)
						}
						i++
					}
				}
			case *ast.FuncDecl:
				sc.funcs[n.Name.Name] = append(sc.funcs[n.Name.Name], n)
				for i, id := range paramNames(n) {
					if isStageName(id) {
						sc.addParam(n.Name.Name, i)
					}
				}
			}
			return true
		})
	}
}

func paramNames(fd *ast.FuncDecl) []string {
	var names []string
	for _, fl := range fd.Type.Params.List {
		if len(fl.Names) == 0 {
			names = append(names, "")
		}
		for _, id := range fl.Names {
			names = append(names, id.Name)
		}
	}
	return names
}

func (sc *stageScan) addParam(fn string, i int) bool {
	for _, j := range sc.params[fn] {
		if j == i {
			return false
		}
	}
	sc.params[fn] = append(sc.params[fn], i)
	return true
}

// stageParams marks, until nothing changes, the parameters a function
// passes on to a stage position.
func (sc *stageScan) stageParams() {
	for changed := true; changed; {
		changed = false
		for name, fds := range sc.funcs {
			for _, fd := range fds {
				if fd.Body == nil {
					continue
				}
				idx := map[string]int{}
				for i, n := range paramNames(fd) {
					idx[n] = i
				}
				sc.eachPosition(fd.Body, func(e ast.Expr) {
					if id, ok := e.(*ast.Ident); ok {
						if i, ok := idx[id.Name]; ok && sc.addParam(name, i) {
							changed = true
						}
					}
				})
			}
		}
	}
}

// eachPosition calls fn with every expression in a stage position in n.
func (sc *stageScan) eachPosition(n ast.Node, fn func(ast.Expr)) {
	ast.Inspect(n, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			for _, i := range sc.params[calleeName(n.Fun)] {
				if i < len(n.Args) {
					fn(n.Args[i])
				}
			}
		case *ast.CompositeLit:
			for i, el := range n.Elts {
				if kv, ok := el.(*ast.KeyValueExpr); ok {
					if id, ok := kv.Key.(*ast.Ident); ok && isStageName(id.Name) {
						fn(kv.Value)
					}
					continue
				}
				for _, j := range sc.fields[calleeName(n.Type)] {
					if i == j {
						fn(el)
					}
				}
			}
		case *ast.AssignStmt:
			for i, l := range n.Lhs {
				if s, ok := l.(*ast.SelectorExpr); ok && isStageName(s.Sel.Name) && i < len(n.Rhs) {
					fn(n.Rhs[i])
				}
			}
		}
		return true
	})
}

// calleeName is the last name of a function or type: post, c.Step, api.Event.
func calleeName(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.Ident:
		return e.Name
	case *ast.SelectorExpr:
		return e.Sel.Name
	}
	return ""
}

// apiName is how f imports bootserver/api ("" if it does not).
func apiName(f *ast.File) string {
	for _, im := range f.Imports {
		if p, _ := strconv.Unquote(im.Path.Value); p == "github.com/plinth-dev/plinth/bootserver/api" {
			if im.Name != nil {
				return im.Name.Name
			}
			return "api"
		}
	}
	return ""
}

// elidedTypes gives the elements of a slice literal whose type is elided
// ([]phase{{...}}) the type of the slice's elements.
func elidedTypes(f *ast.File) {
	ast.Inspect(f, func(n ast.Node) bool {
		if cl, ok := n.(*ast.CompositeLit); ok {
			if at, ok := cl.Type.(*ast.ArrayType); ok {
				for _, el := range cl.Elts {
					if inner, ok := el.(*ast.CompositeLit); ok && inner.Type == nil {
						inner.Type = at.Elt
					}
				}
			}
		}
		return true
	})
}

func (sc *stageScan) check(f *ast.File) {
	pkg := apiName(f)
	var checkExpr func(e ast.Expr, seen map[*ast.FuncDecl]bool)
	checkExpr = func(e ast.Expr, seen map[*ast.FuncDecl]bool) {
		sc.positions++
		where := sc.fset.Position(e.Pos())
		switch e := e.(type) {
		case *ast.SelectorExpr:
			if x, ok := e.X.(*ast.Ident); ok && x.Name == pkg && pkg != "" {
				if !strings.HasPrefix(e.Sel.Name, "Stage") {
					sc.bad = append(sc.bad, where.String()+": "+pkg+"."+e.Sel.Name+" is not a stage")
				}
			}
			// Otherwise a field passed on: checked where it is set.
		case *ast.Ident:
			if sc.consts[e.Name] {
				sc.bad = append(sc.bad, where.String()+": stage "+e.Name+" is a local constant, not an api.Stage*")
			}
		case *ast.CallExpr:
			for _, fd := range sc.funcs[calleeName(e.Fun)] {
				if seen[fd] || fd.Body == nil {
					continue
				}
				seen[fd] = true
				ast.Inspect(fd.Body, func(n ast.Node) bool {
					if _, ok := n.(*ast.FuncLit); ok {
						return false
					}
					if r, ok := n.(*ast.ReturnStmt); ok && len(r.Results) > 0 {
						checkExpr(r.Results[0], seen)
					}
					return true
				})
			}
		case *ast.BasicLit:
			sc.bad = append(sc.bad, where.String()+": stage "+e.Value+" is a literal, not an api.Stage*")
		default:
			sc.bad = append(sc.bad, where.String()+": stage is an expression, not an api.Stage*")
		}
	}
	sc.eachPosition(f, func(e ast.Expr) { checkExpr(e, map[*ast.FuncDecl]bool{}) })
}
