package profiles

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// APIPort is the port kube-apiserver serves on.
const APIPort = roles.DefaultAPIPort

// Render builds the document machine m receives at boot; it reads the site
// and m and changes neither. bootServer is the URL machines reach the boot
// server at ("" in embedded images, which have none).
//
// A machine with a static address gets the site's [network] dns unless it
// names its own resolvers. The etcd members are the site's machines of role
// etcd, sorted by name, at their static address, or at their host name
// (qualified by the site's domain) when they take theirs from DHCP.
func (s *Site) Render(m *Machine, bootServer string) (*node.Config, error) {
	if m == nil {
		return nil, errors.New("render: no machine")
	}
	if _, err := roles.Lookup(m.Role); err != nil {
		return nil, fmt.Errorf("render %s: %w", m.Name, err)
	}
	c := &node.Config{
		Version:  node.SchemaVersion,
		Machine:  m.Name,
		Hostname: m.Hostname,
		Domain:   s.Domain,
		Role:     m.Role,
		Image:    m.Image,
	}
	if m.Address != "" || len(m.DNS) > 0 || len(m.Bonds) > 0 || len(m.VLANs) > 0 {
		dns := m.DNS
		if len(dns) == 0 && m.Address != "" {
			dns = s.Network.DNS
		}
		c.Network = &node.Network{Address: m.Address, Gateway: m.Gateway, DNS: slices.Clone(dns)}
		for _, b := range m.Bonds {
			c.Network.Bonds = append(c.Network.Bonds, node.Bond{Name: b.Name, Mode: b.Mode, Members: slices.Clone(b.Members), Address: b.Address, Gateway: b.Gateway})
		}
		for _, v := range m.VLANs {
			c.Network.VLANs = append(c.Network.VLANs, node.VLAN{Name: v.Name, Link: v.Link, ID: v.ID, Address: v.Address, Gateway: v.Gateway})
		}
	}
	cl := &node.Cluster{
		Name:       s.Name,
		Domain:     s.Domain,
		APIName:    s.APIName,
		Flannel:    s.Network.Flannel,
		Backend:    s.Network.Backend,
		BootServer: bootServer,
		Kubernetes: s.Kubernetes,
	}
	if roles.Get(m.Role).Kubernetes {
		cl.ServiceCIDR = s.Network.Services
		cl.APIPort = APIPort
	}
	for _, e := range s.Machines {
		if !roles.Get(e.Role).EtcdMember {
			continue
		}
		addr := e.Hostname
		if s.Domain != "" {
			addr += "." + s.Domain
		}
		if e.Address != "" {
			p, err := netip.ParsePrefix(e.Address)
			if err != nil {
				return nil, fmt.Errorf("render %s: etcd member %s: address: %w", m.Name, e.Name, err)
			}
			addr = p.Addr().String()
		}
		cl.EtcdMembers = append(cl.EtcdMembers, node.Member{Name: e.Name, Address: addr, Durable: s.StateOf(e) != nil})
	}
	slices.SortFunc(cl.EtcdMembers, func(a, b node.Member) int { return strings.Compare(a.Name, b.Name) })
	if s.Proxy != (Proxy{}) {
		cl.Proxy = &node.Proxy{HTTP: s.Proxy.HTTP, HTTPS: s.Proxy.HTTPS, NoProxy: s.Proxy.NoProxy}
	}
	c.Cluster = cl
	if d := s.StateOf(m); d != nil {
		c.State = &node.State{Disk: d.Disk, Wipe: d.Wipe, PartUUID: node.StatePartUUID(s.Name, m.Name)}
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("render %s: %w", m.Name, err)
	}
	return c, nil
}
