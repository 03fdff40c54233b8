// Package testutil is what plinth's tests share: Need and its kin, for a
// test that cannot run on this machine, and Golden, for output pinned in a
// file under testdata/. For tests and the test-support code beside them;
// standard library only.
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// Need stops t unless ok: the test needs something this machine lacks (a
// tool, a fixture, root), which the formatted message names, with how to
// get it. Normally t is skipped. Under CI (the environment variable CI set
// to anything) t fails instead: a test skipped there would pass unseen.
//
// Opting in or out (testing.Short, a PLINTH_E2E not set) is not a missing
// prerequisite: such tests call t.Skip themselves.
func Need(t testing.TB, ok bool, format string, args ...any) {
	t.Helper()
	if ok {
		return
	}
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (CI is set: a missing prerequisite fails the test there)")
	}
	t.Skip(msg)
}

// NeedTool returns the path of the program name, looked up in $PATH, or
// stops t as Need does; hint says how to install it.
func NeedTool(t testing.TB, name, hint string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	Need(t, err == nil, "%s is not installed: %s", name, hint)
	return p
}

// NeedRoot stops t as Need does unless the test runs as root; why says what
// needs it.
func NeedRoot(t testing.TB, why string) {
	t.Helper()
	Need(t, os.Geteuid() == 0, "%s needs root", why)
}
