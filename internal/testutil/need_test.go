package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// fakeTB records what a helper did to its test. Skip and Fatal end the
// goroutine, as testing's own do; any method not overridden here panics
// on the nil TB.
type fakeTB struct {
	testing.TB
	skipped, fatal, errs []string
	ranOn                bool // the code after the helper ran
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Skip(args ...any) {
	f.skipped = append(f.skipped, fmt.Sprint(args...))
	runtime.Goexit()
}

func (f *fakeTB) Fatal(args ...any) {
	f.fatal = append(f.fatal, fmt.Sprint(args...))
	runtime.Goexit()
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = append(f.fatal, fmt.Sprintf(format, args...))
	runtime.Goexit()
}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.errs = append(f.errs, fmt.Sprintf(format, args...))
}

// run runs test on a fake TB in a goroutine of its own, as testing does.
func run(test func(t testing.TB)) *fakeTB {
	f := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		test(f)
		f.ranOn = true
	}()
	<-done
	return f
}

func TestNeedSkipsWithoutCIAndFailsUnderCI(t *testing.T) {
	for _, tc := range []struct {
		ci          string
		ok          bool
		skip, fatal bool
	}{
		{ci: "", ok: true},
		{ci: "true", ok: true},
		{ci: "", ok: false, skip: true},
		{ci: "true", ok: false, fatal: true},
		{ci: "1", ok: false, fatal: true},
	} {
		t.Run(fmt.Sprintf("CI=%q,ok=%v", tc.ci, tc.ok), func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			f := run(func(t testing.TB) { Need(t, tc.ok, "no %s: make deps", "widget") })
			if got := len(f.skipped) == 1; got != tc.skip {
				t.Errorf("skipped %q, want a skip: %v", f.skipped, tc.skip)
			}
			if got := len(f.fatal) == 1; got != tc.fatal {
				t.Errorf("failed %q, want a failure: %v", f.fatal, tc.fatal)
			}
			if f.ranOn != tc.ok {
				t.Errorf("the test went on past Need: %v, want %v", f.ranOn, tc.ok)
			}
			for _, msg := range append(f.skipped, f.fatal...) {
				if !strings.Contains(msg, "no widget: make deps") {
					t.Errorf("message %q does not say what is missing", msg)
				}
			}
			if tc.fatal && !strings.Contains(f.fatal[0], "CI") {
				t.Errorf("failure %q does not say why it is not a skip", f.fatal[0])
			}
		})
	}
}

func TestNeedToolReturnsThePathOrStops(t *testing.T) {
	dir := t.TempDir()
	tool := filepath.Join(dir, "plinth-test-tool")
	if err := os.WriteFile(tool, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	t.Setenv("CI", "")
	var got string
	f := run(func(t testing.TB) { got = NeedTool(t, "plinth-test-tool", "never needed") })
	if got != tool || !f.ranOn {
		t.Errorf("NeedTool = %q (went on: %v), want %s", got, f.ranOn, tool)
	}
	f = run(func(t testing.TB) { NeedTool(t, "plinth-no-such-tool", "apt-get install it") })
	if len(f.skipped) != 1 || !strings.Contains(f.skipped[0], "plinth-no-such-tool") || !strings.Contains(f.skipped[0], "apt-get install it") {
		t.Errorf("a missing tool: skipped %q, want its name and the hint", f.skipped)
	}
	t.Setenv("CI", "true")
	if f = run(func(t testing.TB) { NeedTool(t, "plinth-no-such-tool", "apt-get install it") }); len(f.fatal) != 1 {
		t.Errorf("a missing tool under CI: failed %q, want a failure", f.fatal)
	}
}

func TestNeedRootStopsOnlyOthers(t *testing.T) {
	t.Setenv("CI", "")
	f := run(func(t testing.TB) { NeedRoot(t, "chown") })
	root := os.Geteuid() == 0
	if f.ranOn != root || (len(f.skipped) == 1) == root {
		t.Errorf("as uid %d: went on %v, skipped %q", os.Geteuid(), f.ranOn, f.skipped)
	}
	if !root && !strings.Contains(f.skipped[0], "chown needs root") {
		t.Errorf("skip %q does not say what needs root", f.skipped[0])
	}
}
