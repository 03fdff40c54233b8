package qemutests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// netlab is an isolated L2 network in its own network namespace: a bridge
// with the boot server's address and one tap per machine. Nothing in it is
// routed anywhere else.
type netlab struct {
	ns     string
	server string // the boot server's address on the bridge
	procs  []*exec.Cmd
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// newNetlab makes the namespace and the bridge; the test's cleanup kills
// what ran inside and deletes the namespace.
func newNetlab(t *testing.T, taps int) *netlab {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the netboot test needs root (network namespaces, taps)")
		}
		t.Skip("the netboot test needs root")
	}
	l := &netlab{ns: fmt.Sprintf("plinth-%d", os.Getpid()), server: "10.77.0.1"}
	_ = ipCmd("netns", "del", l.ns) // a leftover of a crashed run with this pid
	steps := [][]string{
		{"netns", "add", l.ns},
		{"-n", l.ns, "link", "set", "lo", "up"},
		{"-n", l.ns, "link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0"},
		{"-n", l.ns, "addr", "add", l.server + "/24", "dev", "br0"},
		{"-n", l.ns, "link", "set", "br0", "up"},
	}
	for i := 0; i < taps; i++ {
		tap := fmt.Sprintf("tap%d", i)
		steps = append(steps,
			[]string{"-n", l.ns, "tuntap", "add", "dev", tap, "mode", "tap"},
			[]string{"-n", l.ns, "link", "set", tap, "master", "br0"},
			[]string{"-n", l.ns, "link", "set", tap, "up"})
	}
	t.Cleanup(l.close)
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// wrap is the prefix that runs a command inside the lab.
func (l *netlab) wrap() []string { return []string{"ip", "netns", "exec", l.ns} }

// start runs a command inside the lab until the test ends.
func (l *netlab) start(t *testing.T, ctx context.Context, logf string, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.ns, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	f, err := os.Create(logf)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l.procs = append(l.procs, cmd)
	return cmd
}

func (l *netlab) close() {
	for _, p := range l.procs {
		if p.Process != nil {
			_ = syscall.Kill(-p.Process.Pid, syscall.SIGTERM)
		}
	}
	for _, p := range l.procs {
		_ = p.Wait()
	}
	_ = ipCmd("netns", "del", l.ns)
}
