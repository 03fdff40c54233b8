// Package profiles defines a site: cluster settings and the machines of one
// rack or lab, matched by MAC, SMBIOS UUID or labels, each with a role, an
// image and an optional static address. The boot server renders one
// profiles/node.Config per machine from it.
package profiles

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/internal/tomlx"
)

// Site is a loaded, checked site directory.
type Site struct {
	SiteInfo
	Network  Network
	Proxy    Proxy
	Default  Default
	DHCP     DHCP
	Machines []*Machine
	Dir      string
	digest   string
}

// SiteInfo is the [site] table.
type SiteInfo struct {
	Name       string `toml:"name,required"`
	Domain     string `toml:"domain"`
	APIName    string `toml:"api_name"`
	Kubernetes string `toml:"kubernetes"`
	Enrolment  string `toml:"enrolment"` // none | token
}

// Network is the [network] table.
type Network struct {
	Flannel string   `toml:"flannel"`
	Backend string   `toml:"backend"`
	DNS     []string `toml:"dns"`
}

// Proxy is the [proxy] table: the site's HTTP proxy for image pulls.
type Proxy struct {
	HTTP    string `toml:"http"`
	HTTPS   string `toml:"https"`
	NoProxy string `toml:"no_proxy"`
}

// Default is the [default] table: what an unknown machine gets.
type Default struct {
	Action string `toml:"action"` // refuse | boot
	Image  string `toml:"image"`
	Role   string `toml:"role"`
}

// DHCP is the [dhcp] table: how the boot server takes part in DHCP.
type DHCP struct {
	Mode       string   `toml:"mode"` // off | proxy | server
	Interface  string   `toml:"interface"`
	RangeStart string   `toml:"range_start"`
	RangeEnd   string   `toml:"range_end"`
	Netmask    string   `toml:"netmask"`
	Router     string   `toml:"router"`
	DNS        []string `toml:"dns"`
	Lease      string   `toml:"lease"`
}

// Machine is one [[machine]].
type Machine struct {
	Name     string            `toml:"name,required"`
	MAC      string            `toml:"mac"`
	UUID     string            `toml:"uuid"`
	Labels   map[string]string `toml:"labels"`
	Role     string            `toml:"role"`
	Image    string            `toml:"image,required"`
	Hostname string            `toml:"hostname"`
	Address  string            `toml:"address"`
	Gateway  string            `toml:"gateway"`
	DNS      []string          `toml:"dns"`
	File     string            `toml:"-"` // where it was defined
}

// file is one TOML file of a site directory.
type file struct {
	Site     *SiteInfo  `toml:"site"`
	Network  *Network   `toml:"network"`
	Proxy    *Proxy     `toml:"proxy"`
	Default  *Default   `toml:"default"`
	DHCP     *DHCP      `toml:"dhcp"`
	Machines []*Machine `toml:"machine"`
}

// ErrUnknownMachine is returned by Match for a machine the site refuses.
var ErrUnknownMachine = errors.New("unknown machine")

var hostRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// LoadSite reads every *.toml file of dir as one site and reports every
// problem of every file at once.
func LoadSite(dir string) (*Site, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.toml"))
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("%s: no *.toml files: a site is a directory of TOML files", dir)
	}
	sort.Strings(paths)
	s := &Site{Dir: dir}
	rep := &tomlx.Report{}
	h := sha256.New()
	owner := map[string]string{} // table → file that set it
	one := func(table, path string, set func()) {
		if prev, ok := owner[table]; ok {
			rep.Addf(path, table, "[%s] is already set in %s: a site has one", table, prev)
			return
		}
		owner[table] = path
		set()
	}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(h, "%s %d\n", filepath.Base(p), len(data))
		h.Write(data)
		var f file
		r := tomlx.Decode(p, data, &f)
		rep.Merge(r)
		if f.Site != nil {
			one("site", p, func() { s.SiteInfo = *f.Site })
		}
		if f.Network != nil {
			one("network", p, func() { s.Network = *f.Network })
		}
		if f.Proxy != nil {
			one("proxy", p, func() { s.Proxy = *f.Proxy })
		}
		if f.Default != nil {
			one("default", p, func() { s.Default = *f.Default })
		}
		if f.DHCP != nil {
			one("dhcp", p, func() { s.DHCP = *f.DHCP })
		}
		for i, m := range f.Machines {
			if m == nil {
				continue
			}
			m.File = p
			s.Machines = append(s.Machines, m)
			checkMachine(rep, p, fmt.Sprintf("machine[%d]", i), m)
		}
	}
	s.applyDefaults()
	s.check(rep, owner)
	if err := rep.Err(); err != nil {
		return nil, err
	}
	s.digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return s, nil
}

