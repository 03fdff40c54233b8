package etcdrpc

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Methods, as etcd's rpc.proto names them (package etcdserverpb).
const (
	MethodMemberList    = "/etcdserverpb.Cluster/MemberList"
	MethodMemberAdd     = "/etcdserverpb.Cluster/MemberAdd"
	MethodMemberRemove  = "/etcdserverpb.Cluster/MemberRemove"
	MethodMemberPromote = "/etcdserverpb.Cluster/MemberPromote"
	MethodRange         = "/etcdserverpb.KV/Range"
	MethodPut           = "/etcdserverpb.KV/Put"
	MethodTxn           = "/etcdserverpb.KV/Txn"
	MethodCompact       = "/etcdserverpb.KV/Compact"
	MethodStatus        = "/etcdserverpb.Maintenance/Status"
	MethodSnapshot      = "/etcdserverpb.Maintenance/Snapshot"
	MethodAuthStatus    = "/etcdserverpb.Auth/AuthStatus"
	MethodAuthEnable    = "/etcdserverpb.Auth/AuthEnable"
	MethodUserAdd       = "/etcdserverpb.Auth/UserAdd"
	MethodUserGrantRole = "/etcdserverpb.Auth/UserGrantRole"
	MethodRoleAdd       = "/etcdserverpb.Auth/RoleAdd"
	MethodRoleGrant     = "/etcdserverpb.Auth/RoleGrantPermission"
	MethodUserGet       = "/etcdserverpb.Auth/UserGet"
	MethodRoleGet       = "/etcdserverpb.Auth/RoleGet"
)

// Member is etcdserverpb.Member.
type Member struct {
	ID         uint64
	Name       string
	PeerURLs   []string
	ClientURLs []string
	IsLearner  bool
}

// EncodeMember is m as etcd sends it (for fakes in tests).
func EncodeMember(m Member) Message {
	b := Message{}.Uint(1, m.ID).String(2, m.Name)
	for _, u := range m.PeerURLs {
		b = b.String(3, u)
	}
	for _, u := range m.ClientURLs {
		b = b.String(4, u)
	}
	return b.Bool(5, m.IsLearner)
}

func decodeMember(b []byte) (Member, error) {
	var m Member
	err := Fields(b, func(f Field) error {
		switch f.Num {
		case 1:
			m.ID = f.Varint
		case 2:
			m.Name = string(f.Data)
		case 3:
			m.PeerURLs = append(m.PeerURLs, string(f.Data))
		case 4:
			m.ClientURLs = append(m.ClientURLs, string(f.Data))
		case 5:
			m.IsLearner = f.Varint != 0
		}
		return nil
	})
	return m, err
}

// members decodes the repeated Member field num of a response.
func members(b []byte, num int) ([]Member, error) {
	var ms []Member
	err := Fields(b, func(f Field) error {
		if int(f.Num) != num {
			return nil
		}
		m, err := decodeMember(f.Data)
		ms = append(ms, m)
		return err
	})
	return ms, err
}

// MemberList is the cluster's members, read linearizably: only a member
// of a cluster with quorum answers.
func (c *Client) MemberList(ctx context.Context, endpoint string) ([]Member, error) {
	b, err := c.Call(ctx, endpoint, MethodMemberList, Message{}.Bool(1, true))
	if err != nil {
		return nil, err
	}
	return members(b, 2)
}

// MemberAdd adds a member by its peer URLs (as a learner when asked) and
// returns the members after it.
func (c *Client) MemberAdd(ctx context.Context, endpoint string, peerURLs []string, learner bool) ([]Member, error) {
	req := Message{}
	for _, u := range peerURLs {
		req = req.String(1, u)
	}
	b, err := c.Call(ctx, endpoint, MethodMemberAdd, req.Bool(2, learner))
	if err != nil {
		return nil, err
	}
	return members(b, 3)
}

// MemberRemove removes a member by ID.
func (c *Client) MemberRemove(ctx context.Context, endpoint string, id uint64) error {
	_, err := c.Call(ctx, endpoint, MethodMemberRemove, Message{}.Uint(1, id))
	return err
}

// MemberPromote makes a learner a voting member.
func (c *Client) MemberPromote(ctx context.Context, endpoint string, id uint64) error {
	_, err := c.Call(ctx, endpoint, MethodMemberPromote, Message{}.Uint(1, id))
	return err
}

// kvValue is the value of a mvccpb.KeyValue.
func kvValue(b []byte) ([]byte, error) {
	var v []byte
	err := Fields(b, func(f Field) error {
		if f.Num == 5 {
			v = f.Data
		}
		return nil
	})
	return v, err
}

// rangeValue is the first value of a RangeResponse, and whether there is
// one.
func rangeValue(b []byte) ([]byte, bool, error) {
	var v []byte
	found := false
	err := Fields(b, func(f Field) error {
		if f.Num != 2 || found {
			return nil
		}
		found = true
		var err error
		v, err = kvValue(f.Data)
		return err
	})
	return v, found, err
}

