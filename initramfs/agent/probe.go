package agent

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/initramfs/firstboot"
	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// probeRole asks the role's servers whether they serve, beyond systemd
// saying their units run, as the role's descriptor says (etcd's /health,
// the API server's /readyz, kubelet's /healthz). It returns the problems
// and the unit of the last probe.
func probeRole(ctx context.Context, sys System, cfg *node.Config) ([]string, string) {
	type probe struct{ what, url, ca, cert, key, want string }
	var ps []probe
	for _, p := range roles.Get(cfg.Role).Probes {
		pr := probe{what: strings.TrimSuffix(p.Unit, ".service"), url: p.URL(cfg), want: p.Want}
		switch {
		case p.Scheme == "http":
		case p.Client == roles.ClientNode:
			pr.ca, pr.cert, pr.key = role.CAFile, role.NodeCert, role.NodeKey
		default:
			pr.ca, pr.cert, pr.key = role.CAFile, role.IdentityCert(p.Client), role.IdentityKey(p.Client)
		}
		ps = append(ps, pr)
	}
	var problems []string
	unit := ""
	for _, p := range ps {
		unit = p.what + ".service"
		body, err := sys.Get(ctx, p.url, p.ca, p.cert, p.key)
		if err != nil {
			problems = append(problems, p.what+" not serving: "+err.Error())
		} else if !strings.Contains(body, p.want) {
			problems = append(problems, fmt.Sprintf("%s not healthy: %q", p.what, strings.TrimSpace(body)))
		}
	}
	return problems, unit
}

// Get fetches url: https with the CA and client certificate files, or
// plain http when ca is "".
func (OS) Get(ctx context.Context, url, ca, cert, key string) (string, error) {
	c := &http.Client{}
	if ca != "" {
		var err error
		if c, err = firstboot.TLSClient(ca, cert, key); err != nil {
			return "", err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}

// Listening lists the ports sockets listen on beyond loopback, from
// /proc/net: TCP sockets in LISTEN, UDP sockets bound and unconnected.
// Each is "tcp/N" or "udp/N", sorted, once.
func Listening(sys System) ([]string, error) {
	var out []string
	for _, f := range []struct {
		path, proto string
		state       string
	}{
		{"/proc/net/tcp", "tcp", "0A"}, {"/proc/net/tcp6", "tcp", "0A"},
		{"/proc/net/udp", "udp", "07"}, {"/proc/net/udp6", "udp", "07"},
	} {
		b, err := sys.ReadFile(f.path)
		if err != nil {
			if f.path == "/proc/net/tcp6" || f.path == "/proc/net/udp6" {
				continue // no IPv6 in this kernel
			}
			return nil, err
		}
		ports, err := parseProcNet(string(b), f.state)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.path, err)
		}
		for _, p := range ports {
			out = append(out, f.proto+"/"+strconv.Itoa(p))
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// parseProcNet returns the local ports of the sockets in state whose local
// address is not loopback and whose remote end is unset.
func parseProcNet(s, state string) ([]int, error) {
	var ports []int
	sc := bufio.NewScanner(strings.NewReader(s))
	first := true
	for sc.Scan() {
		if first { // the header
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			continue
		}
		if f[3] != state {
			continue
		}
		addr, port, err := procAddr(f[1])
		if err != nil {
			return nil, err
		}
		if _, rport, err := procAddr(f[2]); err != nil || rport != 0 {
			continue
		}
		if addr.IsLoopback() {
			continue
		}
		ports = append(ports, port)
	}
	return ports, sc.Err()
}

// procAddr parses /proc/net's "0100007F:0CEA": an address in the kernel's
// byte order (little-endian 32-bit words) and a hex port.
func procAddr(s string) (netip.Addr, int, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, fmt.Errorf("address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("port in %q", s)
	}
	raw, err := hex.DecodeString(h)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, 0, fmt.Errorf("address %q", s)
	}
	for i := 0; i < len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	a, _ := netip.AddrFromSlice(raw)
	return a.Unmap(), int(port), nil
}
