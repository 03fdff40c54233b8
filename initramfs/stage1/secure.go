package stage1

import (
	"fmt"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/initramfs/stage1/events"
	"github.com/plinth-dev/plinth/profiles/node"
)

// The profile (the machine's keys, until the machine makes its own) and
// the reports go over HTTPS when the boot command line names the server's
// HTTPS URL (api.ParamTLS). The server is trusted by the site CA's
// fingerprint on the same command line (api.ParamCA), or else by the CA
// the image carries (CAFile, an image's [stage1] ca) and the system's.
// Artifacts stay on plain HTTP: each is checked against its digest.

// secureChannel sets s.secure and returns the base URL reports go to.
func (s *Stage1) secureChannel() (string, error) {
	f := *s.Fetch
	s.secure = &f
	p := s.Params
	if p.TLS == "" {
		return p.Server, nil
	}
	if p.CA != "" {
		c, err := events.PinnedClient(p.TLS, p.CA)
		if err != nil {
			return "", fmt.Errorf("%s: %w", api.ParamTLS, err)
		}
		s.secure.Client = c
	}
	return p.TLS, nil
}

// profileBase is where the profile comes from.
func (s *Stage1) profileBase() string {
	if s.Params.TLS != "" {
		return s.Params.TLS
	}
	return s.Params.Server
}

// checkProfileCA refuses a profile whose site CA is not the pinned one:
// every service on the machine would trust it.
func (s *Stage1) checkProfileCA(c *node.Config) error {
	if s.Params.CA == "" || c.TLS == nil {
		return nil
	}
	if err := events.CheckPin([]byte(c.TLS.CA), s.Params.CA); err != nil {
		return fmt.Errorf("its site CA: %w", err)
	}
	return nil
}
