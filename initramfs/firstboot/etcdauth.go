package firstboot

import (
	"context"
	"fmt"
	"slices"

	"github.com/plinth-dev/plinth/internal/etcdrpc"
	"github.com/plinth-dev/plinth/roles"
)

// EnsureAuth gives etcd the users and roles of roles.EtcdUsers and turns
// its authorisation on, asking the endpoints in turn. Every member does it
// at every boot once it votes: a cluster founded by an older plinth, or
// restored from a snapshot taken before, gets it too, and a user a newer
// plinth knows is added. What is in place already is only read, never
// written again: each write to etcd's auth store makes requests in flight
// fail with "revision of auth store is old". It reports what it changed.
func (e *Etcd) EnsureAuth(ctx context.Context, endpoints []string) ([]string, error) {
	did, _, err := inTurn(endpoints, func(ep string) ([]string, error) { return e.ensureAuth(ctx, ep) })
	return did, err
}

func (e *Etcd) ensureAuth(ctx context.Context, ep string) ([]string, error) {
	var did []string
	user := func(name, role string) error {
		have, found, err := e.RPC.UserRoles(ctx, ep, name)
		if err != nil {
			return err
		}
		if !found {
			if err := e.RPC.UserAdd(ctx, ep, name); err != nil {
				return fmt.Errorf("add etcd user %s: %w", name, err)
			}
			did = append(did, "user "+name)
		}
		if !slices.Contains(have, role) {
			if err := e.RPC.UserGrantRole(ctx, ep, name, role); err != nil {
				return fmt.Errorf("grant etcd user %s role %s: %w", name, role, err)
			}
			did = append(did, "user "+name+" role "+role)
		}
		return nil
	}
	for _, id := range roles.EtcdUsers() {
		if id.Etcd.Root {
			if err := user(id.CommonName, "root"); err != nil {
				return did, err
			}
			continue
		}
		// Each limited user has a role of its own name.
		have, found, err := e.RPC.RolePermissions(ctx, ep, id.CommonName)
		if err != nil {
			return did, err
		}
		if !found {
			if err := e.RPC.RoleAdd(ctx, ep, id.CommonName); err != nil {
				return did, fmt.Errorf("add etcd role %s: %w", id.CommonName, err)
			}
			did = append(did, "role "+id.CommonName)
		}
		want, err := permissions(id.Etcd)
		if err != nil {
			return did, fmt.Errorf("etcd user %s: %w", id.CommonName, err)
		}
		for _, p := range want {
			if slices.Contains(have, p) {
				continue
			}
			if err := e.RPC.RoleGrant(ctx, ep, id.CommonName, p.Type, p.Key, p.RangeEnd); err != nil {
				return did, fmt.Errorf("grant etcd role %s %s: %w", id.CommonName, p.Key, err)
			}
			did = append(did, "role "+id.CommonName+" read-write "+p.Key)
		}
		if err := user(id.CommonName, id.CommonName); err != nil {
			return did, err
		}
	}
	if err := user(roles.EtcdRootUser, "root"); err != nil {
		return did, err
	}
	on, err := e.RPC.AuthEnabled(ctx, ep)
	if err != nil {
		return did, err
	}
	if !on {
		if err := e.RPC.AuthEnable(ctx, ep); err != nil {
			return did, fmt.Errorf("enable etcd authorisation: %w", err)
		}
		did = append(did, "authorisation enabled")
	}
	return did, nil
}

// permissions are the read-write permissions of an etcd access.
func permissions(a *roles.EtcdAccess) ([]etcdrpc.Permission, error) {
	var out []etcdrpc.Permission
	for _, p := range a.Prefixes {
		end, err := etcdrpc.PrefixEnd(p)
		if err != nil {
			return nil, err
		}
		out = append(out, etcdrpc.Permission{Type: etcdrpc.PermReadWrite, Key: p, RangeEnd: end})
	}
	return out, nil
}