func (s *Site) applyDefaults() {
	if s.Enrolment == "" {
		s.Enrolment = "none"
	}
	if s.Network.Backend == "" {
		s.Network.Backend = "vxlan"
	}
	if s.Default.Action == "" {
		s.Default.Action = "refuse"
	}
	if s.DHCP.Mode == "" {
		s.DHCP.Mode = "off"
	}
	if s.DHCP.Lease == "" {
		s.DHCP.Lease = "1h"
	}
	for _, m := range s.Machines {
		if m.Hostname == "" {
			m.Hostname = m.Name
		}
	}
}

func (s *Site) check(rep *tomlx.Report, owner map[string]string) {
	siteFile := owner["site"]
	if siteFile == "" {
		rep.Addf(s.Dir, "site", "missing: no file of the site has a [site] table")
	}
	at := func(table string) string {
		if f := owner[table]; f != "" {
			return f
		}
		return siteFile
	}
	if s.Enrolment != "none" && s.Enrolment != "token" {
		rep.Addf(at("site"), "site.enrolment", "%q: want none or token", s.Enrolment)
	}
	if s.Domain != "" && !validDomain(s.Domain) {
		rep.Addf(at("site"), "site.domain", "%q is not a DNS name", s.Domain)
	}
	if s.APIName != "" && !validDomain(s.APIName) {
		rep.Addf(at("site"), "site.api_name", "%q is not a DNS name", s.APIName)
	}
	if s.Network.Flannel != "" {
		if _, err := netip.ParsePrefix(s.Network.Flannel); err != nil {
			rep.Addf(at("network"), "network.flannel", "%q is not a CIDR prefix", s.Network.Flannel)
		}
	}
	if s.Network.Backend != "vxlan" && s.Network.Backend != "host-gw" {
		rep.Addf(at("network"), "network.backend", "%q: want vxlan or host-gw", s.Network.Backend)
	}
	for i, d := range s.Network.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			rep.Addf(at("network"), fmt.Sprintf("network.dns[%d]", i), "%q is not an IP address", d)
		}
	}
	for _, p := range []struct{ field, v string }{{"proxy.http", s.Proxy.HTTP}, {"proxy.https", s.Proxy.HTTPS}} {
		if p.v == "" {
			continue
		}
		if u, err := url.Parse(p.v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			rep.Addf(at("proxy"), p.field, "%q: want an http:// or https:// URL", p.v)
		}
	}
	switch s.Default.Action {
	case "refuse":
	case "boot":
		if s.Default.Image == "" {
			rep.Addf(at("default"), "default.image", "missing: action = \"boot\" needs an image")
		}
		if s.Default.Role != "" && !validRole(s.Default.Role) {
			rep.Addf(at("default"), "default.role", "%q: want etcd, master or minion", s.Default.Role)
		}
	default:
		rep.Addf(at("default"), "default.action", "%q: want refuse or boot", s.Default.Action)
	}
	switch s.DHCP.Mode {
	case "off", "proxy":
	case "server":
		for _, a := range []struct{ field, v string }{{"dhcp.range_start", s.DHCP.RangeStart}, {"dhcp.range_end", s.DHCP.RangeEnd}, {"dhcp.netmask", s.DHCP.Netmask}} {
			if _, err := netip.ParseAddr(a.v); err != nil {
				rep.Addf(at("dhcp"), a.field, "%q: mode = \"server\" needs an IPv4 address here", a.v)
			}
		}
		if s.DHCP.Router != "" {
			if _, err := netip.ParseAddr(s.DHCP.Router); err != nil {
				rep.Addf(at("dhcp"), "dhcp.router", "%q is not an IP address", s.DHCP.Router)
			}
		}
	default:
		rep.Addf(at("dhcp"), "dhcp.mode", "%q: want off, proxy or server", s.DHCP.Mode)
	}
	if _, err := time.ParseDuration(s.DHCP.Lease); err != nil {
		rep.Addf(at("dhcp"), "dhcp.lease", "%q is not a duration (e.g. 1h)", s.DHCP.Lease)
	}
	seen := map[string]*Machine{}
	dup := func(kind, key string, m *Machine) {
		if key == "" {
			return
		}
		if prev, ok := seen[kind+" "+key]; ok {
			rep.Addf(m.File, "machine", "%s %s of %q is also machine %q's (%s)", kind, key, m.Name, prev.Name, prev.File)
			return
		}
		seen[kind+" "+key] = m
	}
	for _, m := range s.Machines {
		dup("name", m.Name, m)
		dup("MAC", m.MAC, m)
		dup("UUID", m.UUID, m)
	}
}

