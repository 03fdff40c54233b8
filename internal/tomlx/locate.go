package tomlx

import (
	"fmt"
	"strconv"
)

// Pos is a 1-based line and byte column, as toml.ParseError counts them.
type Pos struct{ Line, Col int }

// maxDepth bounds nested arrays and inline tables: the parser rejects deeper
// documents anyway, and the scanner must not recurse without limit on them.
const maxDepth = 64

// Locate maps each key path written in a TOML document to where it is
// written: "name", "kernel", "kernel.modules", "kernel.modules[1]" (an array
// element's value), "layer[1]" (its [[layer]] header), "layer[1].source",
// keys inside inline tables, and every prefix of a dotted key. Array of
// tables indexes count per parent, so [[a.b]] after a second [[a]] is
// "a[1].b[0]".
//
// The scanner follows TOML's lexical rules loosely: it skips strings,
// comments and scalar values and recovers at the next line from anything it
// does not understand, so a document the parser rejects still yields the
// positions it can. The first position of a path wins.
func Locate(data []byte) map[string]Pos {
	sc := &scanner{src: data, line: 1, col: 1, locs: map[string]Pos{}, arr: map[string]int{}}
	sc.document()
	return sc.locs
}

type scanner struct {
	src       []byte
	i         int
	line, col int
	locs      map[string]Pos
	arr       map[string]int // array-of-tables path (parents indexed) → current index
}

func (sc *scanner) eof() bool { return sc.i >= len(sc.src) }

func (sc *scanner) peek() byte {
	if sc.eof() {
		return 0
	}
	return sc.src[sc.i]
}

func (sc *scanner) has(s string) bool {
	return len(sc.src)-sc.i >= len(s) && string(sc.src[sc.i:sc.i+len(s)]) == s
}

func (sc *scanner) pos() Pos { return Pos{sc.line, sc.col} }

func (sc *scanner) advance(n int) {
	for ; n > 0 && !sc.eof(); n-- {
		if sc.src[sc.i] == '\n' {
			sc.line, sc.col = sc.line+1, 1
		} else {
			sc.col++
		}
		sc.i++
	}
}

func (sc *scanner) mark(path string, p Pos) {
	if _, ok := sc.locs[path]; !ok {
		sc.locs[path] = p
	}
}

func (sc *scanner) skipSpace() {
	for c := sc.peek(); c == ' ' || c == '\t'; c = sc.peek() {
		sc.advance(1)
	}
}

// skipBlank skips spaces, newlines and comments.
func (sc *scanner) skipBlank() {
	for !sc.eof() {
		switch sc.peek() {
		case ' ', '\t', '\r', '\n':
			sc.advance(1)
		case '#':
			sc.skipLine()
		default:
			return
		}
	}
}

// skipLine moves past the next newline.
func (sc *scanner) skipLine() {
	for !sc.eof() {
		c := sc.peek()
		sc.advance(1)
		if c == '\n' {
			return
		}
	}
}

func (sc *scanner) document() {
	prefix := ""
	for {
		sc.skipBlank()
		if sc.eof() {
			return
		}
		p := sc.pos()
		switch {
		case sc.has("[["):
			sc.advance(2)
			if parts, ok := sc.key(); ok && sc.has("]]") {
				prefix = sc.arrayTable(parts, p)
			}
		case sc.peek() == '[':
			sc.advance(1)
			if parts, ok := sc.key(); ok && sc.peek() == ']' {
				prefix = sc.table(parts, p)
			}
		default:
			if parts, ok := sc.key(); ok && sc.peek() == '=' {
				sc.advance(1)
				sc.value(sc.define(prefix, parts, p), 0)
			}
		}
		sc.skipLine()
	}
}

// key reads a possibly dotted key and the spaces after it.
func (sc *scanner) key() ([]string, bool) {
	var parts []string
	for {
		sc.skipSpace()
		var part string
		switch c := sc.peek(); {
		case c == '"':
			start := sc.i
			sc.basicString()
			raw := string(sc.src[start:sc.i])
			if len(raw) < 2 || raw[len(raw)-1] != '"' {
				return nil, false
			}
			s, err := strconv.Unquote(raw)
			if err != nil {
				// TOML escapes Go lacks (\e, \xHH) are rare in keys: the
				// raw text still locates the key.
				s = raw[1 : len(raw)-1]
			}
			part = s
		case c == '\'':
			sc.advance(1)
			start := sc.i
			for !sc.eof() && sc.peek() != '\'' && sc.peek() != '\n' {
				sc.advance(1)
			}
			part = string(sc.src[start:sc.i])
			if sc.peek() != '\'' {
				return nil, false
			}
			sc.advance(1)
		case bare(c):
			start := sc.i
			for bare(sc.peek()) {
				sc.advance(1)
			}
			part = string(sc.src[start:sc.i])
		default:
			return nil, false
		}
		parts = append(parts, part)
		sc.skipSpace()
		if sc.peek() != '.' {
			return parts, true
		}
		sc.advance(1)
	}
}

