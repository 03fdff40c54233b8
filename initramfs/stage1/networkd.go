package stage1

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/plinth-dev/plinth/profiles/node"
)

// networkDir is where stage 1 writes systemd-networkd's files; every name
// starts 10-plinth so it wins over an image's catch-all, and a bond's
// member files ("10-plinth-B-…") sort before the boot NIC's own
// ("10-plinth.network"): networkd takes the first file that matches.
const networkDir = "/etc/systemd/network/"

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
	files := map[string]string{}
	isBoot := func(nic string) bool { return strings.EqualFold(nic, n.MAC) || nic == n.Iface }
	vlansOn := func(link func(string) bool) string {
		var b strings.Builder
		for _, v := range nw.VLANs {
			if link(v.Link) {
				fmt.Fprintf(&b, "VLAN=%s\n", v.Name)
			}
		}
		return b.String()
	}
	bootInBond := false
	for _, bond := range nw.Bonds {
		holdsBoot := false
		for i, m := range bond.Members {
			match := "Name=" + m
			if _, err := net.ParseMAC(m); err == nil {
				match = "PermanentMACAddress=" + m
			}
			if isBoot(m) {
				holdsBoot, bootInBond = true, true
			}
			files[fmt.Sprintf("%s10-plinth-%s-m%d.network", networkDir, bond.Name, i)] = fmt.Sprintf(
				"# Written by plinth stage 1: a member of %s.\n[Match]\n%s\n\n[Network]\nBond=%s\nLinkLocalAddressing=no\n", bond.Name, match, bond.Name)
		}
		var nd strings.Builder
		fmt.Fprintf(&nd, "# Written by plinth stage 1.\n[NetDev]\nName=%s\nKind=bond\n", bond.Name)
		if holdsBoot {
			fmt.Fprintf(&nd, "MACAddress=%s\n", n.MAC)
		}
		fmt.Fprintf(&nd, "\n[Bond]\nMode=%s\nMIIMonitorSec=100ms\n", bond.Mode)
		if bond.Mode == node.Bond8023ad {
			nd.WriteString("LACPTransmitRate=fast\nTransmitHashPolicy=layer3+4\n")
		}
		files[networkDir+"10-plinth-"+bond.Name+".netdev"] = nd.String()
		var body string
		switch {
		case bond.Address != "":
			body = addressLines(bond.Address, bond.Gateway, nil, "")
		case holdsBoot:
			body = bootLines(cfg, n)
		default:
			body = "LinkLocalAddressing=no\n"
		}
		files[networkDir+"10-plinth-"+bond.Name+".network"] = fmt.Sprintf("# Written by plinth stage 1.\n[Match]\nName=%s\n\n[Network]\n%s%s",
			bond.Name, vlansOn(func(l string) bool { return l == bond.Name }), body)
	}
	for _, v := range nw.VLANs {
		files[networkDir+"10-plinth-"+v.Name+".netdev"] = fmt.Sprintf("# Written by plinth stage 1.\n[NetDev]\nName=%s\nKind=vlan\n\n[VLAN]\nId=%d\n", v.Name, v.ID)
		body := "LinkLocalAddressing=no\n"
		if v.Address != "" {
			body = addressLines(v.Address, v.Gateway, nil, "")
		}
		files[networkDir+"10-plinth-"+v.Name+".network"] = fmt.Sprintf("# Written by plinth stage 1.\n[Match]\nName=%s\n\n[Network]\n%s", v.Name, body)
		if isBond(nw, v.Link) || isBoot(v.Link) {
			continue // named in the bond's or the boot NIC's file
		}
		match := "Name=" + v.Link
		if _, err := net.ParseMAC(v.Link); err == nil {
			match = "PermanentMACAddress=" + v.Link
		}
		key := strings.ReplaceAll(v.Link, ":", "")
		files[networkDir+"10-plinth-link-"+key+".network"] = fmt.Sprintf("# Written by plinth stage 1: a NIC carrying VLANs.\n[Match]\n%s\n\n[Network]\n%sLinkLocalAddressing=no\n",
			match, vlansOn(func(l string) bool { return l == v.Link }))
	}
	if !bootInBond {
		files[networkDir+"10-plinth.network"] = fmt.Sprintf("# Written by plinth stage 1 for the boot NIC (%s at boot).\n[Match]\nMACAddress=%s\n\n[Network]\n%s%s",
			n.Iface, n.MAC, vlansOn(isBoot), bootLines(cfg, n))
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

// bootLines is the boot network's [Network] lines (and sections after):
// the profile's static address, or DHCP as stage 1 did.
func bootLines(cfg *node.Config, n *NetInfo) string {
	if st := cfg.Network; st != nil && st.Address != "" {
		return addressLines(st.Address, st.Gateway, st.DNS, cfg.Domain)
	}
	return addressLines(node.AddressDHCP, "", nil, "")
}

// addressLines renders an address: DHCP (keeping the lease stage 1 or iPXE
// got: renewed, not renegotiated, client id the MAC) or a static one with
// its gateway, DNS servers and search domain. Values that do not parse are
// left out: a profile must not break the file.
func addressLines(addr, gw string, dns []string, domain string) string {
	var b strings.Builder
	if addr == node.AddressDHCP {
		b.WriteString("DHCP=ipv4\n\n[DHCPv4]\nClientIdentifier=mac\n")
		return b.String()
	}
	if _, err := netip.ParsePrefix(addr); err == nil {
		fmt.Fprintf(&b, "Address=%s\n", addr)
	}
	if _, err := netip.ParseAddr(gw); err == nil {
		fmt.Fprintf(&b, "Gateway=%s\n", gw)
	}
	for _, d := range dns {
		if _, err := netip.ParseAddr(d); err == nil {
			fmt.Fprintf(&b, "DNS=%s\n", d)
		}
	}
	if domain != "" && isWord(domain) {
		fmt.Fprintf(&b, "Domains=%s\n", domain)
	}
	return b.String()
}
