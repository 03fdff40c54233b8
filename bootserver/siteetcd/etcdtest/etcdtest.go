// Package etcdtest fakes the two etcd gRPC calls the boot server makes
// (maintenance status and snapshot), framed as etcd sends them, for unit
// tests. The real etcd is exercised end to end.
package etcdtest

import (
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/plinth-dev/plinth/internal/etcdrpc"
	"github.com/plinth-dev/plinth/internal/etcdrpc/etcdrpctest"
)

// Member is one fake etcd member.
type Member struct {
	mu     sync.Mutex
	state  State
	Server *httptest.Server
}

// State is what a Member answers with; change it with Set.
type State struct {
	ClusterID uint64
	MemberID  uint64
	Leader    uint64 // 0: no leader
	Revision  int64
	Alarms    []string
	// Data is the database a snapshot streams, in chunks of Chunk bytes
	// (0: etcd's 32 KiB), followed by its sha256 as etcd sends it.
	Data  []byte
	Chunk int
	// Down makes every request fail as a dead member's would.
	Down bool
	// CorruptChecksum flips a byte of the trailing sha256.
	CorruptChecksum bool
	// StreamError ends the snapshot stream with an error status after the
	// first chunk, as etcd does when the server fails mid-stream.
	StreamError bool
}

// New starts a healthy member over h2c, closed with the test.
func New(t testing.TB, clusterID, memberID uint64) *Member {
	m := &Member{state: State{ClusterID: clusterID, MemberID: memberID, Leader: memberID, Revision: 1}}
	m.Server = etcdrpctest.Plain(t, m)
	return m
}

// Set changes the member while it serves.
func (m *Member) Set(f func(*State)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f(&m.state)
}

// URL is the member's client URL.
func (m *Member) URL() string { return m.Server.URL }

// ServeHTTP answers Maintenance/Status and Maintenance/Snapshot.
func (m *Member) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	c := m.state // a copy to serve from
	m.mu.Unlock()
	if c.Down {
		panic(http.ErrAbortHandler) // the connection drops
	}
	h := &etcdrpctest.Handler{Methods: map[string]etcdrpctest.Method{
		etcdrpc.MethodStatus: func([]byte) ([][]byte, error) {
			return [][]byte{etcdrpc.EncodeStatus(etcdrpc.Status{ClusterID: c.ClusterID, MemberID: c.MemberID, Revision: c.Revision,
				Version: "3.6.16", DBSize: int64(len(c.Data)), Leader: c.Leader, Errors: c.Alarms})}, nil
		},
		etcdrpc.MethodSnapshot: func([]byte) ([][]byte, error) { return c.stream() },
	}}
	h.ServeHTTP(w, r)
}

// stream is the snapshot as etcd sends it: the database in chunks, then
// one message holding its sha256.
func (c *State) stream() ([][]byte, error) {
	chunk := c.Chunk
	if chunk <= 0 {
		chunk = 32 << 10
	}
	var out [][]byte
	send := func(blob []byte, remaining int) {
		out = append(out, etcdrpc.EncodeSnapshotChunk(etcdrpc.SnapshotChunk{Remaining: uint64(remaining), Blob: blob, Version: "3.6.0"}))
	}
	for off := 0; off < len(c.Data); off += chunk {
		end := min(off+chunk, len(c.Data))
		send(c.Data[off:end], len(c.Data)-end)
		if c.StreamError {
			return out, &etcdrpctest.Status{Code: etcdrpc.CodeUnavailable, Message: "etcdserver: server stopped"}
		}
	}
	sum := sha256.Sum256(c.Data)
	if c.CorruptChecksum {
		sum[0] ^= 0xff
	}
	send(sum[:], 0)
	return out, nil
}

// DB is a fake database of n bytes (a multiple of 4096 for etcd's page
// size, as a real one is), so that with its sha256 it has the size etcd's
// tools expect of a snapshot.
func DB(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}
