// Package netlab makes an isolated virtual L2 network for QEMU netboot
// tests: a network namespace holding a bridge (br0) with the boot server's
// address, and one tap per VM on that bridge. The namespace has no route,
// veth or NAT to anything outside it, so DHCP, TFTP and HTTP served inside
// it reach only the lab's VMs, and nothing the VMs send can leave it.
//
// QEMU must run inside the namespace (via Command) to use a tap: it opens
// the tap by name with TUNSETIFF in its own namespace, and a QEMU started
// elsewhere silently creates a new, unconnected tap there instead of failing.
//
// Everything needs root (Available says what is missing; Require turns that
// into a skip, or a failure under CI=true).
package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Bridge is the name of the bridge inside every lab.
const Bridge = "br0"

// DefaultSubnet is the lab's subnet when Config.Subnet is unset.
var DefaultSubnet = netip.MustParsePrefix("10.77.0.0/24")

// Config describes a lab. The zero value (plus a Name) is a usable lab.
type Config struct {
	// Name is a short label, [a-z0-9]{1,12}; the namespace is named
	// "plinth-nl-<Name>-<pid>-<random>", so labs of parallel tests and
	// runs never collide and leftovers of dead processes can be found.
	Name string
	// Subnet is the lab's IPv4 subnet; default DefaultSubnet. It must be
	// private (RFC 1918), so that even a misrouted packet could not be
	// meant for a real host.
	Subnet netip.Prefix
	// ServerAddr is br0's address, where a boot server listens; default
	// the subnet's first host address (.1).
	ServerAddr netip.Addr
	// Logger receives lab events; default slog.Default().
	Logger *slog.Logger
}

// Lab is one isolated network namespace with a bridge. Its methods are
// safe for concurrent use.
type Lab struct {
	ns     string
	prefix netip.Prefix // ServerAddr with the subnet's length
	log    *slog.Logger

	mu      sync.Mutex
	closed  bool
	taps    []string
	created map[*exec.Cmd]bool // made by Command, so known to run inside ns
	procs   []*proc            // started by Start
}

var nameRE = regexp.MustCompile(`^[a-z0-9]{1,12}$`)

// withDefaults validates cfg and fills in its defaults.
func (cfg Config) withDefaults() (Config, error) {
	if !nameRE.MatchString(cfg.Name) {
		return cfg, fmt.Errorf("lab name %q: want 1 to 12 of [a-z0-9]", cfg.Name)
	}
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = DefaultSubnet
	}
	cfg.Subnet = cfg.Subnet.Masked()
	if !cfg.Subnet.Addr().Is4() || !cfg.Subnet.Addr().IsPrivate() {
		return cfg, fmt.Errorf("lab subnet %s: want a private IPv4 subnet", cfg.Subnet)
	}
	if cfg.Subnet.Bits() > 30 {
		return cfg, fmt.Errorf("lab subnet %s: want at most /30, to leave room for the VMs", cfg.Subnet)
	}
	if !cfg.ServerAddr.IsValid() {
		cfg.ServerAddr = cfg.Subnet.Addr().Next()
	}
	if !cfg.Subnet.Contains(cfg.ServerAddr) || cfg.ServerAddr == cfg.Subnet.Addr() || cfg.ServerAddr == lastAddr(cfg.Subnet) {
		return cfg, fmt.Errorf("lab server address %s: want a host address of %s", cfg.ServerAddr, cfg.Subnet)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg, nil
}

// lastAddr is p's broadcast address.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// New creates a lab: a fresh namespace with lo up and br0 up holding
// cfg.ServerAddr, and nothing else. It first deletes leftovers of labs whose
// process has died (see Config.Name). If t is not nil, t.Cleanup closes the
// lab (and reports a failed cleanup as a test error); otherwise the caller
// must call Close.
func New(ctx context.Context, t testing.TB, cfg Config) (*Lab, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := Available(); err != nil {
		return nil, err
	}
	RemoveStale(ctx, cfg.Logger)

	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("lab name: %w", err)
	}
	ns := formatName(cfg.Name, os.Getpid(), hex.EncodeToString(rnd[:]))
	l := &Lab{
		ns:      ns,
		prefix:  netip.PrefixFrom(cfg.ServerAddr, cfg.Subnet.Bits()),
		log:     cfg.Logger.With("netns", ns),
		created: map[*exec.Cmd]bool{},
	}
	if err := ip(ctx, "netns", "add", ns); err != nil {
		return nil, err
	}
	if t != nil {
		t.Cleanup(func() {
			if err := l.Close(); err != nil {
				t.Errorf("netlab cleanup: %v", err)
			}
		})
	}
	// A fixed bridge MAC: by default a bridge takes the lowest MAC of its
	// ports, so it would change under the VMs' ARP caches as taps come
	// and go.
	steps := [][]string{
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "link", "add", Bridge, "address", randomMAC(), "type", "bridge", "forward_delay", "0", "stp_state", "0"},
		{"-n", ns, "addr", "add", l.prefix.String(), "dev", Bridge},
		{"-n", ns, "link", "set", Bridge, "up"},
	}
	for _, s := range steps {
		if err := ip(ctx, s...); err != nil {
			if t == nil {
				err = errors.Join(err, l.Close())
			}
			return nil, err
		}
	}
	l.log.Info("lab up", "addr", l.prefix)
	return l, nil
}

// Name is the lab's network namespace, as `ip netns` shows it.
func (l *Lab) Name() string { return l.ns }

// ServerAddr is br0's address, where a boot server inside the lab listens.
func (l *Lab) ServerAddr() netip.Addr { return l.prefix.Addr() }

// ServerPrefix is ServerAddr with the subnet's length (e.g. 10.77.0.1/24).
func (l *Lab) ServerPrefix() netip.Prefix { return l.prefix }

// Subnet is the lab's subnet (e.g. 10.77.0.0/24).
func (l *Lab) Subnet() netip.Prefix { return l.prefix.Masked() }

var tapRE = regexp.MustCompile(`^[a-z0-9_-]{1,15}$`)

// AddTap creates a tap inside the lab, attached to br0 and up, and returns
// its name for QEMU: `-netdev tap,id=n0,ifname=NAME,script=no,downscript=no`
// (QEMU started with Command, so inside the lab). An empty name picks
// "tapN". The tap has no carrier until QEMU opens it.
func (l *Lab) AddTap(ctx context.Context, name string) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return "", fmt.Errorf("add tap to lab %s: lab is closed", l.ns)
	}
	if name == "" {
		name = fmt.Sprintf("tap%d", len(l.taps))
	}
	if !tapRE.MatchString(name) || name == Bridge || name == "lo" {
		return "", fmt.Errorf("tap name %q: want 1 to 15 of [a-z0-9_-], not %s or lo", name, Bridge)
	}
	for _, s := range [][]string{
		{"-n", l.ns, "tuntap", "add", "dev", name, "mode", "tap"},
		{"-n", l.ns, "link", "set", name, "master", Bridge},
		{"-n", l.ns, "link", "set", name, "up"},
	} {
		if err := ip(ctx, s...); err != nil {
			return "", fmt.Errorf("add tap %s: %w", name, err)
		}
	}
	l.taps = append(l.taps, name)
	l.log.Info("tap added", "tap", name)
	return name, nil
}

// ip runs ip(8) and returns its stdout; errors carry its stderr.
func ip(ctx context.Context, args ...string) error {
	_, err := ipOutput(ctx, args...)
	return err
}

func ipOutput(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// randomMAC is a random locally administered unicast MAC.
func randomMAC() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	b[0] = b[0]&^0x01 | 0x02
	return net.HardwareAddr(b).String()
}
