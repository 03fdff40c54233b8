package bootserver

import (
	"fmt"
	"net/netip"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/profiles/node"
)

// issueTLS fills c.TLS for the machine c describes with certificates from
// the site CA (if the server has one) for the keys the machine made (req).
// The SANs carry the machine's static address, or else the address its
// profile request came from. No private key of the machine's passes here;
// the service-account key goes only sealed to the machine's own key.
func (s *Server) issueTLS(c *node.Config, remote string, req *api.CertRequests) error {
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
	t, err := s.cfg.CA.ForMachine(c, addr, req)
	if err != nil {
		return fmt.Errorf("machine %s: %w", c.Machine, err)
	}
	c.TLS = t
	if t != nil {
		s.log.Info("certificates issued", "machine", c.Machine, "role", c.Role, "address", addr.String(), "identities", len(t.Identities))
	}
	return nil
}
