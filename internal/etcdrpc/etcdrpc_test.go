package etcdrpc_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/internal/etcdrpc"
	"github.com/plinth-dev/plinth/internal/etcdrpc/etcdrpctest"
)

func TestMembershipCallsCarryWhatEtcdReads(t *testing.T) {
	var added []byte
	srv := etcdrpctest.Plain(t, &etcdrpctest.Handler{Methods: map[string]etcdrpctest.Method{
		etcdrpc.MethodMemberList: func(req []byte) ([][]byte, error) {
			// linearizable = true
			if string(req) != "\x08\x01" {
				return nil, &etcdrpctest.Status{Code: etcdrpc.CodeInvalidArgument, Message: "want a linearizable read"}
			}
			m := etcdrpc.Message{}.Bytes(2, etcdrpc.EncodeMember(etcdrpc.Member{ID: 1<<63 + 5, Name: "etcd-1", PeerURLs: []string{"https://10.0.0.1:2380"}, ClientURLs: []string{"https://10.0.0.1:2379"}}))
			m = m.Bytes(2, etcdrpc.EncodeMember(etcdrpc.Member{ID: 7, PeerURLs: []string{"https://10.0.0.2:2380"}, IsLearner: true}))
			return [][]byte{m}, nil
		},
		etcdrpc.MethodMemberAdd: func(req []byte) ([][]byte, error) {
			added = req
			return [][]byte{etcdrpc.Message{}.Bytes(3, etcdrpc.EncodeMember(etcdrpc.Member{ID: 9, PeerURLs: []string{"https://10.0.0.3:2380"}, IsLearner: true}))}, nil
		},
		etcdrpc.MethodMemberRemove: func([]byte) ([][]byte, error) {
			return nil, &etcdrpctest.Status{Code: etcdrpc.CodeFailedPrecondition, Message: "etcdserver: unhealthy cluster"}
		},
	}})
	c := etcdrpc.Plain()
	ms, err := c.MemberList(context.Background(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].ID != 1<<63+5 || ms[0].Name != "etcd-1" || ms[0].ClientURLs[0] != "https://10.0.0.1:2379" || ms[0].IsLearner ||
		ms[1].ID != 7 || !ms[1].IsLearner || len(ms[1].ClientURLs) != 0 {
		t.Errorf("members %+v", ms)
	}
	ms, err = c.MemberAdd(context.Background(), srv.URL, []string{"https://10.0.0.3:2380"}, true)
	if err != nil || len(ms) != 1 || ms[0].ID != 9 {
		t.Errorf("add: %+v, %v", ms, err)
	}
	want := etcdrpc.Message{}.String(1, "https://10.0.0.3:2380").Bool(2, true)
	if string(added) != string(want) {
		t.Errorf("add request %x, want %x", added, want)
	}
	err = c.MemberRemove(context.Background(), srv.URL, 7)
	if !etcdrpc.IsCode(err, etcdrpc.CodeFailedPrecondition) || !strings.Contains(err.Error(), "etcdserver: unhealthy cluster") {
		t.Errorf("remove: %v", err)
	}
	// A method the member does not serve answers with headers alone.
	if err := c.MemberPromote(context.Background(), srv.URL, 7); !etcdrpc.IsCode(err, 12) {
		t.Errorf("promote: %v", err)
	}
}

func TestPutIfAbsentReturnsWhatTheKeyHolds(t *testing.T) {
	stored := map[string]string{}
	srv := etcdrpctest.Plain(t, &etcdrpctest.Handler{Methods: map[string]etcdrpctest.Method{
		etcdrpc.MethodTxn: func(req []byte) ([][]byte, error) {
			var key, value string
			// compare(1).key(3); success(2).request_put(2).value(2)
			etcdrpc.Fields(req, func(f etcdrpc.Field) error {
				return etcdrpc.Fields(f.Data, func(g etcdrpc.Field) error {
					switch {
					case f.Num == 1 && g.Num == 3:
						key = string(g.Data)
					case f.Num == 2 && g.Num == 2:
						etcdrpc.Fields(g.Data, func(h etcdrpc.Field) error {
							if h.Num == 2 {
								value = string(h.Data)
							}
							return nil
						})
					}
					return nil
				})
			})
			if have, ok := stored[key]; ok {
				kv := etcdrpc.Message{}.String(1, key).String(5, have)
				rng := etcdrpc.Message{}.Bytes(2, kv)
				return [][]byte{etcdrpc.Message{}.Bool(2, false).Bytes(3, etcdrpc.Message{}.Bytes(1, rng))}, nil
			}
			stored[key] = value
			return [][]byte{etcdrpc.Message{}.Bool(2, true)}, nil
		},
	}})
	c := etcdrpc.Plain()
	have, set, err := c.PutIfAbsent(context.Background(), srv.URL, "/coreos.com/network/config", "first")
	if err != nil || !set || have != "first" {
		t.Errorf("first: %q %v %v", have, set, err)
	}
	have, set, err = c.PutIfAbsent(context.Background(), srv.URL, "/coreos.com/network/config", "second")
	if err != nil || set || have != "first" {
		t.Errorf("second: %q %v %v", have, set, err)
	}
}

func TestSnapshotStreamsEveryChunkThenTheStatus(t *testing.T) {
	fail := false
	srv := etcdrpctest.Plain(t, &etcdrpctest.Handler{Methods: map[string]etcdrpctest.Method{
		etcdrpc.MethodSnapshot: func([]byte) ([][]byte, error) {
			out := [][]byte{
				etcdrpc.EncodeSnapshotChunk(etcdrpc.SnapshotChunk{Remaining: 3, Blob: []byte("abc"), Version: "3.6.0"}),
				etcdrpc.EncodeSnapshotChunk(etcdrpc.SnapshotChunk{Remaining: 0, Blob: []byte("def")}),
			}
			if fail {
				return out[:1], &etcdrpctest.Status{Code: etcdrpc.CodeUnavailable, Message: "etcdserver: leader changed"}
			}
			return out, nil
		},
	}})
	var got []string
	err := etcdrpc.Plain().Snapshot(context.Background(), srv.URL, func(ch etcdrpc.SnapshotChunk) error {
		got = append(got, string(ch.Blob)+"/"+ch.Version)
		return nil
	})
	if err != nil || !slices.Equal(got, []string{"abc/3.6.0", "def/"}) {
		t.Errorf("chunks %q, %v", got, err)
	}
	fail = true
	err = etcdrpc.Plain().Snapshot(context.Background(), srv.URL, func(etcdrpc.SnapshotChunk) error { return nil })
	if !etcdrpc.IsCode(err, etcdrpc.CodeUnavailable) || !strings.Contains(err.Error(), "leader changed") {
		t.Errorf("a stream that failed after a chunk: %v", err)
	}
}

func TestAddingAUserOrRoleThatExistsIsNotAnError(t *testing.T) {
	srv := etcdrpctest.Plain(t, &etcdrpctest.Handler{Methods: map[string]etcdrpctest.Method{
		etcdrpc.MethodUserAdd: func([]byte) ([][]byte, error) {
			return nil, &etcdrpctest.Status{Code: etcdrpc.CodeFailedPrecondition, Message: "etcdserver: user name already exists"}
		},
		etcdrpc.MethodRoleAdd: func([]byte) ([][]byte, error) {
			return nil, &etcdrpctest.Status{Code: etcdrpc.CodePermissionDenied, Message: "etcdserver: permission denied"}
		},
	}})
	c := etcdrpc.Plain()
	if err := c.UserAdd(context.Background(), srv.URL, "plinth:etcd-flannel"); err != nil {
		t.Errorf("user add: %v", err)
	}
	if err := c.RoleAdd(context.Background(), srv.URL, "x"); !etcdrpc.IsCode(err, etcdrpc.CodePermissionDenied) {
		t.Errorf("role add refused: %v", err)
	}
	var e *etcdrpc.Error
	if err := c.RoleAdd(context.Background(), srv.URL, "x"); !errors.As(err, &e) || e.Method != etcdrpc.MethodRoleAdd {
		t.Errorf("the error names no method: %v", err)
	}
}

func TestPrefixEnd(t *testing.T) {
	for in, want := range map[string]string{"/registry/": "/registry0", "a\xff": "b", "/coreos.com/network/": "/coreos.com/network0"} {
		if got, err := etcdrpc.PrefixEnd(in); err != nil || got != want {
			t.Errorf("PrefixEnd(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := etcdrpc.PrefixEnd("\xff"); err == nil {
		t.Error("no error for a prefix without an end")
	}
}
