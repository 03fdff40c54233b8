package bootserver

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
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

// tokens are the outstanding enrolment tokens.
type tokens struct {
	mu sync.Mutex
	m  map[string]tokenInfo
}

type tokenInfo struct {
	machine string
	ip      string
	expires time.Time
}

const tokenTTL = 15 * time.Minute

func newTokens() *tokens { return &tokens{m: map[string]tokenInfo{}} }

// newToken is 128 random bits, hex.
func newToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("mint token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func (t *tokens) mint(machine, ip string) (string, error) {
	tok, err := newToken()
	if err != nil {
		return "", err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	for k, v := range t.m {
		if now.After(v.expires) {
			delete(t.m, k)
		}
	}
	t.m[tok] = tokenInfo{machine: machine, ip: ip, expires: now.Add(tokenTTL)}
	return tok, nil
}

// use consumes a token if it was minted for machine and ip and is fresh.
func (t *tokens) use(tok, machine, ip string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	v, ok := t.m[tok]
	if !ok || v.machine != machine || v.ip != ip || time.Now().After(v.expires) {
		return false
	}
	delete(t.m, tok)
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
func (s *Server) verifyAddress(m *profiles.Machine, ip string) (how string, ok bool) {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return "", false
	}
	addr = addr.Unmap()
	if m.Address != "" {
		p, err := netip.ParsePrefix(m.Address)
		return "static address", err == nil && p.Addr() == addr
	}
	if a, ok := s.leases.lookup(m.MAC); ok && a == addr {
		return "dhcp lease", true
	}
	if mac, ok := s.neighbour(addr); ok && m.MAC != "" && strings.EqualFold(mac, m.MAC) {
		return "neighbour table", true
	}
	return "", false
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
