package role

import (
	"fmt"
	"io"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"
)

// Unit is a systemd unit to install.
type Unit struct {
	Name     string
	Options  []*unit.UnitOption
	WantedBy string // e.g. multi-user.target; "" to leave it disabled
}

// UnitDir is where units installed at first boot go (the admin's
// directory, so they override the image's own).
const UnitDir = "/etc/systemd/system"

// WriteUnit writes UnitDir/NAME and enables it the way `systemctl enable`
// would, with a .wants symlink. Values are checked first: go-systemd's
// serializer does not escape newlines, so one would inject a directive.
func WriteUnit(root Root, u Unit) error {
	if err := checkUnitName(u.Name); err != nil {
		return err
	}
	if u.WantedBy != "" {
		if err := checkUnitName(u.WantedBy); err != nil {
			return fmt.Errorf("unit %s: WantedBy: %w", u.Name, err)
		}
	}
	if err := checkOptions(u.Name, u.Options); err != nil {
		return err
	}
	b, err := io.ReadAll(unit.Serialize(u.Options))
	if err != nil {
		return fmt.Errorf("unit %s: %w", u.Name, err)
	}
	p := UnitDir + "/" + u.Name
	if err := root.WriteFile(p, b, 0o644); err != nil {
		return err
	}
	if u.WantedBy != "" {
		return root.Symlink(p, UnitDir+"/"+u.WantedBy+".wants/"+u.Name)
	}
	return nil
}

// checkOptions refuses values that would inject directives.
func checkOptions(name string, opts []*unit.UnitOption) error {
	for _, o := range opts {
		if strings.ContainsAny(o.Section+o.Name+o.Value, "\n\r\x00") {
			return fmt.Errorf("unit %s: [%s] %s: value has a line break", name, o.Section, o.Name)
		}
		if o.Section == "" || o.Name == "" || strings.ContainsAny(o.Section+o.Name, "[]= ") {
			return fmt.Errorf("unit %s: bad section or key [%s] %s", name, o.Section, o.Name)
		}
	}
	return nil
}

// checkUnitName accepts names systemd would: name.type, no path, no space.
func checkUnitName(n string) error {
	i := strings.LastIndexByte(n, '.')
	if i <= 0 || i == len(n)-1 || len(n) > 255 {
		return fmt.Errorf("unit name %q: want name.type", n)
	}
	for _, r := range n {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune(":-_.\\@", r):
		default:
			return fmt.Errorf("unit name %q: character %q", n, r)
		}
	}
	return nil
}

// WriteServices records the units the role runs (ServicesPath), for the
// readiness agent.
func WriteServices(root Root, services []string) error {
	for _, s := range services {
		if err := checkUnitName(s); err != nil {
			return err
		}
	}
	var b strings.Builder
	for _, s := range services {
		b.WriteString(s + "\n")
	}
	return root.WriteFile(ServicesPath, []byte(b.String()), 0o644)
}