func bare(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// indexed turns key parts into a path, indexing each array of tables with
// its current element.
func (sc *scanner) indexed(parts []string, p Pos) string {
	out := ""
	for _, part := range parts {
		out = join(out, part)
		if n, ok := sc.arr[out]; ok {
			out = fmt.Sprintf("%s[%d]", out, n)
		}
		sc.mark(out, p)
	}
	return out
}

func (sc *scanner) table(parts []string, p Pos) string { return sc.indexed(parts, p) }

func (sc *scanner) arrayTable(parts []string, p Pos) string {
	parent := sc.indexed(parts[:len(parts)-1], p)
	full := join(parent, parts[len(parts)-1])
	n := 0
	if cur, ok := sc.arr[full]; ok {
		n = cur + 1
	}
	sc.arr[full] = n
	sc.mark(full, p)
	out := fmt.Sprintf("%s[%d]", full, n)
	sc.mark(out, p)
	return out
}

// define records a dotted key and each of its prefixes under prefix.
func (sc *scanner) define(prefix string, parts []string, p Pos) string {
	for _, part := range parts {
		prefix = join(prefix, part)
		sc.mark(prefix, p)
	}
	return prefix
}

// value skips one value, recording the positions of array elements and of
// the keys of inline tables.
func (sc *scanner) value(path string, depth int) {
	sc.skipSpace()
	if depth > maxDepth {
		return
	}
	switch c := sc.peek(); {
	case sc.has(`"""`):
		sc.advance(3)
		sc.multiline(`"""`, true)
	case sc.has(`'''`):
		sc.advance(3)
		sc.multiline(`'''`, false)
	case c == '"':
		sc.basicString()
	case c == '\'':
		sc.advance(1)
		for !sc.eof() && sc.peek() != '\'' && sc.peek() != '\n' {
			sc.advance(1)
		}
		if sc.peek() == '\'' {
			sc.advance(1)
		}
	case c == '[':
		sc.advance(1)
		for i := 0; ; i++ {
			sc.skipBlank()
			if sc.eof() {
				return
			}
			if sc.peek() == ']' {
				sc.advance(1)
				return
			}
			el := fmt.Sprintf("%s[%d]", path, i)
			sc.mark(el, sc.pos())
			sc.value(el, depth+1)
			sc.skipBlank()
			switch sc.peek() {
			case ',':
				sc.advance(1)
			case ']':
				sc.advance(1)
				return
			default:
				return
			}
		}
	case c == '{':
		sc.advance(1)
		for {
			sc.skipBlank()
			if sc.peek() == '}' {
				sc.advance(1)
				return
			}
			p := sc.pos()
			parts, ok := sc.key()
			if !ok || sc.peek() != '=' {
				return
			}
			sc.advance(1)
			sc.value(sc.define(path, parts, p), depth+1)
			sc.skipBlank()
			switch sc.peek() {
			case ',':
				sc.advance(1)
			case '}':
				sc.advance(1)
				return
			default:
				return
			}
		}
	default:
		// A number, boolean or date-time: it ends where the array, inline
		// table, comment or line does (a date-time may hold a space).
		for !sc.eof() {
			switch sc.peek() {
			case ',', ']', '}', '#', '\n':
				return
			}
			sc.advance(1)
		}
	}
}

// basicString skips a "..." string on one line, escapes included.
func (sc *scanner) basicString() {
	sc.advance(1)
	for !sc.eof() {
		switch sc.peek() {
		case '\\':
			sc.advance(2)
			continue
		case '"':
			sc.advance(1)
			return
		case '\n':
			return
		}
		sc.advance(1)
	}
}

// multiline skips a multi-line string's body and its closing delimiter,
// with up to two quotes of the body written right before it.
func (sc *scanner) multiline(delim string, escapes bool) {
	for !sc.eof() {
		if escapes && sc.peek() == '\\' {
			sc.advance(2)
			continue
		}
		if sc.has(delim) {
			sc.advance(3)
			for n := 0; n < 2 && sc.peek() == delim[0]; n++ {
				sc.advance(1)
			}
			return
		}
		sc.advance(1)
	}
}
