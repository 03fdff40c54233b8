package siteetcd

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/siteetcd/etcdtest"
	"github.com/plinth-dev/plinth/profiles/node"
)

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// cluster is three fake members and a watcher on them.
type cluster struct {
	members []*etcdtest.Member
	w       *Watcher
	dir     string
	logs    *logBuf
	now     time.Time
}

func newCluster(t *testing.T, dir string) *cluster {
	t.Helper()
	c := &cluster{dir: dir, logs: &logBuf{}, now: time.Date(2026, 8, 20, 12, 0, 0, 0, time.UTC)}
	var ms []node.Member
	urls := map[string]string{}
	for i := range 3 {
		m := etcdtest.New(t, 0xdeadbeef01, uint64(i+1))
		m.Set(func(s *etcdtest.State) { s.Leader, s.Data, s.Revision = 2, etcdtest.DB(4096), 40+int64(i) })
		c.members = append(c.members, m)
		name := []string{"etcd-1", "etcd-2", "etcd-3"}[i]
		ms = append(ms, node.Member{Name: name, Address: "10.77.0.1" + string(rune('1'+i))})
		urls[name] = m.URL()
	}
	w, err := NewWatcher(Config{
		Dir: dir, Client: plainClient(), Members: func() []node.Member { return ms },
		ClientURL:     func(m node.Member) string { return urls[m.Name] },
		SnapshotEvery: time.Hour, Keep: 2,
		Log: slog.New(slog.NewTextHandler(c.logs, nil)), Now: func() time.Time { return c.now },
	})
	if err != nil {
		t.Fatal(err)
	}
	c.w = w
	return c
}

func (c *cluster) set(f func(*etcdtest.State)) {
	for _, m := range c.members {
		m.Set(f)
	}
}

func TestPollRecordsTheClusterIDAndARestartReadsIt(t *testing.T) {
	dir := t.TempDir()
	c := newCluster(t, dir)
	if id := c.w.ClusterID(); id != "" {
		t.Fatalf("before any poll: %q", id)
	}
	r := c.w.Poll(context.Background())
	if len(r.Healthy()) != 3 || !r.AllHealthy() {
		t.Fatalf("round %+v", r)
	}
	if id := c.w.ClusterID(); id != "deadbeef01" {
		t.Fatalf("cluster ID %q, want hex deadbeef01", id)
	}
	b, err := os.ReadFile(filepath.Join(dir, ClusterFile))
	if err != nil || !strings.Contains(string(b), `"cluster_id": "deadbeef01"`) {
		t.Fatalf("%s: %s %v", ClusterFile, b, err)
	}
	// Every member down: the ID stays known, here and after a restart.
	c.set(func(s *etcdtest.State) { s.Down = true })
	c.w.Poll(context.Background())
	if id := c.w.ClusterID(); id != "deadbeef01" {
		t.Errorf("with no member answering: %q", id)
	}
	c2 := newCluster(t, dir)
	c2.set(func(s *etcdtest.State) { s.Down = true })
	if id := c2.w.ClusterID(); id != "deadbeef01" {
		t.Errorf("after a restart: %q", id)
	}
	// Members with no leader do not make a cluster ID.
	c3 := newCluster(t, t.TempDir())
	c3.set(func(s *etcdtest.State) { s.Leader = 0 })
	c3.w.Poll(context.Background())
	if id := c3.w.ClusterID(); id != "" {
		t.Errorf("leaderless members recorded %q", id)
	}
}

func TestScheduledSnapshotsAreTakenWhenDueAndPrunedToKeep(t *testing.T) {
	c := newCluster(t, t.TempDir())
	c.w.Poll(context.Background())
	for i := range 3 {
		if !c.w.snapshotDue() {
			t.Fatalf("snapshot %d not due", i)
		}
		if _, err := c.w.Snapshot(context.Background()); err != nil {
			t.Fatal(err)
		}
		if c.w.snapshotDue() {
			t.Fatalf("due right after snapshot %d", i)
		}
		c.now = c.now.Add(time.Hour)
	}
	list, _ := c.w.Store().Snapshots()
	if len(list) != 2 || list[0].Time != c.now.Add(-2*time.Hour) {
		t.Fatalf("kept %+v", list)
	}
	if !strings.Contains(c.logs.String(), "not checked by etcdutl") || !strings.Contains(c.logs.String(), "revision_at_least=") {
		t.Errorf("log:\n%s", c.logs)
	}
	// The leader (etcd-2) is asked last.
	if !strings.Contains(c.logs.String(), "member="+c.members[0].URL()) {
		t.Errorf("snapshot not from the first follower:\n%s", c.logs)
	}
	c.set(func(s *etcdtest.State) { s.Down = true })
	c.now = c.now.Add(2 * time.Hour)
	c.w.Poll(context.Background())
	if c.w.snapshotDue() {
		t.Error("due with no member answering")
	}
}

