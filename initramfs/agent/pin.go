package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/internal/fsutil"
)

// The API pool pinned in /etc/hosts. The site DNS that answers the API
// name is the boot server; with it down, a node whose kubelet reconnects
// would find no API server. The boot server's reply to each certified
// report names the pool; the agent keeps it in a marked block of
// /etc/hosts (read before DNS: nsswitch "files dns"), so the node keeps
// the last pool it was told while the boot server is unreachable, and
// follows it again once the server is back. An empty pool removes the
// block: the node asks DNS as before.

const (
	pinBegin = "# plinth: API pool (the agent keeps this block; edits are lost)"
	pinEnd   = "# plinth: end of API pool"
)

// HostsFile is where the pool is pinned.
const HostsFile = "/etc/hosts"

// PinHosts is hosts with the block for pool replaced (or removed when the
// pool is empty). The addresses are rotated by a hash of the machine's
// name, so the nodes of a site do not all start with the same server
// (resolvers return /etc/hosts entries in file order; Go and glibc clients
// try the next one when the first does not answer).
func PinHosts(hosts []byte, pool api.APIPool, machine string) ([]byte, error) {
	var out bytes.Buffer
	in := false
	for line := range strings.Lines(string(hosts)) {
		switch strings.TrimRight(line, "\n") {
		case pinBegin:
			in = true
			continue
		case pinEnd:
			in = false
			continue
		}
		if !in {
			out.WriteString(line)
		}
	}
	if in {
		return nil, errors.New("the API pool block has no end marker")
	}
	if pool.Name == "" || len(pool.Addrs) == 0 {
		return out.Bytes(), nil
	}
	if strings.ContainsAny(pool.Name, " \t\n#") {
		return nil, fmt.Errorf("API name %q cannot go into a hosts file", pool.Name)
	}
	var addrs []netip.Addr
	for _, a := range pool.Addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return nil, fmt.Errorf("API pool address %q: %w", a, err)
		}
		addrs = append(addrs, ip)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	h := fnv.New32a()
	h.Write([]byte(machine))
	k := int(h.Sum32() % uint32(len(addrs)))
	addrs = append(addrs[k:], addrs[:k]...)
	if out.Len() > 0 && !bytes.HasSuffix(out.Bytes(), []byte("\n")) {
		out.WriteByte('\n')
	}
	out.WriteString(pinBegin + "\n")
	for _, a := range addrs {
		fmt.Fprintf(&out, "%s\t%s\n", a, pool.Name)
	}
	out.WriteString(pinEnd + "\n")
	return out.Bytes(), nil
}

// PinnedAddrs are the addresses of the block PinHosts wrote, in order.
func PinnedAddrs(hosts []byte) []string {
	var out []string
	in := false
	for line := range strings.Lines(string(hosts)) {
		switch line = strings.TrimSpace(line); {
		case line == pinBegin:
			in = true
		case line == pinEnd:
			in = false
		case in:
			if f := strings.Fields(line); len(f) > 0 {
				out = append(out, f[0])
			}
		}
	}
	return out
}

// PreferLive is hosts with the pinned API servers that up says answer
// moved ahead of those that do not, each group in its order. Nothing is
// dropped: a server that does not answer stays pinned, last, and moves
// back when it answers again. With none or all up, hosts is unchanged.
//
// The boot server takes a dead master out of the pool within seconds, but
// a node hears of it only with the reply to its next report — and not at
// all while the boot server is down. Until then every new connection of
// the node's clients would first wait on the dead address (a connect
// timeout, or an ARP failure of about 3 s) before trying the next.
func PreferLive(hosts []byte, up func(addr string) bool) []byte {
	var before, after bytes.Buffer
	var live, dead []string
	in, seen := false, false
	for line := range strings.Lines(string(hosts)) {
		switch t := strings.TrimRight(line, "\n"); {
		case t == pinBegin:
			in, seen = true, true
			before.WriteString(line)
		case t == pinEnd:
			in = false
			after.WriteString(line)
		case in:
			if f := strings.Fields(t); len(f) > 0 && up(f[0]) {
				live = append(live, line)
			} else {
				dead = append(dead, line)
			}
		case seen:
			after.WriteString(line)
		default:
			before.WriteString(line)
		}
	}
	if in || len(live) == 0 || len(dead) == 0 {
		return hosts
	}
	out := before.Bytes()
	for _, l := range append(live, dead...) {
		out = append(out, l...)
	}
	return append(out, after.Bytes()...)
}

// probeTimeout bounds one connection attempt to a pinned API server.
const probeTimeout = 2 * time.Second

// PreferLiveAPI reorders the pinned API pool (PreferLive) by whether each
// address accepts a TCP connection on port, and writes the hosts file,
// atomically, when that changes it. It then returns what it did, for the
// node's log: the new order and the addresses that did not answer.
func (OS) PreferLiveAPI(ctx context.Context, port int) (string, error) {
	return preferLiveAPI(ctx, HostsFile, port)
}

func preferLiveAPI(ctx context.Context, hostsFile string, port int) (string, error) {
	old, err := os.ReadFile(hostsFile)
	if err != nil {
		return "", err
	}
	addrs := PinnedAddrs(old)
	if len(addrs) < 2 {
		return "", nil
	}
	var mu sync.Mutex
	up := map[string]bool{}
	var wg sync.WaitGroup
	for _, a := range addrs {
		wg.Go(func() {
			d := net.Dialer{Timeout: probeTimeout}
			c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(a, strconv.Itoa(port)))
			if err == nil {
				c.Close()
			}
			mu.Lock()
			up[a] = err == nil
			mu.Unlock()
		})
	}
	wg.Wait()
	b := PreferLive(old, func(a string) bool { return up[a] })
	if bytes.Equal(b, old) {
		return "", nil
	}
	if err := fsutil.WriteFileAtomic(hostsFile, b, 0o644); err != nil {
		return "", err
	}
	var down []string
	for _, a := range addrs {
		if !up[a] {
			down = append(down, a)
		}
	}
	return fmt.Sprintf("pinned order now %s (no answer on port %d from %s)", strings.Join(PinnedAddrs(b), " "), port, strings.Join(down, " ")), nil
}

// PinAPI pins pool in the hosts file, atomically, when it changes it.
func (OS) PinAPI(pool api.APIPool, machine string) error {
	old, err := os.ReadFile(HostsFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	b, err := PinHosts(old, pool, machine)
	if err != nil || bytes.Equal(b, old) {
		return err
	}
	return fsutil.WriteFileAtomic(HostsFile, b, 0o644)
}
