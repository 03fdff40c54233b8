package bootserver

import (
	"fmt"
	"net/netip"

	"github.com/plinth-dev/plinth/profiles/node"
)

// issueTLS fills c.TLS for the machine c describes with new certificates
// from the site CA, if the server has one. The SANs carry the machine's
// static address, or else the address its profile request came from.
// Nothing of the keys is logged or kept: they live only in this response.
func (s *Server) issueTLS(c *node.Config, remote string) error {
	if s.cfg.CA == nil {
		return nil
	}
	addr, _ := netip.ParseAddr(remote)
	if c.Network != nil && c.Network.Address != "" {
		p, err := netip.ParsePrefix(c.Network.Address)
		if err != nil {
			return fmt.Errorf("machine %s: address: %w", c.Machine, err)
		}
		addr = p.Addr()
	}
	t, err := s.cfg.CA.ForMachine(c, addr)
	if err != nil {
		return fmt.Errorf("machine %s: %w", c.Machine, err)
	}
	c.TLS = t
	if t != nil {
		s.log.Info("certificates issued", "machine", c.Machine, "role", c.Role, "address", addr.String(), "identities", len(t.Identities))
	}
	return nil
}
