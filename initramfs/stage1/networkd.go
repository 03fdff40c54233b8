package stage1

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/plinth-dev/plinth/profiles/node"
)

// networkDir is where stage 1 writes systemd-networkd's files; every name
// starts 10-plinth so it wins over an image's catch-all, and a bond's
// member files ("10-plinth-B-…") sort before the boot NIC's own
// ("10-plinth.network"): networkd takes the first file that matches.
const networkDir = "/etc/systemd/network/"

type opts = []*unit.UnitOption

func opt(section, name, value string) *unit.UnitOption {
	return unit.NewUnitOption(section, name, value)
}

// ini serializes options (go-systemd's unit format, which networkd's
// files share) under a comment line.
func ini(comment string, o opts) string {
	b, _ := io.ReadAll(unit.Serialize(o))
	return "# " + comment + "\n" + string(b)
}

// NetworkdFiles renders the machine's network for systemd-networkd, by
// file path: the boot NIC (matched by MAC) with the profile's static
// address or DHCP as stage 1 did; each bond (a .netdev, a .network per
// member, the bond's own .network) and VLAN (a .netdev and its .network,
// its link's .network naming it). A bond that holds the boot NIC takes the
// NIC's MAC and, without an address of its own, the boot network's
// configuration, so DHCP (client id = MAC) gives it the same address and
// the machine stays where the boot server found it. Nil when the boot NIC
// is unknown (embedded mode, no network phase).
func NetworkdFiles(cfg *node.Config, n *NetInfo) map[string]string {
	if n == nil || n.MAC == "" {
		return nil
	}
	if _, err := net.ParseMAC(n.MAC); err != nil {
		return nil
	}
	nw := &node.Network{}
	if cfg.Network != nil {
		nw = cfg.Network
	}
	const by = "Written by plinth stage 1"
	files := map[string]string{}
	isBoot := func(nic string) bool { return strings.EqualFold(nic, n.MAC) || nic == n.Iface }
	vlansOn := func(link func(string) bool) opts {
		var o opts
		for _, v := range nw.VLANs {
			if link(v.Link) {
				o = append(o, opt("Network", "VLAN", v.Name))
			}
		}
		return o
	}
	match := func(nic string) *unit.UnitOption {
		if _, err := net.ParseMAC(nic); err == nil {
			// The permanent one: a bond gives its members its own MAC.
			return opt("Match", "PermanentMACAddress", nic)
		}
		return opt("Match", "Name", nic)
	}
	noAddress := opt("Network", "LinkLocalAddressing", "no")
	bootInBond := false
	for _, bond := range nw.Bonds {
		holdsBoot := false
		for i, m := range bond.Members {
			if isBoot(m) {
				holdsBoot, bootInBond = true, true
			}
			files[fmt.Sprintf("%s10-plinth-%s-m%d.network", networkDir, bond.Name, i)] = ini(by+": a member of "+bond.Name,
				opts{match(m), opt("Network", "Bond", bond.Name), noAddress})
		}
		nd := opts{opt("NetDev", "Name", bond.Name), opt("NetDev", "Kind", "bond")}
		if holdsBoot {
			nd = append(nd, opt("NetDev", "MACAddress", n.MAC))
		}
		nd = append(nd, opt("Bond", "Mode", bond.Mode), opt("Bond", "MIIMonitorSec", "100ms"))
		if bond.Mode == node.Bond8023ad {
			nd = append(nd, opt("Bond", "LACPTransmitRate", "fast"), opt("Bond", "TransmitHashPolicy", "layer3+4"))
		}
		files[networkDir+"10-plinth-"+bond.Name+".netdev"] = ini(by, nd)
		o := append(opts{opt("Match", "Name", bond.Name)}, vlansOn(func(l string) bool { return l == bond.Name })...)
		switch {
		case bond.Address != "":
			o = append(o, addressOpts(bond.Address, bond.Gateway, nil, "")...)
		case holdsBoot:
			o = append(o, bootOpts(cfg)...)
		default:
			o = append(o, noAddress)
		}
		files[networkDir+"10-plinth-"+bond.Name+".network"] = ini(by, o)
	}
	for _, v := range nw.VLANs {
		files[networkDir+"10-plinth-"+v.Name+".netdev"] = ini(by, opts{
			opt("NetDev", "Name", v.Name), opt("NetDev", "Kind", "vlan"), opt("VLAN", "Id", fmt.Sprint(v.ID))})
		o := opts{opt("Match", "Name", v.Name)}
		if v.Address != "" {
			o = append(o, addressOpts(v.Address, v.Gateway, nil, "")...)
		} else {
			o = append(o, noAddress)
		}
		files[networkDir+"10-plinth-"+v.Name+".network"] = ini(by, o)
		if isBond(nw, v.Link) || isBoot(v.Link) {
			continue // named in the bond's or the boot NIC's file
		}
		key := strings.ReplaceAll(v.Link, ":", "")
		files[networkDir+"10-plinth-link-"+key+".network"] = ini(by+": a NIC carrying VLANs",
			append(append(opts{match(v.Link)}, vlansOn(func(l string) bool { return l == v.Link })...), noAddress))
	}
	// Every NIC stage 1 brought up keeps its name: udev cannot rename a
	// NIC that is up ("already up, cannot rename"), marks it renaming, and
	// networkd then never configures it — no bond takes its members, the
	// boot NIC's DHCP is never renewed (seen in the lab with systemd 252).
	for _, nic := range n.NICs {
		if _, err := net.ParseMAC(nic.MAC); err != nil || !isWord(nic.Name) {
			continue
		}
		files[networkDir+"10-plinth-"+strings.ReplaceAll(nic.MAC, ":", "")+".link"] = ini(by+": the name the NIC had in stage 1, where it came up",
			opts{opt("Match", "PermanentMACAddress", nic.MAC), opt("Link", "Name", nic.Name)})
	}
	if !bootInBond {
		o := append(opts{opt("Match", "MACAddress", n.MAC)}, vlansOn(isBoot)...)
		files[networkDir+"10-plinth.network"] = ini(fmt.Sprintf("%s for the boot NIC (%s at boot).", by, n.Iface), append(o, bootOpts(cfg)...))
	}
	return files
}

