// Package profiles defines a site: cluster settings and the machines of one
// rack or lab, matched by MAC, SMBIOS UUID or labels, each with a role, an
// image and an optional static address. The boot server renders one
// profiles/node.Config per machine from it.
//
// A site is a directory of *.toml files read as one document: machines may be
// spread over files, each settings table ([site], [network], [proxy],
// [default], [dhcp]) lives in exactly one. Loading is strict and reports
// every problem of every file at once as file:line:col: field: message.
package profiles

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/plinth-dev/plinth/internal/tomlx"
)

// Site is a loaded, checked site directory.
type Site struct {
	SiteInfo
	Network Network
	Proxy   Proxy
	Default Default
	DHCP    DHCP
	// State is the [state] table: each role's default state disk.
	State    map[string]*StateDisk
	Machines []*Machine // in file name order, then in file order
	Dir      string
	digest   string

	pos      *tomlx.Report // where each key is written, for later checks
	defaults string        // the file with [default]
}

// SiteInfo is the [site] table.
type SiteInfo struct {
	Name       string `toml:"name,required"`
	Domain     string `toml:"domain"`
	APIName    string `toml:"api_name"`
	Kubernetes string `toml:"kubernetes"` // version of the Kubernetes binaries, e.g. v1.35.4
	// Enrolment is none or token; default token for a site with any
	// role (its machines get certificates), none for one without.
	Enrolment string `toml:"enrolment"`
}

// Network is the [network] table.
type Network struct {
	Flannel string   `toml:"flannel"` // pod network CIDR
	Backend string   `toml:"backend"` // vxlan | host-gw
	DNS     []string `toml:"dns"`     // resolvers of machines with a static address and none of their own
	// Services is the Kubernetes service CIDR (default 10.96.0.0/12).
	Services string `toml:"services"`
}

// Proxy is the [proxy] table: the site's HTTP proxy for image pulls.
type Proxy struct {
	HTTP    string `toml:"http"`
	HTTPS   string `toml:"https"`
	NoProxy string `toml:"no_proxy"` // comma-separated hosts, domains and CIDRs
}

// Default is the [default] table: what an unknown machine gets.
type Default struct {
	Action string `toml:"action"` // refuse | boot
	Image  string `toml:"image"`
	Role   string `toml:"role"`
}

// DHCP is the [dhcp] table: how the boot server takes part in DHCP.
type DHCP struct {
	Mode       string   `toml:"mode"`      // off | proxy | server
	Interface  string   `toml:"interface"` // where to serve it; the command line may override
	RangeStart string   `toml:"range_start"`
	RangeEnd   string   `toml:"range_end"`
	Netmask    string   `toml:"netmask"`
	Router     string   `toml:"router"`
	DNS        []string `toml:"dns"`
	Lease      string   `toml:"lease"` // a Go duration, e.g. 1h
}

// StateDisk is a machine's state disk ([[machine]] state) or a role's
// default one ([state.ROLE]).
type StateDisk struct {
	// Disk selects the disk (node.ParseDiskSelector): a /dev/disk/by-id or
	// by-path link, serial:S, wwn:W, min-size:N or none.
	Disk string `toml:"disk"`
	// Wipe lets the machine erase a disk holding anything else (only in a
	// machine's own state; never in a role default).
	Wipe bool `toml:"wipe"`
}

// Machine is one [[machine]].
type Machine struct {
	Name     string            `toml:"name,required"`
	MAC      string            `toml:"mac"`  // normalised: lower case, colons
	UUID     string            `toml:"uuid"` // normalised: lower case
	Labels   map[string]string `toml:"labels"`
	Role     string            `toml:"role"` // etcd | master | minion | "" (none)
	Image    string            `toml:"image,required"`
	Hostname string            `toml:"hostname"` // defaults to Name
	Address  string            `toml:"address"`  // static CIDR; "" means DHCP
	Gateway  string            `toml:"gateway"`
	DNS      []string          `toml:"dns"`
	State    *StateDisk        `toml:"state"` // its own state disk; nil: its role's default
	// Bonds and VLANs are rendered as systemd-networkd files on the
	// machine ([[machine.bond]], [[machine.vlan]]).
	Bonds []*Bond `toml:"bond"`
	VLANs []*VLAN `toml:"vlan"`
	File  string  `toml:"-"` // the file that defines it

	at string // its key path in File, e.g. machine[2], for positions
}

