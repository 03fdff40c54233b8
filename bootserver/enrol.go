package bootserver

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/profiles"
)

// Enrolment tokens (site enrolment = "token"). The boot script endpoint
// takes a MAC from the query string, which anyone can type, so a token is
// minted only when the address asking is one the server has reason to tie
// to that MAC (see verifyAddress). The token rides on the kernel command
// line, is bound to the machine and that address, lives tokenTTL and opens
// the machine's profile once. See README.md for what it does not stop.

// tokens are the outstanding enrolment tokens. With a state directory
// they are kept in TokensFile (by hash, as report tokens are), so a
// machine that got its boot script just before a server restart still
// gets its profile after it.
type tokens struct {
	mu   sync.Mutex
	path string
	log  *slog.Logger
	m    map[string]tokenInfo // hashToken(token) →
}

type tokenInfo struct {
	Machine string    `json:"machine"`
	IP      string    `json:"ip"`
	Expires time.Time `json:"expires"`
}

// TokensFile keeps the outstanding enrolment tokens in the state directory.
const TokensFile = "enrol-tokens.json"

const tokenTTL = 15 * time.Minute

// loadTokens reads the outstanding tokens from path ("": none, kept in
// memory only). A file that cannot be read is logged and starts empty:
// machines in the middle of a boot then ask for a new boot script.
func loadTokens(path string, log *slog.Logger) *tokens {
	t := &tokens{path: path, log: log, m: map[string]tokenInfo{}}
	if err := readState(path, &t.m); err != nil {
		log.Error("enrolment tokens: not read; machines between boot script and profile ask for a new boot script", "file", path, "err", err)
		t.m = map[string]tokenInfo{}
	}
	return t
}

// newToken is 128 random bits, hex.
func newToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("mint token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// save writes the table; the caller holds mu.
func (t *tokens) save() error { return writeState(t.path, t.m, 0o600) }

func (t *tokens) mint(machine, ip string) (string, error) {
	tok, err := newToken()
	if err != nil {
		return "", err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	for k, v := range t.m {
		if now.After(v.Expires) {
			delete(t.m, k)
		}
	}
	t.m[hashToken(tok)] = tokenInfo{Machine: machine, IP: ip, Expires: now.Add(tokenTTL).UTC()}
	if err := t.save(); err != nil {
		delete(t.m, hashToken(tok))
		return "", fmt.Errorf("enrolment token of %s: %w", machine, err)
	}
	return tok, nil
}

// use consumes a token if it was minted for machine and ip and is fresh.
func (t *tokens) use(tok, machine, ip string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := hashToken(tok)
	v, ok := t.m[k]
	if !ok || v.Machine != machine || v.IP != ip || time.Now().After(v.Expires) {
		return false
	}
	delete(t.m, k)
	if err := t.save(); err != nil {
		// Used in memory; on disk until it expires. A restart inside
		// tokenTTL would open the profile once more to the same
		// machine and address.
		t.log.Warn("enrolment tokens: not saved", "file", t.path, "err", err)
	}
	return true
}

// verifyAddress says whether a boot script request from ip may be the
// machine m (whose MAC the request claimed), and how that was decided:
//   - a machine with a static address must ask from it;
//   - else the address this server's DHCP leased to the MAC;
//   - else the kernel's neighbour table: on the boot network, the MAC
//     that answers ARP for ip must be m's.
//
// A request that fits none of them gets no token.
func (s *Server) verifyAddress(m *profiles.Machine, mac, ip string) (how string, ok bool) {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return "", false
	}
	addr = addr.Unmap()
	if m.Address != "" {
		p, err := netip.ParsePrefix(m.Address)
		return "static address", err == nil && p.Addr() == addr
	}
	if mac == "" {
		return "", false
	}
	if a, ok := s.leases.lookup(mac); ok && a == addr {
		return "dhcp lease", true
	}
	if seen, ok := s.neighbour(addr); ok && strings.EqualFold(seen, mac) {
		return "neighbour table", true
	}
	return "", false
}

// enrolMAC is the MAC whose address a boot of m must come from: the
// site's for a machine named by MAC; for one matched by UUID or labels
// (which anyone can claim, and no address check can tie to a machine), the
// MAC it first enrolled with (firstMACs), else the one this boot reports,
// to be kept on success. A later boot reporting another MAC is refused.
func (s *Server) enrolMAC(m *profiles.Machine, queried string) (string, error) {
	if m.MAC != "" {
		return m.MAC, nil
	}
	if first, ok := s.firstMACs.get(m.Name); ok {
		if !strings.EqualFold(first, queried) {
			return "", fmt.Errorf("machine %s enrolled with MAC %s, and this boot reports %s; if the machine's NIC changed, set its mac in the site (or remove it from %s)",
				m.Name, first, orDash(queried), firstMACsFile)
		}
		return first, nil
	}
	if queried == "" {
		return "", fmt.Errorf("machine %s is matched by UUID or labels and this boot reports no MAC to enrol it by", m.Name)
	}
	return queried, nil
}

// firstMACsFile keeps, in the state directory, the MAC each machine the
// site matches by UUID or labels first enrolled with.
const firstMACsFile = "enrolled-macs.json"

// firstMACs is that record: machine → MAC, trusted on first use.
type firstMACs struct {
	mu   sync.Mutex
	path string
	m    map[string]string
}

func loadFirstMACs(path string, log *slog.Logger) *firstMACs {
	f := &firstMACs{path: path, m: map[string]string{}}
	if err := readState(path, &f.m); err != nil {
		// Refusing every UUID-matched machine would be worse than
		// trusting their next boot: say so loudly.
		log.Error("enrolled MACs: not read; machines matched by UUID or labels enrol again with the MAC of their next boot", "file", path, "err", err)
		f.m = map[string]string{}
	}
	return f
}

func (f *firstMACs) get(machine string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	mac, ok := f.m[machine]
	return mac, ok
}

// keep records mac for m if m is matched by UUID or labels and has none.
func (f *firstMACs) keep(m *profiles.Machine, mac string) error {
	if m.MAC != "" {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.m[m.Name]; ok {
		return nil
	}
	f.m[m.Name] = strings.ToLower(mac)
	if err := writeState(f.path, f.m, 0o600); err != nil {
		delete(f.m, m.Name)
		return fmt.Errorf("enrolled MAC of %s: %w", m.Name, err)
	}
	return nil
}

// procNeighbour looks ip up in the kernel's ARP table.
func procNeighbour(ip netip.Addr) (string, bool) {
	f, err := os.Open("/proc/net/arp")
	if err != nil {
		return "", false
	}
	defer f.Close()
	return arpLookup(f, ip)
}

// arpLookup finds ip's MAC in a /proc/net/arp listing ("IP address  HW type
// Flags  HW address  Mask  Device"); incomplete entries (flags without
// ATF_COM, 0x2) do not count.
func arpLookup(r io.Reader, ip netip.Addr) (string, bool) {
	sc := bufio.NewScanner(r)
	sc.Scan() // header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			continue
		}
		a, err := netip.ParseAddr(f[0])
		if err != nil || a != ip {
			continue
		}
		var flags int
		if _, err := fmt.Sscanf(f[2], "0x%x", &flags); err != nil || flags&0x2 == 0 {
			continue
		}
		hw, err := net.ParseMAC(f[3])
		if err != nil {
			continue
		}
		return hw.String(), true
	}
	return "", false
}
