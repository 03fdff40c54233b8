package bootserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/bootserver/siteetcd"
	"github.com/plinth-dev/plinth/bootserver/siteetcd/etcdtest"
	"github.com/plinth-dev/plinth/internal/etcdrpc"
	"github.com/plinth-dev/plinth/profiles/node"
)

const etcdSiteTOML = `
[site]
name = "lab"
domain = "lab.example"
enrolment = "none" # these tests are about the etcd state profiles carry
[[machine]]
name = "etcd-1"
mac = "52:54:00:00:01:01"
role = "etcd"
image = "etcd"
address = "10.77.0.11/24"
[[machine]]
name = "etcd-2"
mac = "52:54:00:00:01:02"
role = "etcd"
image = "etcd"
address = "10.77.0.12/24"
[[machine]]
name = "master-1"
mac = "52:54:00:00:02:01"
role = "master"
image = "master"
address = "10.77.0.21/24"
`

// etcdFixture is a server of a site with two etcd members, each a fake
// gateway, watched from a state directory.
type etcdFixture struct {
	s       *Server
	members map[string]*etcdtest.Member
	store   siteetcd.Store
}

func newEtcdFixture(t *testing.T) *etcdFixture {
	t.Helper()
	dir := t.TempDir()
	site := filepath.Join(dir, "site")
	os.MkdirAll(site, 0o755)
	os.WriteFile(filepath.Join(site, "site.toml"), []byte(etcdSiteTOML), 0o644)
	f := &etcdFixture{members: map[string]*etcdtest.Member{}, store: siteetcd.Store{Dir: filepath.Join(dir, "state", "etcd")}}
	for i, name := range []string{"etcd-1", "etcd-2"} {
		m := etcdtest.New(t, 0xc1a55, uint64(i+1))
		m.Set(func(s *etcdtest.State) { s.Leader = 1 })
		f.members[name] = m
	}
	s, err := New(Config{SiteDir: site, ArtifactsDir: filepath.Join(dir, "artifacts"), PublicURL: "http://10.77.0.1:8080",
		Etcd: &siteetcd.Config{
			Dir: f.store.Dir, Client: &siteetcd.Client{RPC: etcdrpc.Plain()},
			ClientURL: func(m node.Member) string { return f.members[m.Name].URL() },
		}})
	if err != nil {
		t.Fatal(err)
	}
	s.neighbour = func(netip.Addr) (string, bool) { return "", false }
	f.s = s
	return f
}

func (f *etcdFixture) poll() { f.s.etcd.Poll(context.Background()) }

func (f *etcdFixture) setAll(fn func(*etcdtest.State)) {
	for _, m := range f.members {
		m.Set(fn)
	}
}

func TestEveryProfileCarriesTheEtcdClusterIDOnceSeen(t *testing.T) {
	f := newEtcdFixture(t)
	if c := profileOf(t, f.s, "master-1", "10.77.0.21"); c.Cluster.EtcdClusterID != "" {
		t.Fatalf("before the watcher saw a cluster: %q", c.Cluster.EtcdClusterID)
	}
	f.poll()
	for _, m := range []string{"etcd-1", "etcd-2", "master-1"} {
		c := profileOf(t, f.s, m, "10.77.0.21")
		if c.Cluster.EtcdClusterID != "c1a55" {
			t.Errorf("%s: cluster ID %q", m, c.Cluster.EtcdClusterID)
		}
		if c.Cluster.EtcdRestore != nil {
			t.Errorf("%s: a restore nobody asked for", m)
		}
	}
}

