// Package etcdtest fakes the two calls of etcd 3.6's JSON gateway that the
// boot server makes (maintenance status and snapshot), in the shape etcd
// sends them, for unit tests. The real etcd is exercised end to end.
package etcdtest

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
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
	// StreamError ends the snapshot stream with an error object after the
	// first chunk, as the gateway does when the server fails mid-stream.
	StreamError bool
}

// New starts a healthy member over plain HTTP, closed with the test.
func New(t testing.TB, clusterID, memberID uint64) *Member {
	m := &Member{state: State{ClusterID: clusterID, MemberID: memberID, Leader: memberID, Revision: 1}}
	m.Server = httptest.NewServer(m)
	t.Cleanup(m.Server.Close)
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

// ServeHTTP answers /v3/maintenance/status and /v3/maintenance/snapshot.
func (m *Member) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	c := m.state // a copy to serve from
	m.mu.Unlock()
	if c.Down {
		panic(http.ErrAbortHandler) // the connection drops
	}
	if r.Method != http.MethodPost {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	switch r.URL.Path {
	case "/v3/maintenance/status":
		st := map[string]any{
			"header":  map[string]string{"cluster_id": u(c.ClusterID), "member_id": u(c.MemberID), "revision": strconv.FormatInt(c.Revision, 10), "raft_term": "2"},
			"version": "3.6.16", "dbSize": strconv.Itoa(len(c.Data)), "raftIndex": "9", "raftTerm": "2",
			"raftAppliedIndex": "9", "dbSizeInUse": "20480", "storageVersion": "3.6.0", "dbSizeQuota": "2147483648",
		}
		if c.Leader != 0 { // protojson leaves zero values out
			st["leader"] = u(c.Leader)
		}
		if len(c.Alarms) > 0 {
			st["errors"] = c.Alarms
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(st)
	case "/v3/maintenance/snapshot":
		c.stream(w)
	default:
		http.NotFound(w, r)
	}
}

// stream writes the snapshot as the gateway does: one {"result": ...}
// object per SnapshotResponse, newline-delimited; the database in
// chunks, then one message holding its sha256.
func (c *State) stream(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	chunk := c.Chunk
	if chunk <= 0 {
		chunk = 32 << 10
	}
	send := func(blob []byte, remaining int) {
		res := map[string]any{"blob": base64.StdEncoding.EncodeToString(blob), "version": "3.6.0"}
		if remaining > 0 {
			res["remaining_bytes"] = strconv.Itoa(remaining)
		}
		b, _ := json.Marshal(map[string]any{"result": res})
		fmt.Fprintf(w, "%s\n", b)
	}
	for off := 0; off < len(c.Data); off += chunk {
		end := min(off+chunk, len(c.Data))
		send(c.Data[off:end], len(c.Data)-end)
		if c.StreamError {
			fmt.Fprintln(w, `{"error":{"code":14,"message":"etcdserver: server stopped","details":[]}}`)
			return
		}
	}
	sum := sha256.Sum256(c.Data)
	if c.CorruptChecksum {
		sum[0] ^= 0xff
	}
	send(sum[:], 0)
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
