package profiles

import (
	"cmp"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/internal/tomlx"
	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

var (
	hostRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// Kubernetes release versions, as their download paths spell them.
	kubeRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$`)
)

// check records every semantic problem of a decoded, defaulted site and
// normalises its MACs and UUIDs. owner maps each settings table to the file
// that set it.
func (s *Site) check(rep *tomlx.Report, owner map[string]string) {
	// A file that does not parse may be the one holding [site].
	if owner["site"] == "" && !rep.Syntax() {
		rep.Addf(s.Dir, "site", "missing: no file of the site has a [site] table")
	}
	// A table's problems are reported in the file that set it; those of a
	// table no file has (defaults failing a cross-check) at the [site] one.
	at := func(table string) string { return cmp.Or(owner[table], owner["site"], s.Dir) }
	s.checkSite(rep, at("site"))
	s.checkNetwork(rep, at("network"), at("proxy"))
	s.checkDefault(rep, at("default"))
	s.checkDHCP(rep, at("dhcp"))
	for _, m := range s.Machines {
		checkMachine(rep, m)
	}
	s.checkState(rep, at("state"))
	s.checkUnique(rep)
}

func (s *Site) checkSite(rep *tomlx.Report, f string) {
	if s.Name == "" && f != s.Dir && owner(rep, f, "site.name") {
		rep.Addf(f, "site.name", "must not be empty")
	}
	if s.Name != "" && !hostRE.MatchString(s.Name) {
		rep.Addf(f, "site.name", "%q: want lower-case letters, digits and '-', at most 63", s.Name)
	}
	if s.Enrolment != "none" && s.Enrolment != "token" {
		rep.Addf(f, "site.enrolment", "%q: want none or token", s.Enrolment)
	}
	if s.Domain != "" && !validDomain(s.Domain) {
		rep.Addf(f, "site.domain", "%q is not a DNS name", s.Domain)
	}
	if s.APIName != "" && !validDomain(s.APIName) {
		rep.Addf(f, "site.api_name", "%q is not a DNS name", s.APIName)
	}
	if s.Kubernetes != "" && !kubeRE.MatchString(s.Kubernetes) {
		rep.Addf(f, "site.kubernetes", "%q: want a release version such as v1.35.4", s.Kubernetes)
	}
}

func (s *Site) checkNetwork(rep *tomlx.Report, f, fp string) {
	n := s.Network
	if n.Flannel != "" {
		if p, err := netip.ParsePrefix(n.Flannel); err != nil || p.Masked() != p {
			rep.Addf(f, "network.flannel", "%q: want a network prefix such as 10.244.0.0/16", n.Flannel)
		}
	}
	if p, err := netip.ParsePrefix(n.Services); err != nil || p.Masked() != p || !p.Addr().Is4() {
		rep.Addf(f, "network.services", "%q: want an IPv4 network prefix such as 10.96.0.0/12", n.Services)
	} else if fl, err := netip.ParsePrefix(n.Flannel); err == nil && fl.Masked() == fl && fl.Overlaps(p) {
		rep.Addf(f, "network.services", "%s overlaps the flannel network %s", n.Services, n.Flannel)
	} else if p.Bits() > 28 {
		rep.Addf(f, "network.services", "%s is too small: the API takes its first address and cluster DNS its tenth (want /28 or larger)", n.Services)
	}
	if n.Backend != "vxlan" && n.Backend != "host-gw" {
		rep.Addf(f, "network.backend", "%q: want vxlan or host-gw", n.Backend)
	}
	checkAddrs(rep, f, "network.dns", n.DNS)
	for _, p := range []struct{ field, v string }{{"proxy.http", s.Proxy.HTTP}, {"proxy.https", s.Proxy.HTTPS}} {
		if p.v == "" {
			continue
		}
		if u, err := url.Parse(p.v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			rep.Addf(fp, p.field, "%q: want an http:// or https:// URL", p.v)
		}
	}
	if np := s.Proxy.NoProxy; np != "" {
		for _, e := range strings.Split(np, ",") {
			if e = strings.TrimSpace(e); e == "" || strings.ContainsAny(e, " \t/") && !isPrefix(e) {
				rep.Addf(fp, "proxy.no_proxy", "%q: want host names, .domains, addresses and CIDRs separated by commas", np)
				break
			}
		}
	}
}

func isPrefix(s string) bool { _, err := netip.ParsePrefix(s); return err == nil }

func (s *Site) checkDefault(rep *tomlx.Report, f string) {
	d := s.Default
	switch d.Action {
	case "refuse":
		if d.Image != "" || d.Role != "" {
			rep.Addf(f, "default.action", "\"refuse\" boots nothing: set action = \"boot\" or drop image and role")
		}
	case "boot":
		if d.Image == "" {
			rep.Addf(f, "default.image", "missing: action = \"boot\" needs an image")
		}
		if d.Role == "" {
			rep.Addf(f, "default.role", "missing: action = \"boot\" needs a role (%s)", strings.Join(roles.Names(), ", "))
		}
	default:
		rep.Addf(f, "default.action", "%q: want refuse or boot", d.Action)
	}
	if _, err := roles.Lookup(d.Role); err != nil {
		rep.Addf(f, "default.role", "%v", err)
	}
}

func (s *Site) checkDHCP(rep *tomlx.Report, f string) {
	d := s.DHCP
	checkAddrs(rep, f, "dhcp.dns", d.DNS)
	if l, err := time.ParseDuration(d.Lease); err != nil || l < time.Minute {
		rep.Addf(f, "dhcp.lease", "%q: want a duration of a minute or more, e.g. 1h", d.Lease)
	}
	switch d.Mode {
	case "off", "proxy":
		return
	case "server":
	default:
		rep.Addf(f, "dhcp.mode", "%q: want off, proxy or server", d.Mode)
		return
	}
	v4 := func(field, v string) (netip.Addr, bool) {
		a, err := netip.ParseAddr(v)
		if v == "" {
			rep.Addf(f, field, "missing: mode = \"server\" needs it")
		} else if err != nil || !a.Is4() {
			rep.Addf(f, field, "%q is not an IPv4 address", v)
		}
		return a, err == nil && a.Is4()
	}
	start, okS := v4("dhcp.range_start", d.RangeStart)
	end, okE := v4("dhcp.range_end", d.RangeEnd)
	mask, okM := v4("dhcp.netmask", d.Netmask)
	if okS && okE && end.Less(start) {
		rep.Addf(f, "dhcp.range_end", "%s is before range_start %s", end, start)
	}
	bits := -1
	if okM {
		m := mask.As4()
		if ones, n := net.IPMask(m[:]).Size(); n == 0 {
			rep.Addf(f, "dhcp.netmask", "%s is not a netmask (contiguous ones, e.g. 255.255.255.0)", mask)
		} else {
			bits = ones
		}
	}
	if d.Router == "" {
		return
	}
	router, okR := v4("dhcp.router", d.Router)
	if !okR || bits < 0 {
		return
	}
	subnet := netip.PrefixFrom(router, bits).Masked()
	for _, a := range []struct {
		field string
		addr  netip.Addr
		ok    bool
	}{{"dhcp.range_start", start, okS}, {"dhcp.range_end", end, okE}} {
		if a.ok && !subnet.Contains(a.addr) {
			rep.Addf(f, a.field, "%s is outside the router's network %s", a.addr, subnet)
		}
	}
}

func checkMachine(rep *tomlx.Report, m *Machine) {
	file, at := m.File, m.at
	f := func(k string) string { return at + "." + k }
	for _, e := range []struct{ k, v string }{{"name", m.Name}, {"image", m.Image}} {
		if e.v == "" && owner(rep, file, f(e.k)) {
			rep.Addf(file, f(e.k), "must not be empty")
		}
	}
	if m.Name != "" && !hostRE.MatchString(m.Name) {
		rep.Addf(file, f("name"), "%q: want a host name (lower-case letters, digits, '-', at most 63)", m.Name)
	}
	if m.Hostname != "" && !hostRE.MatchString(m.Hostname) {
		rep.Addf(file, f("hostname"), "%q: want a host name (lower-case letters, digits, '-', at most 63)", m.Hostname)
	}
	// A machine's certificate is named after its host name, and etcd takes
	// a certificate named root as its root user.
	if host := cmp.Or(m.Hostname, m.Name); host == roles.EtcdRootUser {
		field := "hostname"
		if m.Hostname == "" || m.Hostname == m.Name {
			field = "name"
		}
		rep.Addf(file, f(field), "%q is etcd's root user (a machine's certificate carries its host name): choose another, or set hostname", host)
	}
	if m.MAC != "" {
		if mac, ok := normMAC(m.MAC); ok {
			m.MAC = mac
		} else {
			rep.Addf(file, f("mac"), "%q is not a MAC address (six bytes, e.g. 52:54:00:12:34:56)", m.MAC)
		}
	}
	if m.UUID != "" {
		if u, ok := normUUID(m.UUID); ok {
			m.UUID = u
		} else {
			rep.Addf(file, f("uuid"), "%q is not a UUID (8-4-4-4-12 hex digits)", m.UUID)
		}
	}
	if m.MAC == "" && m.UUID == "" && len(m.Labels) == 0 && owner(rep, file, f("labels")) {
		rep.Addf(file, at, "a machine needs a mac, a uuid or labels to be recognised")
	}
	for _, k := range slices.Sorted(maps.Keys(m.Labels)) {
		if (k == "" || m.Labels[k] == "") && owner(rep, file, f("labels")+"."+tomlKey(k)) {
			rep.Addf(file, f("labels"), "label %q = %q: neither key nor value may be empty", k, m.Labels[k])
		}
	}
	if _, err := roles.Lookup(m.Role); err != nil {
		rep.Addf(file, f("role"), "%v", err)
	}
	var prefix netip.Prefix
	if m.Address != "" {
		p, err := netip.ParsePrefix(m.Address)
		if err != nil || p.Addr() == p.Masked().Addr() && p.Bits() < p.Addr().BitLen()-1 {
			rep.Addf(file, f("address"), "%q: want a host address with its prefix length, e.g. 10.0.0.5/24", m.Address)
		} else {
			prefix = p
		}
	}
	if m.Gateway != "" {
		g, err := netip.ParseAddr(m.Gateway)
		switch {
		case err != nil:
			rep.Addf(file, f("gateway"), "%q is not an IP address", m.Gateway)
		case m.Address == "":
			rep.Addf(file, f("gateway"), "a gateway needs a static address: without one the machine uses DHCP's")
		case prefix.IsValid() && !prefix.Masked().Contains(g):
			rep.Addf(file, f("gateway"), "%s is outside the machine's network %s", g, prefix.Masked())
		}
	}
	checkAddrs(rep, file, f("dns"), m.DNS)
	checkLinks(rep, m)
}

// checkLinks checks a machine's bonds and VLANs: interface names, modes,
// members, links to bonds of the machine, IDs, addresses and gateways.
func checkLinks(rep *tomlx.Report, m *Machine) {
	file := m.File
	names := map[string]string{} // interface name → where it is defined
	name := func(field, n string) {
		if !node.ValidIfname(n) {
			rep.Addf(file, field, "%q is not an interface name (1 to 15 characters, no '/', ':' or spaces)", n)
			return
		}
		if prev, ok := names[n]; ok {
			rep.Addf(file, field, "%s is also defined at %s", n, prev)
			return
		}
		names[n] = where(rep, file, field)
	}
	addr := func(field, a, gw, gwField string) {
		var p netip.Prefix
		if a != "" && a != node.AddressDHCP {
			var err error
			if p, err = netip.ParsePrefix(a); err != nil {
				rep.Addf(file, field, "%q: want a host address with its prefix length (10.7.0.21/24) or %q", a, node.AddressDHCP)
			}
		}
		if gw == "" {
			return
		}
		g, err := netip.ParseAddr(gw)
		switch {
		case err != nil:
			rep.Addf(file, gwField, "%q is not an IP address", gw)
		case !p.IsValid():
			rep.Addf(file, gwField, "a gateway needs a static address beside it")
		case !p.Masked().Contains(g):
			rep.Addf(file, gwField, "%s is outside %s", g, p.Masked())
		}
	}
	bonds := map[string]bool{}
	for i, b := range m.Bonds {
		at := fmt.Sprintf("%s.bond[%d]", m.at, i)
		name(at+".name", b.Name)
		bonds[b.Name] = true
		switch b.Mode {
		case "":
			b.Mode = node.Bond8023ad
		case node.Bond8023ad, node.BondActiveBackup:
		default:
			rep.Addf(file, at+".mode", "%q: want %s or %s", b.Mode, node.Bond8023ad, node.BondActiveBackup)
		}
		if len(b.Members) == 0 && owner(rep, file, at+".members") {
			rep.Addf(file, at+".members", "a bond needs at least one NIC")
		}
		for j, mem := range b.Members {
			if mac, ok := normMAC(mem); ok {
				b.Members[j] = mac
			} else if !node.ValidIfname(mem) {
				rep.Addf(file, fmt.Sprintf("%s.members[%d]", at, j), "%q is neither a MAC nor an interface name", mem)
			}
		}
		addr(at+".address", b.Address, b.Gateway, at+".gateway")
	}
	for i, v := range m.VLANs {
		at := fmt.Sprintf("%s.vlan[%d]", m.at, i)
		if v.ID < 1 || v.ID > 4094 {
			rep.Addf(file, at+".id", "%d: want 1 to 4094", v.ID)
		}
		if mac, ok := normMAC(v.Link); ok {
			v.Link = mac
		} else if !node.ValidIfname(v.Link) {
			rep.Addf(file, at+".link", "%q is neither a bond of this machine, a NIC name nor a MAC", v.Link)
		}
		if node.ValidIfname(v.Link) && !bonds[v.Link] && strings.HasPrefix(v.Link, "bond") {
			rep.Addf(file, at+".link", "%q: no bond of that name on this machine", v.Link)
		}
		if v.Name == "" {
			link := v.Link
			if _, ok := normMAC(link); ok {
				link = "vlan"
			}
			v.Name = fmt.Sprintf("%s.%d", link, v.ID)
			if len(v.Name) > 15 {
				v.Name = fmt.Sprintf("vlan%d", v.ID)
			}
		}
		name(at+".name", v.Name)
		addr(at+".address", v.Address, v.Gateway, at+".gateway")
	}
}

// checkUnique reports a name, host name, MAC, UUID, address or label set
// that two machines share, at the second one, naming where the first is.
func (s *Site) checkUnique(rep *tomlx.Report) {
	type first struct {
		m     *Machine
		field string
	}
	seen := map[string]first{}
	dup := func(m *Machine, field, key, what string) {
		if key == "" {
			return
		}
		id := field + " " + key
		prev, ok := seen[id]
		if !ok {
			seen[id] = first{m, field}
			return
		}
		// A host name left to default is written as the machine's name.
		at := func(m *Machine, field string) string {
			if field == "hostname" && m.Hostname == m.Name {
				return m.at + ".name"
			}
			return m.at + "." + field
		}
		if field == "hostname" && m.Hostname == m.Name && prev.m.Hostname == prev.m.Name {
			return // the same name, reported as such
		}
		first := where(rep, prev.m.File, at(prev.m, field))
		if field == "name" {
			rep.Addf(m.File, at(m, field), "another machine is named %s (%s)", key, first)
			return
		}
		rep.Addf(m.File, at(m, field), "%s is also that of machine %q (%s)", what, prev.m.Name, first)
	}
	for _, m := range s.Machines {
		dup(m, "name", m.Name, "")
		dup(m, "hostname", m.Hostname, "host name "+m.Hostname)
		dup(m, "mac", m.MAC, "MAC "+m.MAC)
		dup(m, "uuid", m.UUID, "UUID "+m.UUID)
		if p, err := netip.ParsePrefix(m.Address); err == nil {
			dup(m, "address", p.Addr().String(), "address "+p.Addr().String())
		}
		// Two machines matched by the same labels could never be told apart.
		if len(m.Labels) > 0 {
			l := labelsString(m.Labels)
			dup(m, "labels", l, "label set "+l)
		}
	}
}

func checkAddrs(rep *tomlx.Report, file, field string, addrs []string) {
	for i, d := range addrs {
		if _, err := netip.ParseAddr(d); err != nil && owner(rep, file, fmt.Sprintf("%s[%d]", field, i)) {
			rep.Addf(file, fmt.Sprintf("%s[%d]", field, i), "%q is not an IP address", d)
		}
	}
}

// owner reports whether a check may complain about field: not when decoding
// already did (its value, of the wrong type, then reads as empty).
func owner(rep *tomlx.Report, file, field string) bool { return !rep.Has(file, field) }

// tomlKey writes a key as the key paths of reports do.
func tomlKey(k string) string {
	if k != "" && strings.Trim(k, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == "" {
		return k
	}
	return strconv.Quote(k)
}

// labelsString writes labels as a TOML inline table, keys sorted.
func labelsString(l map[string]string) string {
	parts := make([]string, 0, len(l))
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, fmt.Sprintf("%s = %q", tomlKey(k), l[k]))
	}
	return "{ " + strings.Join(parts, ", ") + " }"
}

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

// normMAC returns an Ethernet MAC in lower case with colons; it accepts '-'
// and '.' separated forms too.
func normMAC(s string) (string, bool) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", false
	}
	return hw.String(), true
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

// checkState checks the role defaults of [state] and each machine's state.
func (s *Site) checkState(rep *tomlx.Report, f string) {
	for _, name := range slices.Sorted(maps.Keys(s.State)) {
		d, key := s.State[name], "state."+tomlKey(name)
		r, err := roles.Lookup(name)
		switch {
		case d == nil:
			continue
		case name == "" || err != nil:
			rep.Addf(f, key, "%v", err)
			continue
		case len(r.State) == 0:
			rep.Addf(f, key, "role %s keeps no state on disk (its state is in etcd): drop this table", name)
		}
		if d.Wipe {
			rep.Addf(f, key+".wipe", "a role default may not wipe disks: say wipe = true in the state of each machine whose disk may be erased")
		}
		if d.Disk == "" {
			rep.Addf(f, key+".disk", "missing: a state disk selector (/dev/disk/by-id/..., serial:S, wwn:W, min-size:8GiB or none)")
		} else if _, err := node.ParseDiskSelector(d.Disk); err != nil {
			rep.Addf(f, key+".disk", "%v", err)
		}
	}
	for _, m := range s.Machines {
		d := m.State
		if d == nil {
			continue
		}
		key := m.at + ".state"
		if d.Disk == "" {
			rep.Addf(m.File, key+".disk", "missing: a state disk selector (/dev/disk/by-id/..., serial:S, wwn:W, min-size:8GiB or none)")
		} else if sel, err := node.ParseDiskSelector(d.Disk); err != nil {
			rep.Addf(m.File, key+".disk", "%v", err)
		} else if sel.Kind == node.DiskNone && d.Wipe {
			rep.Addf(m.File, key+".wipe", "no state disk to wipe (disk = \"none\")")
		}
		if r := roles.Get(m.Role); len(r.State) == 0 && d.Disk != "none" {
			rep.Addf(m.File, key, "role %q keeps no state on disk: a state disk would hold nothing", m.Role)
		}
	}
}

// Volatile lists the machines whose role keeps state but that have no
// state disk: what they keep is lost at every reboot (for an etcd member,
// its data). plinth validate says so.
func (s *Site) Volatile() []string {
	var out []string
	for _, m := range s.Machines {
		if r := roles.Get(m.Role); len(r.State) > 0 && s.StateOf(m) == nil {
			out = append(out, fmt.Sprintf("%s: machine %s (%s): no state disk: what it keeps (%s) is in RAM, lost at every reboot",
				where(s.pos, m.File, m.at), m.Name, m.Role, strings.Join(r.State, ", ")))
		}
	}
	return out
}
