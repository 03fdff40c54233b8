package stage1

import (
	"fmt"
	"strings"
)

// LinkState is what choosing the boot NIC looks at.
type LinkState struct {
	Name     string
	MAC      string
	Physical bool // a device, not a bridge, loopback, tunnel or bond
	Carrier  bool
}

// ChooseLink picks the boot NIC from links in kernel order: the one named
// want (by name or MAC, case-insensitive) whatever its carrier, or, when
// want is "", the first physical NIC with carrier. ok is false while none
// fits yet (a driver still probing, a cable not yet up).
func ChooseLink(links []LinkState, want string) (LinkState, bool) {
	for _, l := range links {
		if want != "" && (l.Name == want || (l.MAC != "" && strings.EqualFold(l.MAC, want))) {
			return l, true
		}
		if want == "" && l.Physical && l.Carrier {
			return l, true
		}
	}
	return LinkState{}, false
}

// describeLinks says what was seen, for the error when no link fits.
func describeLinks(links []LinkState) string {
	if len(links) == 0 {
		return "no network devices (is the NIC's driver among the image's kernel modules?)"
	}
	var b strings.Builder
	b.WriteString("saw")
	for _, l := range links {
		fmt.Fprintf(&b, " %s(%s", l.Name, l.MAC)
		if !l.Physical {
			b.WriteString(",virtual")
		}
		if !l.Carrier {
			b.WriteString(",no carrier")
		}
		b.WriteString(")")
	}
	return b.String()
}