func isBond(nw *node.Network, name string) bool {
	for _, b := range nw.Bonds {
		if b.Name == name {
			return true
		}
	}
	return false
}

// bootOpts configure the boot network: the profile's static address, or
// DHCP as stage 1 did.
func bootOpts(cfg *node.Config) opts {
	if st := cfg.Network; st != nil && st.Address != "" {
		return addressOpts(st.Address, st.Gateway, st.DNS, cfg.Domain)
	}
	return addressOpts(node.AddressDHCP, "", nil, "")
}

// addressOpts configure an address: DHCP (keeping the lease stage 1 or
// iPXE got: renewed, not renegotiated, client id the MAC) or a static one
// with its gateway, DNS servers and search domain. Values that do not
// parse are left out: a profile must not break the file.
func addressOpts(addr, gw string, dns []string, domain string) opts {
	if addr == node.AddressDHCP {
		return opts{opt("Network", "DHCP", "ipv4"), opt("DHCPv4", "ClientIdentifier", "mac")}
	}
	var o opts
	if _, err := netip.ParsePrefix(addr); err == nil {
		o = append(o, opt("Network", "Address", addr))
	}
	if _, err := netip.ParseAddr(gw); err == nil {
		o = append(o, opt("Network", "Gateway", gw))
	}
	for _, d := range dns {
		if _, err := netip.ParseAddr(d); err == nil {
			o = append(o, opt("Network", "DNS", d))
		}
	}
	if domain != "" && isWord(domain) {
		o = append(o, opt("Network", "Domains", domain))
	}
	return o
}
