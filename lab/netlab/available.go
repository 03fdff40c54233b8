package netlab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// Available returns nil if labs can be made here, or an error naming
// everything missing: root, ip(8) (iproute2), /dev/net/tun.
func Available() error {
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, fmt.Errorf("not root (euid %d): namespaces, bridges and taps need CAP_NET_ADMIN and CAP_SYS_ADMIN", os.Geteuid()))
	}
	if _, err := exec.LookPath("ip"); err != nil {
		errs = append(errs, fmt.Errorf("no ip command (install iproute2): %w", err))
	}
	if f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0); err != nil {
		errs = append(errs, fmt.Errorf("cannot open /dev/net/tun (modprobe tun?): %w", err))
	} else {
		f.Close()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("netlab unavailable: %w", err)
	}
	return nil
}

// Require skips t when Available fails, or fails it when the environment
// has CI set (any value, as internal/testutil), where a missing lab must
// not pass silently.
func Require(t testing.TB) {
	t.Helper()
	err := Available()
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal(err)
	}
	t.Skip(err)
}