// Get is the value of one key, and whether it exists.
func (c *Client) Get(ctx context.Context, endpoint, key string) (string, bool, error) {
	b, err := c.Call(ctx, endpoint, MethodRange, Message{}.String(1, key))
	if err != nil {
		return "", false, err
	}
	v, ok, err := rangeValue(b)
	return string(v), ok, err
}

// Put writes one key.
func (c *Client) Put(ctx context.Context, endpoint, key, value string) error {
	_, err := c.Call(ctx, endpoint, MethodPut, Message{}.String(1, key).String(2, value))
	return err
}

// Compact discards the key-value history before revision rev, as
// kube-apiserver's compactor does every five minutes. With authorisation
// on, etcd lets only the root role do it.
func (c *Client) Compact(ctx context.Context, endpoint string, rev int64) error {
	_, err := c.Call(ctx, endpoint, MethodCompact, Message{}.Uint(1, uint64(rev)))
	return err
}

// PutIfAbsent writes key=value unless the key exists, in one transaction,
// and returns the value the key holds afterwards and whether this call set
// it.
func (c *Client) PutIfAbsent(ctx context.Context, endpoint, key, value string) (string, bool, error) {
	// Compare{result EQUAL, target CREATE, key, create_revision 0}
	cmp := Message{}.Uint(1, 0).Uint(2, 1).String(3, key).Uint(5, 0)
	put := Message{}.Bytes(2, Message{}.String(1, key).String(2, value))
	get := Message{}.Bytes(1, Message{}.String(1, key))
	b, err := c.Call(ctx, endpoint, MethodTxn, Message{}.Bytes(1, cmp).Bytes(2, put).Bytes(3, get))
	if err != nil {
		return "", false, err
	}
	succeeded := false
	var have []byte
	found := false
	err = Fields(b, func(f Field) error {
		switch f.Num {
		case 2:
			succeeded = f.Varint != 0
		case 3: // ResponseOp
			return Fields(f.Data, func(op Field) error {
				if op.Num != 1 { // response_range
					return nil
				}
				var err error
				have, found, err = rangeValue(op.Data)
				return err
			})
		}
		return nil
	})
	switch {
	case err != nil:
		return "", false, fmt.Errorf("%s txn: %w", endpoint, err)
	case succeeded:
		return value, true, nil
	case !found:
		return "", false, fmt.Errorf("%s: %s exists but the transaction returned no value", endpoint, key)
	}
	return string(have), false, nil
}

// Status is etcdserverpb.StatusResponse, the part plinth reads.
type Status struct {
	ClusterID, MemberID uint64
	Revision            int64
	Version             string
	DBSize              int64
	Leader              uint64 // 0: no leader known
	Errors              []string
	IsLearner           bool
}

// EncodeStatus is s as etcd sends it (for fakes in tests).
func EncodeStatus(s Status) Message {
	h := Message{}.Uint(1, s.ClusterID).Uint(2, s.MemberID).Uint(3, uint64(s.Revision))
	b := Message{}.Bytes(1, h).String(2, s.Version).Uint(3, uint64(s.DBSize)).Uint(4, s.Leader)
	for _, e := range s.Errors {
		b = b.String(8, e)
	}
	return b.Bool(10, s.IsLearner)
}

// Status asks one member for its status.
func (c *Client) Status(ctx context.Context, endpoint string) (Status, error) {
	b, err := c.Call(ctx, endpoint, MethodStatus, nil)
	if err != nil {
		return Status{}, err
	}
	var s Status
	err = Fields(b, func(f Field) error {
		switch f.Num {
		case 1:
			return Fields(f.Data, func(h Field) error {
				switch h.Num {
				case 1:
					s.ClusterID = h.Varint
				case 2:
					s.MemberID = h.Varint
				case 3:
					s.Revision = int64(h.Varint)
				}
				return nil
			})
		case 2:
			s.Version = string(f.Data)
		case 3:
			s.DBSize = int64(f.Varint)
		case 4:
			s.Leader = f.Varint
		case 8:
			s.Errors = append(s.Errors, string(f.Data))
		case 10:
			s.IsLearner = f.Varint != 0
		}
		return nil
	})
	if err != nil {
		return Status{}, fmt.Errorf("%s status: %w", endpoint, err)
	}
	return s, nil
}

// SnapshotChunk is one etcdserverpb.SnapshotResponse.
type SnapshotChunk struct {
	Remaining uint64
	Blob      []byte
	Version   string // the storage version, in the first chunk (etcd 3.6)
}

// EncodeSnapshotChunk is ch as etcd sends it (for fakes in tests).
func EncodeSnapshotChunk(ch SnapshotChunk) Message {
	b := Message{}.Uint(2, ch.Remaining).Bytes(3, ch.Blob)
	if ch.Version != "" {
		b = b.String(4, ch.Version)
	}
	return b
}

// Snapshot streams a member's database, chunk by chunk, to each.
func (c *Client) Snapshot(ctx context.Context, endpoint string, each func(SnapshotChunk) error) error {
	return c.Stream(ctx, endpoint, MethodSnapshot, nil, func(b []byte) error {
		ch, err := DecodeSnapshotChunk(b)
		if err != nil {
			return fmt.Errorf("%s snapshot: %w", endpoint, err)
		}
		return each(ch)
	})
}

