// Package role is the seam where first boot configures a machine for its
// role (etcd, master, minion): each Configurator writes configuration files
// and systemd units into the machine's root before the image's init starts.
package role

import (
	"context"
	"fmt"
	"sort"

	"github.com/plinth-dev/plinth/profiles/node"
)

// Paths inside the machine's root that stage 1, the configurators and the
// readiness agent agree on.
const (
	// ConfigPath holds the machine's node.Config (mode 0600: it may carry
	// TLS keys) for stages after stage 1.
	ConfigPath = "/etc/plinth/config.json"
	// ServicesPath lists the systemd units the role runs, one per line; the
	// agent reports their state.
	ServicesPath = "/etc/plinth/services"
)

// Configurator configures one role.
type Configurator interface {
	Name() string
	Configure(ctx context.Context, root Root, cfg *node.Config) error
}

// Registry finds a configurator by role name.
type Registry map[string]Configurator

// NewRegistry returns a registry of cs; a later one replaces an earlier one
// of the same name.
func NewRegistry(cs ...Configurator) Registry {
	r := Registry{}
	for _, c := range cs {
		r[c.Name()] = c
	}
	return r
}

// Builtin returns the configurators of this build.
func Builtin() Registry { return NewRegistry(None{}, Etcd{}, Master{}, Minion{}) }

// Lookup returns the configurator of a role; the empty role is "none".
func (r Registry) Lookup(name string) (Configurator, error) {
	if name == "" {
		name = None{}.Name()
	}
	c, ok := r[name]
	if !ok {
		return nil, fmt.Errorf("role %q: no configurator in this build (have: %v)", name, r.Names())
	}
	return c, nil
}

// Names lists the registered roles, sorted.
func (r Registry) Names() []string {
	n := make([]string, 0, len(r))
	for k := range r {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// None is the role of a machine that only runs its image: nothing to write.
type None struct{}

// Name is "none".
func (None) Name() string { return "none" }

// Configure does nothing: the image's own units are all it runs.
func (None) Configure(context.Context, Root, *node.Config) error { return nil }

var _ Configurator = None{}
