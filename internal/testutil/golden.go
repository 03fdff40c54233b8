package testutil

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// update is -update. It is registered in test binaries only, so that
// test-support code outside _test.go files may import this package without
// giving a program the flag.
var update = func() *bool {
	if !testing.Testing() {
		return new(bool)
	}
	return flag.Bool("update", false, "rewrite the golden files under testdata/ with what the tests produce")
}()

// Golden compares got with the golden file at path and fails t, showing the
// lines that differ, unless they are the same bytes. Run with -update (go
// test ./pkg -update), it writes got to path instead, through a temporary
// file renamed into place, creating path's directory if need be.
func Golden(t testing.TB, path string, got []byte) {
	t.Helper()
	if *update {
		if err := writeFile(path, got); err != nil {
			t.Fatalf("update golden file: %v", err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("golden file: %v (go test -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from what the test produced (-golden +got; go test -update accepts it):\n%s", path, diff(want, got))
	}
}

// writeFile writes data to path so that a reader never sees half of it.
func writeFile(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // a no-op once renamed
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644) // not CreateTemp's 0600
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

const (
	diffContext  = 3       // unchanged lines shown around a change
	diffMaxLines = 200     // lines of diff shown at most
	diffMaxCells = 1 << 22 // beyond this, no search for common lines
)

// edit is one line of an edit script: kind ' ' (in both), '-' (in the
// golden file only) or '+' (in got only).
type edit struct {
	kind byte
	text string // with its "\n", if it has one
}

// diff renders the lines that differ between want and got, with context,
// unified-diff style.
func diff(want, got []byte) string {
	script := edits(lines(want), lines(got))
	// near[i]: script[i] is a change or within diffContext lines of one.
	near := make([]bool, len(script))
	for i, e := range script {
		if e.kind == ' ' {
			continue
		}
		for j := max(0, i-diffContext); j <= min(len(script)-1, i+diffContext); j++ {
			near[j] = true
		}
	}
	var b strings.Builder
	n, wl, gl := 0, 1, 1 // lines written; line numbers in want and got
	for i, e := range script {
		if near[i] {
			if n == diffMaxLines {
				b.WriteString("… (diff cut short)\n")
				break
			}
			if i == 0 || !near[i-1] {
				fmt.Fprintf(&b, "@@ golden line %d, got line %d @@\n", wl, gl)
			}
			fmt.Fprintf(&b, "%c %s\n", e.kind, strings.TrimSuffix(e.text, "\n"))
			if !strings.HasSuffix(e.text, "\n") {
				b.WriteString(`\ no newline at end` + "\n")
			}
			n++
		}
		if e.kind != '+' {
			wl++
		}
		if e.kind != '-' {
			gl++
		}
	}
	return b.String()
}

// lines splits b after each "\n"; a last line without one is kept as it is.
func lines(b []byte) []string {
	l := strings.SplitAfter(string(b), "\n")
	if l[len(l)-1] == "" {
		l = l[:len(l)-1]
	}
	return l
}

// edits is an edit script from a to b: the common head and tail, and
// between them the longest common subsequence.
func edits(a, b []string) []edit {
	head := 0
	for head < len(a) && head < len(b) && a[head] == b[head] {
		head++
	}
	tail := 0
	for tail < len(a)-head && tail < len(b)-head && a[len(a)-1-tail] == b[len(b)-1-tail] {
		tail++
	}
	var script []edit
	for _, l := range a[:head] {
		script = append(script, edit{' ', l})
	}
	script = append(script, middle(a[head:len(a)-tail], b[head:len(b)-tail])...)
	for _, l := range a[len(a)-tail:] {
		script = append(script, edit{' ', l})
	}
	return script
}

// middle is the edit script from a to b keeping their longest common
// subsequence of lines. Past diffMaxCells (quadratic time and space) it
// keeps nothing: all of a goes, all of b comes.
func middle(a, b []string) []edit {
	var script []edit
	n, m := len(a), len(b)
	if n*m > diffMaxCells {
		for _, l := range a {
			script = append(script, edit{'-', l})
		}
		for _, l := range b {
			script = append(script, edit{'+', l})
		}
		return script
	}
	// lcs[i][j] is the length of the longest common subsequence of a[i:]
	// and b[j:].
	lcs := make([][]int32, n+1)
	for i := range lcs {
		lcs[i] = make([]int32, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	i, j := 0, 0
	for i < n && j < m {
		switch {
		case a[i] == b[j]:
			script = append(script, edit{' ', a[i]})
			i++
			j++
		case lcs[i+1][j] >= lcs[i][j+1]:
			script = append(script, edit{'-', a[i]})
			i++
		default:
			script = append(script, edit{'+', b[j]})
			j++
		}
	}
	for ; i < n; i++ {
		script = append(script, edit{'-', a[i]})
	}
	for ; j < m; j++ {
		script = append(script, edit{'+', b[j]})
	}
	return script
}
