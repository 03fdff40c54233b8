package profiles

import (
	"fmt"
	"strings"
)

// Match finds the machine a booting computer is, deterministically and most
// specific first: a MAC match wins over a UUID match, which wins over labels
// (among machines whose labels are all among the computer's, the one with
// the most; ties go to the first by name). A computer none of them matches
// gets the site's default, a machine named after its MAC (m-525400000101),
// or, when the site refuses unknown machines or the MAC is not one,
// ErrUnknownMachine. mac may use ':' or '-'; case does not matter.
func (s *Site) Match(mac, uuid string, labels map[string]string) (*Machine, error) {
	mac, macOK := normMAC(mac)
	if macOK {
		for _, m := range s.Machines {
			if m.MAC == mac {
				return m, nil
			}
		}
	}
	if u, ok := normUUID(uuid); ok {
		for _, m := range s.Machines {
			if m.UUID == u {
				return m, nil
			}
		}
	}
	var best *Machine
	for _, m := range s.Machines {
		if len(m.Labels) == 0 || !labelsMatch(m.Labels, labels) {
			continue
		}
		if best == nil || len(m.Labels) > len(best.Labels) || len(m.Labels) == len(best.Labels) && m.Name < best.Name {
			best = m
		}
	}
	if best != nil {
		return best, nil
	}
	if s.Default.Action == "boot" && macOK {
		name := "m-" + strings.ReplaceAll(mac, ":", "")
		return &Machine{Name: name, Hostname: name, MAC: mac, Role: s.Default.Role, Image: s.Default.Image}, nil
	}
	return nil, fmt.Errorf("mac %q uuid %q: %w", mac, uuid, ErrUnknownMachine)
}

// labelsMatch reports whether every label wanted is among those the
// computer has.
func labelsMatch(want, have map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}
