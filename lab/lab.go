// Package lab runs a site's machines as QEMU VMs on a private L2 network
// made by package netlab (a network namespace with a bridge holding the
// boot server's address and one tap per machine), with `plinth serve`
// inside it answering DHCP. It backs `plinth qemu up` and the netboot tests;
// what it adds to netlab is what both of those need: QEMU netdevs for taps,
// the command prefix QEMU runs under, and fetching URLs from inside.
package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/lab/netlab"
)

// Lab is one private network.
type Lab struct {
	Server string // the boot server's address on the bridge
	nl     *netlab.Lab
}

// Available says why a lab cannot be made here, or nil.
func Available() error { return netlab.Available() }

// New makes a lab named name whose bridge holds server (e.g. 10.77.0.1/24).
func New(ctx context.Context, name, server string, log *slog.Logger) (*Lab, error) {
	p, err := netip.ParsePrefix(server)
	if err != nil {
		return nil, fmt.Errorf("lab address %q: %w", server, err)
	}
	nl, err := netlab.New(ctx, nil, netlab.Config{Name: name, Subnet: p.Masked(), ServerAddr: p.Addr(), Logger: log})
	if err != nil {
		return nil, err
	}
	return &Lab{Server: p.Addr().String(), nl: nl}, nil
}

// Name is the network namespace's name.
func (l *Lab) Name() string { return l.nl.Name() }

// AddTap adds a tap on the bridge and returns the netdev for QEMU.
func (l *Lab) AddTap(ctx context.Context) (string, error) {
	tap, err := l.nl.AddTap(ctx, "")
	if err != nil {
		return "", err
	}
	return "tap,ifname=" + tap + ",script=no,downscript=no", nil
}

// Wrap is the command prefix that runs a program inside the lab; QEMU must
// run there to open its tap (elsewhere it silently makes a new one).
func (l *Lab) Wrap() []string { return []string{"ip", "netns", "exec", l.nl.Name()} }

// Start runs a program inside the lab until Close, its output to w.
func (l *Lab) Start(ctx context.Context, w io.Writer, name string, args ...string) error {
	cmd := l.nl.Command(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = w, w
	_, err := l.nl.Start(cmd)
	return err
}

// Get fetches url from inside the lab by running the helper binary self (a
// program that calls HelperGet first thing) there.
func (l *Lab) Get(ctx context.Context, self, url string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.nl.Name(), self)
	cmd.Env = append(os.Environ(), "PLINTH_HELPER_GET="+url)
	return cmd.Output()
}

// Resolve looks name up from inside the lab, asking the DNS server at
// server (host:port) only, by running the helper binary self there. It
// returns the addresses in the order the server gave them.
func (l *Lab) Resolve(ctx context.Context, self, name, server string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.nl.Name(), self)
	cmd.Env = append(os.Environ(), "PLINTH_HELPER_RESOLVE="+name, "PLINTH_HELPER_DNS="+server)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("resolve %s at %s: %v: %s", name, server, err, ee.Stderr)
		}
		return nil, err
	}
	return strings.Fields(string(out)), nil
}

// HelperGet is the other side of Get and Resolve: call it first thing in
// main (or TestMain); it returns at once when the environment does not ask
// for it.
func HelperGet() {
	if name := os.Getenv("PLINTH_HELPER_RESOLVE"); name != "" {
		server := os.Getenv("PLINTH_HELPER_DNS")
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		addrs, err := r.LookupHost(ctx, name)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Println(strings.Join(addrs, " "))
		os.Exit(0)
	}
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

// Close stops everything in the lab (QEMU included) and deletes it.
func (l *Lab) Close() error { return l.nl.Close() }
