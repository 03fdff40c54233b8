// Package role is the seam where first boot configures a machine for its
// role (etcd, master, minion): each Configurator writes configuration files
// and systemd units into the machine's root before the image's init starts.
package role

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/plinth-dev/plinth/profiles/node"
)

// Root is the machine's future root file system, written before switch_root.
type Root interface {
	WriteFile(path string, data []byte, mode os.FileMode) error
	Symlink(target, path string) error
	Exists(path string) bool
}

// Configurator configures one role.
type Configurator interface {
	Name() string
	Configure(ctx context.Context, root Root, cfg *node.Config) error
}

var registry = map[string]Configurator{}

// Register makes a configurator available by its name.
func Register(c Configurator) { registry[c.Name()] = c }

// Lookup returns the configurator of a role, or nil.
func Lookup(name string) Configurator { return registry[name] }

// Names lists the registered roles.
func Names() []string {
	var n []string
	for k := range registry {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// DirRoot is a Root at a directory (the overlay at /newroot, or a test dir).
type DirRoot string

func (d DirRoot) abs(p string) string { return filepath.Join(string(d), filepath.Clean("/"+p)) }

// WriteFile writes a file, creating parent directories, through a temporary
// file and a rename.
func (d DirRoot) WriteFile(p string, data []byte, mode os.FileMode) error {
	full := d.abs(p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		return err
	}
	tmp := full + ".plinth-tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, full)
}

// Symlink creates (or replaces) a symbolic link at p pointing to target.
func (d DirRoot) Symlink(target, p string) error {
	full := d.abs(p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		return err
	}
	os.Remove(full)
	return os.Symlink(target, full)
}

// Exists reports whether p exists (a symlink counts, whatever it points to).
func (d DirRoot) Exists(p string) bool {
	_, err := os.Lstat(d.abs(p))
	return err == nil
}

// Unit is a systemd unit to install.
type Unit struct {
	Name     string
	Options  []*unit.UnitOption
	WantedBy string // e.g. multi-user.target; "" to leave it disabled
}

// WriteUnit writes /etc/systemd/system/NAME and enables it the way
// `systemctl enable` would, with a .wants symlink. Values are checked first:
// go-systemd's serializer does not escape newlines.
func WriteUnit(root Root, u Unit) error {
	if strings.ContainsAny(u.Name, "/\n") || !strings.Contains(u.Name, ".") {
		return fmt.Errorf("unit name %q", u.Name)
	}
	for _, o := range u.Options {
		if strings.ContainsAny(o.Section+o.Name+o.Value, "\n\r") {
			return fmt.Errorf("unit %s: [%s] %s: value has a line break", u.Name, o.Section, o.Name)
		}
	}
	b, err := io.ReadAll(unit.Serialize(u.Options))
	if err != nil {
		return err
	}
	p := "/etc/systemd/system/" + u.Name
	if err := root.WriteFile(p, b, 0o644); err != nil {
		return err
	}
	if u.WantedBy != "" {
		return root.Symlink(p, "/etc/systemd/system/"+u.WantedBy+".wants/"+u.Name)
	}
	return nil
}
