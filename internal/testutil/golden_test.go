package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func numbered(n int, edit func(i int) string) []byte {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		s := fmt.Sprintf("line %d", i)
		if edit != nil {
			s = edit(i)
		}
		if s != "" {
			b.WriteString(s + "\n")
		}
	}
	return []byte(b.String())
}

func TestGoldenPassesOnTheSameBytes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.golden")
	os.WriteFile(p, numbered(5, nil), 0o644)
	if f := run(func(t testing.TB) { Golden(t, p, numbered(5, nil)) }); len(f.errs)+len(f.fatal) > 0 || !f.ranOn {
		t.Errorf("same bytes: errors %q, fatal %q", f.errs, f.fatal)
	}
}

func TestGoldenShowsOnlyTheLinesThatDifferWithContext(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.golden")
	os.WriteFile(p, numbered(30, nil), 0o644)
	got := numbered(30, func(i int) string {
		switch i {
		case 10:
			return "line ten"
		case 25:
			return "" // gone
		}
		return fmt.Sprintf("line %d", i)
	})
	f := run(func(t testing.TB) { Golden(t, p, got) })
	if len(f.errs) != 1 || !f.ranOn {
		t.Fatalf("errors %q, went on %v: want one error and the test going on", f.errs, f.ranOn)
	}
	msg := f.errs[0]
	for _, want := range []string{p, "-update", "@@ golden line 7, got line 7 @@", "- line 10\n+ line ten\n", "  line 13\n", "@@ golden line 22, got line 22 @@", "- line 25\n", "  line 28\n"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	for _, far := range []string{"line 6\n", "line 18\n", "line 29\n"} {
		if strings.Contains(msg, far) {
			t.Errorf("message shows %q, far from any change:\n%s", far, msg)
		}
	}
}

func TestGoldenFailsOnAMissingFileSayingHowToMakeIt(t *testing.T) {
	p := filepath.Join(t.TempDir(), "absent.golden")
	f := run(func(t testing.TB) { Golden(t, p, []byte("x\n")) })
	if len(f.fatal) != 1 || !strings.Contains(f.fatal[0], "-update") || f.ranOn {
		t.Errorf("fatal %q, went on %v: want one failure naming -update", f.fatal, f.ranOn)
	}
}

func TestGoldenUpdateWritesTheFileWholeAndInPlace(t *testing.T) {
	defer func(v bool) { *update = v }(*update)
	*update = true
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "x.golden")
	for _, content := range []string{"first\n", "second, longer\n"} {
		if f := run(func(t testing.TB) { Golden(t, p, []byte(content)) }); len(f.errs)+len(f.fatal) > 0 {
			t.Fatalf("-update: errors %q, fatal %q", f.errs, f.fatal)
		}
		b, err := os.ReadFile(p)
		if err != nil || string(b) != content {
			t.Fatalf("after -update %s holds %q, %v; want %q", p, b, err, content)
		}
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", st.Mode().Perm())
	}
	if ents, _ := os.ReadDir(filepath.Dir(p)); len(ents) != 1 {
		t.Errorf("%s holds %v: a temporary file was left", filepath.Dir(p), ents)
	}
}

func TestDiff(t *testing.T) {
	for _, tc := range []struct {
		name, want, got, diff string
	}{
		{"a line added", "a\nb\n", "a\nx\nb\n", "@@ golden line 1, got line 1 @@\n  a\n+ x\n  b\n"},
		{"a line removed", "a\nb\nc\n", "a\nc\n", "@@ golden line 1, got line 1 @@\n  a\n- b\n  c\n"},
		{"the last newline lost", "a\nb\n", "a\nb", "@@ golden line 1, got line 1 @@\n  a\n- b\n+ b\n\\ no newline at end\n"},
		{"from nothing", "", "a\n", "@@ golden line 1, got line 1 @@\n+ a\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := diff([]byte(tc.want), []byte(tc.got)); got != tc.diff {
				t.Errorf("diff:\n%s\nwant:\n%s", got, tc.diff)
			}
		})
	}
}

func TestDiffOfLargeFilesIsCutShort(t *testing.T) {
	a := numbered(5000, nil)
	b := numbered(5000, func(i int) string { return fmt.Sprintf("other %d", i) })
	d := diff(a, b)
	if n := strings.Count(d, "\n"); n > diffMaxLines+3 || !strings.HasSuffix(d, "(diff cut short)\n") {
		t.Errorf("a diff of 10000 lines: %d lines shown, ending %q", n, d[max(0, len(d)-40):])
	}
}
