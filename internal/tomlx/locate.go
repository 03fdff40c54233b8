package tomlx

import (
	"strings"
)

// Pos is a 1-based line and column.
type Pos struct{ Line, Col int }

// Locate maps each key path written in a TOML document to where it is
// written: "name", "kernel", "kernel.modules", "layer[1]", "layer[1].source".
// It reads lines, tracking table headers and skipping the insides of
// multi-line strings and arrays; a document the parser rejects still yields
// the positions it can.
func Locate(data []byte) map[string]Pos {
	locs := map[string]Pos{}
	arrIdx := map[string]int{} // unindexed array-of-tables path → current index
	prefix := ""
	depth := 0  // open '[' of a multi-line array value
	inStr := "" // open multi-line string delimiter
	indexed := func(parts []string) string {
		var plain, out string
		for _, p := range parts {
			plain = join(plain, p)
			out = join(out, p)
			if i, ok := arrIdx[plain]; ok {
				out += "[" + itoa(i) + "]"
			}
		}
		return out
	}
	for n, line := range strings.Split(string(data), "\n") {
		lineNo := n + 1
		if inStr != "" {
			if strings.Contains(line, inStr) {
				inStr = ""
			}
			continue
		}
		if depth > 0 {
			depth += bracketDelta(line)
			continue
		}
		trimmed := strings.TrimLeft(line, " \t")
		col := len(line) - len(trimmed) + 1
		switch {
		case trimmed == "" || strings.HasPrefix(trimmed, "#"):
			continue
		case strings.HasPrefix(trimmed, "[["):
			end := strings.Index(trimmed, "]]")
			if end < 0 {
				continue
			}
			parts := splitKey(trimmed[2:end])
			plain := strings.Join(parts, ".")
			if i, ok := arrIdx[plain]; ok {
				arrIdx[plain] = i + 1
			} else {
				arrIdx[plain] = 0
			}
			prefix = indexed(parts)
			locs[prefix] = Pos{lineNo, col}
			continue
		case strings.HasPrefix(trimmed, "["):
			end := strings.Index(trimmed, "]")
			if end < 0 {
				continue
			}
			prefix = indexed(splitKey(trimmed[1:end]))
			if _, ok := locs[prefix]; !ok {
				locs[prefix] = Pos{lineNo, col}
			}
			continue
		}
		eq := keyEnd(trimmed)
		if eq < 0 {
			continue
		}
		key := join(prefix, strings.Join(splitKey(trimmed[:eq]), "."))
		if _, ok := locs[key]; !ok {
			locs[key] = Pos{lineNo, col}
		}
		val := strings.TrimSpace(trimmed[eq+1:])
		for _, delim := range []string{`"""`, `'''`} {
			if strings.HasPrefix(val, delim) && !strings.Contains(val[3:], delim) {
				inStr = delim
			}
		}
		if strings.HasPrefix(val, "[") {
			depth = bracketDelta(val)
		}
	}
	return locs
}

// keyEnd returns the index of the '=' that ends a key, outside quotes.
func keyEnd(s string) int {
	q := byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0:
			if c == q {
				q = 0
			}
		case c == '"' || c == '\'':
			q = c
		case c == '=':
			return i
		case c == '#':
			return -1
		}
	}
	return -1
}

// splitKey splits a dotted key, unquoting quoted parts.
func splitKey(s string) []string {
	var parts []string
	var cur strings.Builder
	q := byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0:
			if c == q {
				q = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '"' || c == '\'':
			q = c
		case c == '.':
			parts = append(parts, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(parts, strings.TrimSpace(cur.String()))
}

// bracketDelta counts '[' minus ']' outside strings and comments.
func bracketDelta(s string) int {
	d := 0
	q := byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0:
			if c == q {
				q = 0
			}
		case c == '"' || c == '\'':
			q = c
		case c == '#':
			return d
		case c == '[':
			d++
		case c == ']':
			d--
		}
	}
	return d
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}
