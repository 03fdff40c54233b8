// Package tomlx decodes TOML strictly and reports every problem of a file at
// once, each as `file:line:col: field: what is wrong`.
//
// BurntSushi/toml stops at the first type mismatch, gives a mismatch only a
// line in its text and gives unknown keys (MetaData.Undecoded) no position at
// all. So decoding happens in two steps: the library parses the document
// into a generic tree (syntax errors carry its position), then a small
// reflective walk fills the destination struct field by field, collecting a
// Problem for every unknown key, wrong type or missing required field, at
// the position Locate finds in the source text. Callers add their semantic
// problems to the same Report by key path.
package tomlx

import (
	"cmp"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Problem is one thing wrong with a file.
type Problem struct {
	File      string
	Line, Col int    // 0 when the problem has no place in the file
	Field     string // key path, e.g. layer[1].source; "" for a syntax error
	Msg       string
}

// String formats p as file:line:col: field: msg.
func (p Problem) String() string {
	loc := p.File
	if p.Line > 0 {
		loc = fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col)
	}
	if p.Field == "" {
		return loc + ": " + p.Msg
	}
	return fmt.Sprintf("%s: %s: %s", loc, p.Field, p.Msg)
}

// Report collects the problems of one or more files. It is an error when it
// holds any problem.
type Report struct {
	Problems []Problem
	locs     map[string]map[string]Pos // file → key path → position
	syntax   bool
}

// Syntax reports whether a file of the report could not be parsed at all; its
// decoded value is then empty and not worth checking further.
func (r *Report) Syntax() bool { return r.syntax }

// Error lists every problem, one per line, sorted by file and position.
func (r *Report) Error() string {
	r.sort()
	lines := make([]string, len(r.Problems))
	for i, p := range r.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

func (r *Report) sort() {
	slices.SortStableFunc(r.Problems, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Col, b.Col))
	})
}

// Err returns r as an error, or nil when it holds no problem.
func (r *Report) Err() error {
	if r == nil || len(r.Problems) == 0 {
		return nil
	}
	r.sort()
	return r
}

