// Package lab runs a site's machines as QEMU VMs on a private L2 network:
// a network namespace with a bridge holding the boot server's address and
// one tap per machine, `plinth serve` inside it answering DHCP, and each
// machine PXE-booting from an empty disk. It backs `plinth qemu up` and the
// netboot tests. Nothing in the namespace is routed anywhere else.
package lab

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Lab is one private network.
type Lab struct {
	NS     string
	Server string // the boot server's address on the bridge
	procs  []*exec.Cmd
	taps   int
	log    *slog.Logger
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Available says why a lab cannot be made here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("a QEMU lab needs root (network namespaces and taps)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("no ip command: apt-get install iproute2")
	}
	return nil
}

// New makes the namespace (named from name and this process's pid) and its
// bridge with server (e.g. 10.77.0.1/24).
func New(name, server string, log *slog.Logger) (*Lab, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	addr, _, _ := strings.Cut(server, "/")
	l := &Lab{NS: fmt.Sprintf("%s-%d", name, os.Getpid()), Server: addr, log: log}
	_ = ip("netns", "del", l.NS) // a leftover of a crashed run with this pid
	for _, s := range [][]string{
		{"netns", "add", l.NS},
		{"-n", l.NS, "link", "set", "lo", "up"},
		{"-n", l.NS, "link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0"},
		{"-n", l.NS, "addr", "add", server, "dev", "br0"},
		{"-n", l.NS, "link", "set", "br0", "up"},
	} {
		if err := ip(s...); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

// AddTap adds a tap on the bridge and returns the netdev for QEMU.
func (l *Lab) AddTap() (string, error) {
	tap := fmt.Sprintf("tap%d", l.taps)
	l.taps++
	for _, s := range [][]string{
		{"-n", l.NS, "tuntap", "add", "dev", tap, "mode", "tap"},
		{"-n", l.NS, "link", "set", tap, "master", "br0"},
		{"-n", l.NS, "link", "set", tap, "up"},
	} {
		if err := ip(s...); err != nil {
			return "", err
		}
	}
	return "tap,ifname=" + tap + ",script=no,downscript=no", nil
}

// Wrap is the command prefix that runs a program inside the lab.
func (l *Lab) Wrap() []string { return []string{"ip", "netns", "exec", l.NS} }

// Start runs a program inside the lab until Close, its output to w.
func (l *Lab) Start(ctx context.Context, w io.Writer, name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.NS, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	l.procs = append(l.procs, cmd)
	return cmd, nil
}

// Get fetches url from inside the lab with the helper binary self (a
// program that, given PLINTH_HELPER_GET=url, prints the body).
func (l *Lab) Get(ctx context.Context, self, url string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.NS, self)
	cmd.Env = append(os.Environ(), "PLINTH_HELPER_GET="+url)
	return cmd.Output()
}

// HelperGet is the other side of Get: call it first thing in main (or
// TestMain); it returns when the environment does not ask for it.
func HelperGet() {
	url := os.Getenv("PLINTH_HELPER_GET")
	if url == "" {
		return
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(os.Stdout, resp.Body)
	if resp.StatusCode != http.StatusOK {
		os.Exit(3)
	}
	os.Exit(0)
}

// Close stops everything started in the lab and deletes it.
func (l *Lab) Close() {
	for _, p := range l.procs {
		if p.Process != nil {
			_ = syscall.Kill(-p.Process.Pid, syscall.SIGTERM)
		}
	}
	for _, p := range l.procs {
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
		}
	}
	if err := ip("netns", "del", l.NS); err != nil {
		l.log.Warn("lab cleanup", "err", err)
	}
}