// DecodeSnapshotChunk reads one SnapshotResponse.
func DecodeSnapshotChunk(b []byte) (SnapshotChunk, error) {
	var ch SnapshotChunk
	err := Fields(b, func(f Field) error {
		switch f.Num {
		case 2:
			ch.Remaining = f.Varint
		case 3:
			ch.Blob = f.Data
		case 4:
			ch.Version = string(f.Data)
		}
		return nil
	})
	return ch, err
}

// AuthEnabled reports whether the cluster enforces authorisation.
func (c *Client) AuthEnabled(ctx context.Context, endpoint string) (bool, error) {
	b, err := c.Call(ctx, endpoint, MethodAuthStatus, nil)
	if err != nil {
		return false, err
	}
	on := false
	err = Fields(b, func(f Field) error {
		if f.Num == 2 {
			on = f.Varint != 0
		}
		return nil
	})
	return on, err
}

// AuthEnable turns authorisation on; it needs a user "root" with the root
// role. Enabling it when it is on changes nothing.
func (c *Client) AuthEnable(ctx context.Context, endpoint string) error {
	_, err := c.Call(ctx, endpoint, MethodAuthEnable, nil)
	return err
}

// exists is etcd's answer to adding a user or role that exists.
func exists(err error) bool {
	return IsCode(err, CodeFailedPrecondition) && strings.Contains(err.Error(), "already exists")
}

// UserAdd adds a user without a password — one known only by the common
// name of its client certificate; a user that exists is left as it is.
func (c *Client) UserAdd(ctx context.Context, endpoint, name string) error {
	_, err := c.Call(ctx, endpoint, MethodUserAdd, Message{}.String(1, name).Bytes(3, Message{}.Bool(1, true)))
	if exists(err) {
		return nil
	}
	return err
}

// RoleAdd adds a role; a role that exists is left as it is.
func (c *Client) RoleAdd(ctx context.Context, endpoint, name string) error {
	_, err := c.Call(ctx, endpoint, MethodRoleAdd, Message{}.String(1, name))
	if exists(err) {
		return nil
	}
	return err
}

// Permission types (authpb.Permission.Type).
const (
	PermRead      = 0
	PermWrite     = 1
	PermReadWrite = 2
)

// RoleGrant gives a role a permission on key, or on [key, rangeEnd) when
// rangeEnd is not empty.
func (c *Client) RoleGrant(ctx context.Context, endpoint, role string, perm int, key, rangeEnd string) error {
	p := Message{}.Uint(1, uint64(perm)).String(2, key)
	if rangeEnd != "" {
		p = p.String(3, rangeEnd)
	}
	_, err := c.Call(ctx, endpoint, MethodRoleGrant, Message{}.String(1, role).Bytes(2, p))
	return err
}

// UserGrantRole gives a user a role.
func (c *Client) UserGrantRole(ctx context.Context, endpoint, user, role string) error {
	_, err := c.Call(ctx, endpoint, MethodUserGrantRole, Message{}.String(1, user).String(2, role))
	return err
}

// notFound is etcd's answer about a user or role that does not exist.
func notFound(err error) bool {
	return IsCode(err, CodeFailedPrecondition) && strings.Contains(err.Error(), "not found")
}

// UserRoles are a user's roles; found is false for a user that does not
// exist.
func (c *Client) UserRoles(ctx context.Context, endpoint, user string) (roles []string, found bool, err error) {
	b, err := c.Call(ctx, endpoint, MethodUserGet, Message{}.String(1, user))
	if notFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	err = Fields(b, func(f Field) error {
		if f.Num == 2 {
			roles = append(roles, string(f.Data))
		}
		return nil
	})
	return roles, true, err
}

// Permission is an authpb.Permission: Key alone, or [Key, RangeEnd).
type Permission struct {
	Type          int
	Key, RangeEnd string
}

// RolePermissions are a role's permissions; found is false for a role that
// does not exist.
func (c *Client) RolePermissions(ctx context.Context, endpoint, role string) (perms []Permission, found bool, err error) {
	b, err := c.Call(ctx, endpoint, MethodRoleGet, Message{}.String(1, role))
	if notFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	err = Fields(b, func(f Field) error {
		if f.Num != 2 {
			return nil
		}
		var p Permission
		perms = append(perms, p)
		return Fields(f.Data, func(g Field) error {
			q := &perms[len(perms)-1]
			switch g.Num {
			case 1:
				q.Type = int(g.Varint)
			case 2:
				q.Key = string(g.Data)
			case 3:
				q.RangeEnd = string(g.Data)
			}
			return nil
		})
	})
	return perms, true, err
}

// PrefixEnd is the end of the range of keys that start with prefix.
func PrefixEnd(prefix string) (string, error) {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1]), nil
		}
	}
	return "", errors.New("prefix " + prefix + " has no end")
}
