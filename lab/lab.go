// Package lab runs a site's machines as QEMU VMs on a private L2 network
// made by package netlab (a network namespace with a bridge holding the
// boot server's address and one tap per machine), with `plinth serve`
// inside it answering DHCP. It backs `plinth qemu up` and the netboot tests;
// what it adds to netlab is what both of those need: QEMU netdevs for taps,
// the command prefix QEMU runs under, and connections from inside.
package lab

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"syscall"
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
	_, err := l.StartProc(ctx, w, name, args...)
	return err
}

// Proc is a program running in the lab.
type Proc struct {
	cmd  *exec.Cmd
	done <-chan error
}

// StartProc is Start, with the program's process to stop before Close.
func (l *Lab) StartProc(ctx context.Context, w io.Writer, name string, args ...string) (*Proc, error) {
	cmd := l.nl.Command(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = w, w
	done, err := l.nl.Start(cmd)
	if err != nil {
		return nil, err
	}
	return &Proc{cmd: cmd, done: done}, nil
}

// Pid is the program's process ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Stop ends the program as an operator's service manager would: SIGTERM,
// then SIGKILL after grace; it returns once the process is gone.
func (p *Proc) Stop(grace time.Duration) error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop %d: %w", p.Pid(), err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return nil
}

// Dial connects to addr from inside the lab: the socket is made on a
// thread in the lab's namespace and stays there.
func (l *Lab) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return dialIn(ctx, l.nl.Name(), network, addr)
}

// Client is an HTTP client whose connections are made inside the lab.
func (l *Lab) Client() *http.Client { return ClientIn(l.nl.Name()) }

// ClientIn is an HTTP client whose connections are made inside the
// network namespace ns (a running lab's, by name). It sets no timeout:
// requests are bounded by their context (a journal asked for with
// ?fresh=45 takes that long).
func ClientIn(ns string) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialIn(ctx, ns, network, addr)
		},
		DisableKeepAlives: true,
	}
	return &http.Client{Transport: tr}
}

func dialIn(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := netlab.Enter(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Get fetches url from inside the lab, giving up after 10 s; a status
// other than 200 is an error.
func (l *Lab) Get(ctx context.Context, url string) ([]byte, error) {
	return l.GetWithin(ctx, url, 10*time.Second)
}

// GetWithin is Get giving up after d: for a request the server may hold
// (a journal asked for with ?fresh=SECONDS).
func (l *Lab) GetWithin(ctx context.Context, url string, d time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := l.Client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return b, nil
}

// Resolve looks name up from inside the lab, asking the DNS server at
// server (host:port) only. It returns the addresses in the order the
// server gave them.
func (l *Lab) Resolve(ctx context.Context, name, server string) ([]string, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return l.Dial(ctx, network, server)
	}}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addrs, err := r.LookupHost(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("resolve %s at %s: %w", name, server, err)
	}
	return addrs, nil
}

// Close stops everything in the lab (QEMU included) and deletes it.
func (l *Lab) Close() error { return l.nl.Close() }
