package profiles

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/plinth-dev/plinth/profiles/node"
)

// Match finds the machine a booting computer is, deterministically: a MAC
// match wins over a UUID match, which wins over labels (the machine whose
// labels all match and are the most numerous; ties go to the first by name).
// Unknown computers get the site's default, or ErrUnknownMachine.
func (s *Site) Match(mac, uuid string, labels map[string]string) (*Machine, error) {
	if hw, err := net.ParseMAC(mac); err == nil {
		mac = hw.String()
		for _, m := range s.Machines {
			if m.MAC != "" && m.MAC == mac {
				return m, nil
			}
		}
	} else {
		mac = ""
	}
	if u, ok := normUUID(uuid); ok {
		for _, m := range s.Machines {
			if m.UUID != "" && m.UUID == u {
				return m, nil
			}
		}
	}
	var best *Machine
	for _, m := range s.Machines {
		if len(m.Labels) == 0 || !labelsMatch(m.Labels, labels) {
			continue
		}
		if best == nil || len(m.Labels) > len(best.Labels) || (len(m.Labels) == len(best.Labels) && m.Name < best.Name) {
			best = m
		}
	}
	if best != nil {
		return best, nil
	}
	if s.Default.Action == "boot" && mac != "" {
		return &Machine{
			Name:     "m-" + strings.ReplaceAll(mac, ":", ""),
			Hostname: "m-" + strings.ReplaceAll(mac, ":", ""),
			MAC:      mac,
			Role:     s.Default.Role,
			Image:    s.Default.Image,
		}, nil
	}
	return nil, fmt.Errorf("mac %q uuid %q: %w", mac, uuid, ErrUnknownMachine)
}

func labelsMatch(want, have map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// Render builds the document machine m receives at boot. bootServer is the
// URL machines reach the boot server at ("" in embedded images).
func (s *Site) Render(m *Machine, bootServer string) (*node.Config, error) {
	c := &node.Config{
		Machine:  m.Name,
		Hostname: m.Hostname,
		Domain:   s.Domain,
		Role:     m.Role,
		Image:    m.Image,
	}
	if m.Address != "" || len(m.DNS) > 0 {
		c.Network = &node.Network{Address: m.Address, Gateway: m.Gateway, DNS: m.DNS}
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
	for _, e := range s.Machines {
		if e.Role != "etcd" || e.Address == "" {
			continue
		}
		p, err := netip.ParsePrefix(e.Address)
		if err != nil {
			return nil, fmt.Errorf("machine %s: address: %w", e.Name, err)
		}
		cl.EtcdMembers = append(cl.EtcdMembers, node.Member{Name: e.Name, Address: p.Addr().String()})
	}
	if s.Proxy != (Proxy{}) {
		cl.Proxy = &node.Proxy{HTTP: s.Proxy.HTTP, HTTPS: s.Proxy.HTTPS, NoProxy: s.Proxy.NoProxy}
	}
	c.Cluster = cl
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("machine %s: %w", m.Name, err)
	}
	return c, nil
}