func TestRestoreIsOfferedOnlyWhileNoMemberAnswersAndClearedWhenAllDo(t *testing.T) {
	c := newCluster(t, t.TempDir())
	store := c.w.Store()
	snap := filepath.Join(t.TempDir(), "x.db")
	os.WriteFile(snap, []byte("db"), 0o600)
	req := RestoreRequest{File: snap, SHA256: strings.Repeat("ab", 32), Requested: c.now}
	if err := store.SaveRestore(req); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	c.w.Poll(ctx)
	if c.w.RestoreOffer() != nil {
		t.Fatal("offered while the cluster runs")
	}
	c.w.Poll(ctx)
	if n := strings.Count(c.logs.String(), "the cluster runs"); n != 1 {
		t.Errorf("refusal logged %d times, want once:\n%s", n, c.logs)
	}
	if f, ok := c.w.RestoreFile(req.SHA256); !ok || f != req.File {
		t.Errorf("requested file not served: %q %v", f, ok)
	}
	if _, ok := c.w.RestoreFile(strings.Repeat("cd", 32)); ok {
		t.Error("another digest served")
	}

	// All data lost: nothing answers; but a request whose file is gone is
	// not offered.
	c.set(func(s *etcdtest.State) { s.Down = true })
	os.Rename(snap, snap+".away")
	c.w.Poll(ctx)
	if c.w.RestoreOffer() != nil || !strings.Contains(c.logs.String(), "its snapshot is gone") {
		t.Errorf("offered a missing snapshot:\n%s", c.logs)
	}
	os.Rename(snap+".away", snap)
	c.set(func(s *etcdtest.State) { s.Down = true })
	c.w.Poll(ctx)
	off := c.w.RestoreOffer()
	if off == nil || off.SHA256 != req.SHA256 {
		t.Fatalf("not offered with no member answering: %+v", off)
	}
	if r, _ := store.Restore(); r == nil || r.Offered == nil {
		t.Errorf("offer not recorded: %+v", r)
	}

	// The first restored member answers: no longer offered, still served.
	c.members[0].Set(func(s *etcdtest.State) { s.Down, s.ClusterID, s.Leader = false, 0x5151, 1 })
	c.w.Poll(ctx)
	if c.w.RestoreOffer() != nil {
		t.Error("offered while a member answers")
	}
	if _, ok := c.w.RestoreFile(req.SHA256); !ok {
		t.Error("not served while the restore is under way")
	}
	if r, _ := store.Restore(); r == nil {
		t.Fatal("cleared before every member answers")
	}

	// Every member answers: the request is cleared, the new ID recorded.
	c.set(func(s *etcdtest.State) { s.Down, s.ClusterID, s.Leader = false, 0x5151, 1 })
	c.w.Poll(ctx)
	if r, err := store.Restore(); r != nil || err != nil {
		t.Fatalf("not cleared: %+v %v", r, err)
	}
	if _, ok := c.w.RestoreFile(req.SHA256); ok {
		t.Error("served after the restore")
	}
	if id := c.w.ClusterID(); id != "5151" {
		t.Errorf("cluster ID %q after the restore", id)
	}
	if !strings.Contains(c.logs.String(), "etcd restored") {
		t.Errorf("log:\n%s", c.logs)
	}
}

func TestTheWatcherLogsAMembersChangeOnce(t *testing.T) {
	c := newCluster(t, t.TempDir())
	c.w.Poll(context.Background())
	c.members[2].Set(func(s *etcdtest.State) { s.Down = true })
	c.w.Poll(context.Background())
	c.w.Poll(context.Background())
	if n := strings.Count(c.logs.String(), "etcd member not answering"); n != 1 {
		t.Errorf("logged %d times:\n%s", n, c.logs)
	}
}

// TestForgottenClusterIsForgottenOnlyWhileNoMemberAnswers: plinth etcd
// forget removes the record; the running server drops the ID at its next
// poll when no member answers, and records it again if any does.
func TestForgottenClusterIsForgottenOnlyWhileNoMemberAnswers(t *testing.T) {
	c := newCluster(t, t.TempDir())
	c.w.Poll(context.Background())
	if id := c.w.ClusterID(); id != "deadbeef01" {
		t.Fatalf("cluster ID %q", id)
	}
	// Members alive: forgetting is undone at once.
	if had, err := c.w.Store().ForgetCluster(); !had || err != nil {
		t.Fatalf("forget: %v %v", had, err)
	}
	c.w.Poll(context.Background())
	if id := c.w.ClusterID(); id != "deadbeef01" {
		t.Errorf("forgotten while the cluster answers: %q", id)
	}
	// Every member gone: forgotten.
	c.set(func(s *etcdtest.State) { s.Down = true })
	c.w.Store().ForgetCluster()
	c.w.Poll(context.Background())
	if id := c.w.ClusterID(); id != "" {
		t.Errorf("still %q after forget with no member answering", id)
	}
	if !strings.Contains(c.logs.String(), "etcd cluster forgotten") {
		t.Errorf("log:\n%s", c.logs)
	}
	if had, _ := c.w.Store().ForgetCluster(); had {
		t.Error("a second forget found a record")
	}
}