func checkMachine(rep *tomlx.Report, file, at string, m *Machine) {
	f := func(k string) string { return at + "." + k }
	if m.Name != "" && !hostRE.MatchString(m.Name) {
		rep.Addf(file, f("name"), "%q: want a host name (lower-case letters, digits, '-')", m.Name)
	}
	if m.Hostname != "" && !hostRE.MatchString(m.Hostname) {
		rep.Addf(file, f("hostname"), "%q: want a host name (lower-case letters, digits, '-')", m.Hostname)
	}
	if m.MAC != "" {
		hw, err := net.ParseMAC(m.MAC)
		if err != nil || len(hw) != 6 {
			rep.Addf(file, f("mac"), "%q is not a MAC address", m.MAC)
		} else {
			m.MAC = hw.String()
		}
	}
	if m.UUID != "" {
		u, ok := normUUID(m.UUID)
		if !ok {
			rep.Addf(file, f("uuid"), "%q is not a UUID", m.UUID)
		}
		m.UUID = u
	}
	if m.MAC == "" && m.UUID == "" && len(m.Labels) == 0 && !rep.Has(file, f("mac")) {
		rep.Addf(file, at, "a machine needs a mac, a uuid or labels to be recognised")
	}
	if m.Role != "" && !validRole(m.Role) {
		rep.Addf(file, f("role"), "%q: want etcd, master or minion", m.Role)
	}
	if m.Address != "" {
		if _, err := netip.ParsePrefix(m.Address); err != nil {
			rep.Addf(file, f("address"), "%q: want an address with its prefix length, e.g. 10.0.0.5/24", m.Address)
		}
	}
	if m.Gateway != "" {
		if _, err := netip.ParseAddr(m.Gateway); err != nil {
			rep.Addf(file, f("gateway"), "%q is not an IP address", m.Gateway)
		}
	}
	for i, d := range m.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			rep.Addf(file, fmt.Sprintf("%s.dns[%d]", at, i), "%q is not an IP address", d)
		}
	}
}

func validRole(r string) bool { return slices.Contains([]string{"etcd", "master", "minion"}, r) }

func validDomain(d string) bool {
	if len(d) > 253 {
		return false
	}
	for _, l := range strings.Split(d, ".") {
		if !hostRE.MatchString(l) {
			return false
		}
	}
	return true
}

// normUUID lower-cases a UUID and checks its 8-4-4-4-12 form.
func normUUID(u string) (string, bool) {
	u = strings.ToLower(u)
	if len(u) != 36 {
		return u, false
	}
	for i, c := range u {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return u, false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return u, false
			}
		}
	}
	return u, true
}

// Digest identifies the site's files as loaded; it changes when any does.
func (s *Site) Digest() string { return s.digest }

// Machine returns the machine called name, or nil.
func (s *Site) Machine(name string) *Machine {
	for _, m := range s.Machines {
		if m.Name == name {
			return m
		}
	}
	return nil
}