// Bond is a [[machine.bond]]: NICs aggregated under one interface.
type Bond struct {
	Name    string   `toml:"name,required"`    // e.g. bond0
	Mode    string   `toml:"mode"`             // 802.3ad (default) | active-backup
	Members []string `toml:"members,required"` // NIC names (eno1) or MACs
	// Address is a CIDR, "dhcp", or empty: none of its own (the VLANs on
	// it have theirs; a bond holding the boot NIC then keeps the boot
	// network's address, so the machine stays where the server found it).
	Address string `toml:"address"`
	Gateway string `toml:"gateway"`
}

// VLAN is a [[machine.vlan]]: a tagged interface on a bond or a NIC.
type VLAN struct {
	Name    string `toml:"name"`          // default LINK.ID
	Link    string `toml:"link,required"` // a bond of the machine, a NIC name or MAC
	ID      int    `toml:"id,required"`   // 1..4094
	Address string `toml:"address"`       // a CIDR or "dhcp"
	Gateway string `toml:"gateway"`
}

// file is one TOML file of a site directory.
type file struct {
	Site     *SiteInfo             `toml:"site"`
	Network  *Network              `toml:"network"`
	Proxy    *Proxy                `toml:"proxy"`
	Default  *Default              `toml:"default"`
	DHCP     *DHCP                 `toml:"dhcp"`
	State    map[string]*StateDisk `toml:"state"`
	Machines []*Machine            `toml:"machine"`
}

// ErrUnknownMachine is returned by Match for a machine the site refuses.
var ErrUnknownMachine = errors.New("unknown machine")

// LoadSite reads every *.toml file of dir as one site. The error, when the
// files have problems, is a *tomlx.Report listing all of them.
func LoadSite(dir string) (*Site, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.toml"))
	if err != nil {
		return nil, fmt.Errorf("site %s: %w", dir, err)
	}
	if len(paths) == 0 {
		if _, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("site: %w", err)
		}
		return nil, fmt.Errorf("site %s: no *.toml files: a site is a directory of TOML files", dir)
	}
	slices.Sort(paths)
	s := &Site{Dir: dir}
	rep := &tomlx.Report{}
	h := sha256.New()
	owner := map[string]string{} // table → the file that sets it
	one := func(table, path string, set func()) {
		if prev, ok := owner[table]; ok {
			rep.Addf(path, table, "[%s] is also in %s: a site has only one", table, where(rep, prev, table))
			return
		}
		owner[table] = path
		set()
	}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("site: %w", err)
		}
		// The name is hashed too: renaming or adding a file changes the site.
		fmt.Fprintf(h, "%s %d\n", filepath.Base(p), len(data))
		h.Write(data)
		var f file
		rep.Merge(tomlx.Decode(p, data, &f))
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
		if f.State != nil {
			one("state", p, func() { s.State = f.State })
		}
		for i, m := range f.Machines {
			if m == nil { // a [[machine]] of the wrong type, already reported
				continue
			}
			m.File, m.at = p, fmt.Sprintf("machine[%d]", i)
			s.Machines = append(s.Machines, m)
		}
	}
	s.applyDefaults()
	s.check(rep, owner)
	if err := rep.Err(); err != nil {
		return nil, err
	}
	s.pos, s.defaults = rep, owner["default"] // no problems: only positions
	s.digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return s, nil
}

// applyDefaults fills what a site may leave out. It is the one place
// defaults live.
func (s *Site) applyDefaults() {
	if s.Enrolment == "" {
		s.Enrolment = "none"
		if s.hasRoles() {
			// Machines with a role get certificates: only a machine that
			// booted from its own address may ask for them.
			s.Enrolment = "token"
		}
	}
	if s.Network.Backend == "" {
		s.Network.Backend = "vxlan"
	}
	if s.Network.Services == "" {
		s.Network.Services = "10.96.0.0/12"
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

// where formats the position of field in file as file:line:col.
func where(rep *tomlx.Report, file, field string) string {
	p := rep.Position(file, field)
	if p.Line == 0 {
		return file
	}
	return fmt.Sprintf("%s:%d:%d", file, p.Line, p.Col)
}

// Digest identifies the site's files as loaded; it changes when any file
// does, or is added, removed or renamed.
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

// StateOf is the state disk machine m has: its own, else its role's
// default; nil when it has none (its state lives in RAM).
func (s *Site) StateOf(m *Machine) *StateDisk {
	d := m.State
	if d == nil {
		d = s.State[m.Role]
	}
	if d == nil || d.Disk == "" || d.Disk == "none" {
		return nil
	}
	return d
}

// hasRoles says whether any machine of the site, or one its [default]
// boots, has a role.
func (s *Site) hasRoles() bool {
	if s.Default.Action == "boot" && s.Default.Role != "" {
		return true
	}
	for _, m := range s.Machines {
		if m.Role != "" {
			return true
		}
	}
	return false
}
