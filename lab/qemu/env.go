package qemu

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Fixtures is the fixture directory: $PLINTH_FIXTURES, else
// $HOME/.cache/plinth/fixtures (where `make fixtures` writes).
func Fixtures() string {
	if fx := os.Getenv("PLINTH_FIXTURES"); fx != "" {
		return fx
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = os.TempDir()
	}
	return filepath.Join(home, ".cache", "plinth", "fixtures")
}

// KernelFixture returns the Debian kernel of the kernel fixture: the
// Fixtures()/kernel/boot/vmlinuz-VERSION whose lib/modules/VERSION exists
// (so checksum files and stray kernels without modules are ignored).
func KernelFixture() (string, error) {
	root := filepath.Join(Fixtures(), "kernel")
	m, err := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if err != nil {
		return "", fmt.Errorf("kernel fixture: %w", err)
	}
	for i := len(m) - 1; i >= 0; i-- {
		ver := strings.TrimPrefix(filepath.Base(m[i]), "vmlinuz-")
		if st, err := os.Stat(filepath.Join(root, "lib", "modules", ver)); err == nil && st.IsDir() {
			return m[i], nil
		}
	}
	return "", fmt.Errorf("kernel fixture: no %s/boot/vmlinuz-VERSION with lib/modules/VERSION (run make fixtures, or set PLINTH_FIXTURES)", root)
}

// Available says what is missing to boot the fixture kernel here: the QEMU
// binary, the kernel fixture, or both. nil means everything is there.
func Available() error {
	var errs []error
	if _, err := exec.LookPath(Binary); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w (apt-get install qemu-system-x86)", Binary, err))
	}
	if _, err := KernelFixture(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Require skips the test when Available reports something missing, or
// fails it when CI is set: in CI a missing QEMU is a broken runner, not a
// reason to pass.
func Require(t testing.TB) {
	t.Helper()
	err := Available()
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("QEMU tests cannot run (CI is set, so this fails): %v", err)
	}
	t.Skipf("QEMU tests cannot run: %v", err)
}
