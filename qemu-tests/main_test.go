// Package qemutests holds plinth's end-to-end tests: real kernels, real
// initramfs images and real QEMU machines, driven through the plinth CLI the
// way an operator drives it. They run with PLINTH_QEMU_TESTS=1 (make test);
// under CI a missing prerequisite fails instead of skipping.
package qemutests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

var (
	plinthBin string // the CLI built once for all tests
	srcDir    string // the plinth tree
	fixtures  string // PLINTH_FIXTURES
)

func TestMain(m *testing.M) {
	if os.Getenv("PLINTH_QEMU_TESTS") == "" {
		fmt.Println("qemu-tests: set PLINTH_QEMU_TESTS=1 (make qemu-test) to boot real machines")
		os.Exit(0)
	}
	_, file, _, _ := runtime.Caller(0)
	srcDir = filepath.Dir(filepath.Dir(file))
	fixtures = os.Getenv("PLINTH_FIXTURES")
	if fixtures == "" {
		home, _ := os.UserHomeDir()
		fixtures = filepath.Join(home, ".cache", "plinth", "fixtures")
	}
	tmp, err := os.MkdirTemp("", "plinth-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	plinthBin = filepath.Join(tmp, "plinth")
	build := exec.Command("go", "build", "-o", plinthBin, "./cmd/plinth")
	build.Dir = srcDir
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build plinth: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(tmp)
	os.Exit(code)
}

// need fails (under CI) or skips the test when a fixture is missing.
func need(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			msg := fmt.Sprintf("missing %s: run `make fixtures` first", p)
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

// plinth runs the CLI and returns its combined output.
func plinth(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, plinthBin, args...)
	cmd.Dir = srcDir
	cmd.Env = append(os.Environ(), "PLINTH_SRC="+srcDir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("plinth %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	t.Logf("plinth %s (%.1fs)", args[0], time.Since(start).Seconds())
	return out.String()
}

// writeFile writes a test input, creating its directory.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// figure logs a measured number in a form the Makefile's filter keeps.
func figure(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf("figure: "+format, args...)
}