// requestRestore publishes a snapshot file and records a restore of it.
func (f *etcdFixture) requestRestore(t *testing.T) (string, []byte) {
	t.Helper()
	data := []byte(strings.Repeat("snapshot", 1000))
	os.MkdirAll(f.store.SnapshotDir(), 0o700)
	p := filepath.Join(f.store.SnapshotDir(), "20260820T120000Z.db")
	os.WriteFile(p, data, 0o600)
	sum := sha256.Sum256(data)
	hexd := hex.EncodeToString(sum[:])
	if err := f.store.SaveRestore(siteetcd.RestoreRequest{File: p, SHA256: hexd, Requested: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return hexd, data
}

func TestARestoreIsOfferedToEtcdMembersOnlyWhenNoMemberAnswers(t *testing.T) {
	f := newEtcdFixture(t)
	sum, _ := f.requestRestore(t)
	f.poll()
	if c := profileOf(t, f.s, "etcd-1", "10.77.0.11"); c.Cluster.EtcdRestore != nil {
		t.Fatal("offered while the cluster runs")
	}
	f.setAll(func(s *etcdtest.State) { s.Down = true })
	f.poll()
	c := profileOf(t, f.s, "etcd-1", "10.77.0.11")
	want := "http://10.77.0.1:8080/v1/etcd/restore/" + sum
	if c.Cluster.EtcdRestore == nil || c.Cluster.EtcdRestore.URL != want || c.Cluster.EtcdRestore.SHA256 != sum {
		t.Fatalf("etcd-1's restore %+v, want %s", c.Cluster.EtcdRestore, want)
	}
	if c.Cluster.EtcdClusterID != "c1a55" {
		t.Errorf("cluster ID %q beside the restore", c.Cluster.EtcdClusterID)
	}
	if c := profileOf(t, f.s, "master-1", "10.77.0.21"); c.Cluster.EtcdRestore != nil {
		t.Error("a master was offered the restore")
	}
}

func TestTheRestoreSnapshotIsServedOnlyToMembersAndOnlyUnderItsDigest(t *testing.T) {
	f := newEtcdFixture(t)
	h := f.s.Handler()
	sum, data := f.requestRestore(t)
	path := api.EtcdRestorePath(sum)
	if w := getFrom(h, "10.77.0.11", path); w.Code != http.StatusNotFound {
		t.Errorf("before the watcher read the request: %d", w.Code)
	}
	f.setAll(func(s *etcdtest.State) { s.Down = true })
	f.poll()
	w := getFrom(h, "10.77.0.11", path)
	if w.Code != http.StatusOK || w.Body.String() != string(data) {
		t.Fatalf("etcd-1: %d, %d bytes", w.Code, w.Body.Len())
	}
	if w.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q", w.Header().Get("Cache-Control"))
	}
	for _, tc := range []struct {
		from, path string
		code       int
	}{
		{"10.77.0.21", path, http.StatusForbidden},                                        // the master
		{"10.77.0.99", path, http.StatusForbidden},                                        // not in the site
		{"10.77.0.12", api.EtcdRestorePath(strings.Repeat("0", 64)), http.StatusNotFound}, // another digest
	} {
		if w := getFrom(h, tc.from, tc.path); w.Code != tc.code {
			t.Errorf("GET %s from %s: %d, want %d", tc.path, tc.from, w.Code, tc.code)
		}
	}
	// Restored: every member answers; the request is gone, and the file
	// is no longer served.
	f.setAll(func(s *etcdtest.State) { s.Down = false })
	f.poll()
	if w := getFrom(h, "10.77.0.11", path); w.Code != http.StatusNotFound {
		t.Errorf("after the restore: %d", w.Code)
	}
	if r, _ := f.store.Restore(); r != nil {
		t.Errorf("restore.json still there: %+v", r)
	}
}

func TestEtcdRestorePathRoutesToTheDigest(t *testing.T) {
	mux := http.NewServeMux()
	got := ""
	mux.HandleFunc("GET "+api.PathEtcdRestore, func(w http.ResponseWriter, r *http.Request) { got = r.PathValue("sha256") })
	mux.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, api.EtcdRestorePath("ab12"), nil))
	if got != "ab12" {
		t.Errorf("routed digest %q", got)
	}
}

// TestServeRunsTheEtcdWatcherAndStopsIt: Serve polls the members on its
// own, and returns once the watcher has stopped.
func TestServeRunsTheEtcdWatcherAndStopsIt(t *testing.T) {
	dir := t.TempDir()
	site := filepath.Join(dir, "site")
	os.MkdirAll(site, 0o755)
	os.WriteFile(filepath.Join(site, "site.toml"), []byte(etcdSiteTOML), 0o644)
	m := etcdtest.New(t, 0xfeed, 1)
	s, err := New(Config{SiteDir: site, ArtifactsDir: filepath.Join(dir, "artifacts"), PublicURL: "http://10.77.0.1:8080",
		Etcd: &siteetcd.Config{Dir: filepath.Join(dir, "state", "etcd"), Client: &siteetcd.Client{RPC: etcdrpc.Plain()},
			ClientURL: func(node.Member) string { return m.URL() }, Poll: 10 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, nil) }()
	wait, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	waitUntil(t, wait, "the watcher sees the cluster", func() bool { return s.etcd.ClusterID() == "feed" })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return")
	}
}

func TestWatchingEtcdWithoutTheSiteCAIsRefused(t *testing.T) {
	dir := t.TempDir()
	site := filepath.Join(dir, "site")
	os.MkdirAll(site, 0o755)
	os.WriteFile(filepath.Join(site, "site.toml"), []byte(etcdSiteTOML), 0o644)
	_, err := New(Config{SiteDir: site, ArtifactsDir: dir, PublicURL: "http://x", Etcd: &siteetcd.Config{Dir: dir}})
	if err == nil || !strings.Contains(err.Error(), "site CA") {
		t.Errorf("err %v", err)
	}
}