// Addf records a problem at the position of field (a key path such as
// "layer[1].source"; its nearest located ancestor is used when the key itself
// is absent from the file, e.g. for a missing required field).
func (r *Report) Addf(file, field, format string, args ...any) {
	pos := r.lookup(file, field)
	r.Problems = append(r.Problems, Problem{File: file, Line: pos.Line, Col: pos.Col, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// Has reports whether a problem was already recorded for field in file.
func (r *Report) Has(file, field string) bool {
	for _, p := range r.Problems {
		if p.File == file && p.Field == field {
			return true
		}
	}
	return false
}

// Merge appends the problems of another report.
func (r *Report) Merge(o *Report) {
	if o == nil {
		return
	}
	r.Problems = append(r.Problems, o.Problems...)
	r.syntax = r.syntax || o.syntax
	for f, l := range o.locs {
		if r.locs == nil {
			r.locs = map[string]map[string]Pos{}
		}
		r.locs[f] = l
	}
}

// Position returns where field, or failing that its nearest ancestor, is
// written in file; the start of the file for a key of a file the report
// decoded that has none of them, and the zero Pos for a file it did not.
func (r *Report) Position(file, field string) Pos { return r.lookup(file, field) }

func (r *Report) lookup(file, field string) Pos {
	locs, ok := r.locs[file]
	if !ok {
		return Pos{}
	}
	for f := field; f != ""; f = parent(f) {
		if p, ok := locs[f]; ok {
			return p
		}
	}
	return Pos{1, 1}
}

// parent drops the last element of a key path: a.b[2].c → a.b[2] → a.b → a.
// A quoted element holding a '.' is cut there; only the fallback position
// of a problem suffers.
func parent(f string) string {
	if strings.HasSuffix(f, "]") {
		if i := strings.LastIndex(f, "["); i >= 0 {
			return f[:i]
		}
	}
	if i := strings.LastIndex(f, "."); i >= 0 {
		return f[:i]
	}
	return ""
}

// Decode parses data (named file in messages) into v, a pointer to a struct
// whose fields carry `toml:"name"` tags; a tag option ",required" makes a
// missing key a problem. Every problem found is in the returned report; a
// syntax error stops decoding, anything else does not.
func Decode(file string, data []byte, v any) *Report {
	r := &Report{locs: map[string]map[string]Pos{file: Locate(data)}}
	var tree map[string]any
	if _, err := toml.Decode(string(data), &tree); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			r.Problems = append(r.Problems, Problem{File: file, Line: pe.Position.Line, Col: pe.Position.Col,
				Msg: "syntax: " + pe.Message})
		} else {
			r.Problems = append(r.Problems, Problem{File: file, Msg: "syntax: " + err.Error()})
		}
		r.syntax = true
		return r
	}
	d := decoder{file: file, r: r}
	d.value(reflect.ValueOf(v).Elem(), tree, "")
	return r
}

type decoder struct {
	file string
	r    *Report
}

// join appends key to a key path, quoting it the way TOML would when it is
// not a bare key, so that paths stay readable and unambiguous: a."b c".
func join(prefix, key string) string {
	if key == "" || strings.IndexFunc(key, func(r rune) bool { return r > 0x7f || !bare(byte(r)) }) >= 0 {
		key = strconv.Quote(key)
	}
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// typeName names a TOML value's type the way a person writing the file would.
func typeName(x any) string {
	switch x.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	case []any:
		return "an array"
	case time.Time:
		return "a date-time"
	}
	return fmt.Sprintf("%T", x)
}

func (d *decoder) value(rv reflect.Value, x any, path string) {
	switch rv.Kind() {
	case reflect.Pointer:
		nv := reflect.New(rv.Type().Elem())
		d.value(nv.Elem(), x, path)
		// A value of the wrong type leaves the pointer nil, so that callers
		// do not also report the empty fields of a table that is not there.
		if !d.r.Has(d.file, path) {
			rv.Set(nv)
		}
	case reflect.Struct:
		m, ok := x.(map[string]any)
		if !ok {
			d.r.Addf(d.file, path, "want a table, found %s", typeName(x))
			return
		}
		d.table(rv, m, path)
	case reflect.String:
		s, ok := x.(string)
		if !ok {
			d.r.Addf(d.file, path, "want a string, found %s", typeName(x))
			return
		}
		rv.SetString(s)
	case reflect.Bool:
		b, ok := x.(bool)
		if !ok {
			d.r.Addf(d.file, path, "want true or false, found %s", typeName(x))
			return
		}
		rv.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, ok := x.(int64)
		if !ok {
			d.r.Addf(d.file, path, "want an integer, found %s", typeName(x))
			return
		}
		rv.SetInt(n)
	case reflect.Slice:
		var items []any
		switch xs := x.(type) {
		case []any:
			items = xs
		case []map[string]any:
			for _, it := range xs {
				items = append(items, it)
			}
		default:
			d.r.Addf(d.file, path, "want an array, found %s", typeName(x))
			return
		}
		out := reflect.MakeSlice(rv.Type(), len(items), len(items))
		for i, it := range items {
			d.value(out.Index(i), it, fmt.Sprintf("%s[%d]", path, i))
		}
		rv.Set(out)
	case reflect.Map:
		m, ok := x.(map[string]any)
		if !ok || rv.Type().Key().Kind() != reflect.String {
			d.r.Addf(d.file, path, "want a table, found %s", typeName(x))
			return
		}
		out := reflect.MakeMapWithSize(rv.Type(), len(m))
		for _, k := range sortedKeys(m) {
			ev := reflect.New(rv.Type().Elem()).Elem()
			d.value(ev, m[k], join(path, k))
			out.SetMapIndex(reflect.ValueOf(k), ev)
		}
		rv.Set(out)
	default:
		panic(fmt.Sprintf("tomlx: unsupported field type %s at %s", rv.Type(), path))
	}
}

func (d *decoder) table(rv reflect.Value, m map[string]any, path string) {
	t := rv.Type()
	known := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("toml")
		if tag == "-" || !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			continue
		}
		known[name] = true
		x, ok := m[name]
		if !ok {
			if strings.Contains(opts, "required") {
				d.r.Addf(d.file, join(path, name), "missing: this field is required")
			}
			continue
		}
		d.value(rv.Field(i), x, join(path, name))
	}
	for _, k := range sortedKeys(m) {
		if !known[k] {
			d.r.Addf(d.file, join(path, k), "unknown key (known: %s)", strings.Join(sortedKeys(known), ", "))
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
