package firstboot

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/internal/etcdrpc"
	"github.com/plinth-dev/plinth/internal/etcdrpc/etcdrpctest"
	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
	"google.golang.org/protobuf/encoding/protowire"
)

func TestSplitSubnetGivesDockerTheLowerHalfAndPodsTheUpper(t *testing.T) {
	sn, err := ParseSubnetEnv("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
	if err != nil {
		t.Fatal(err)
	}
	s := SplitSubnet(sn)
	if s.Docker.String() != "10.244.5.1/25" || s.Pods.String() != "10.244.5.128/25" || s.PodGateway.String() != "10.244.5.129" || s.MTU != 1450 {
		t.Errorf("split %+v", s)
	}
	var d map[string]any
	if err := json.Unmarshal([]byte(s.DockerJSON()), &d); err != nil || d["bip"] != "10.244.5.1/25" || d["mtu"] != 1450.0 || d["ip-masq"] != false {
		t.Errorf("docker.json %s (%v)", s.DockerJSON(), err)
	}
	c := s.CNIConflist()
	for _, want := range []string{`"subnet": "10.244.5.128/25"`, `"gateway": "10.244.5.129"`, `"bridge": "cni0"`, `"mtu": 1450`} {
		if !strings.Contains(c, want) {
			t.Errorf("conflist lacks %s:\n%s", want, c)
		}
	}
}

func TestParseSubnetEnvRefusesWhatItCannotSplit(t *testing.T) {
	for in, want := range map[string]string{
		"FLANNEL_MTU=1450\n":                             "no IPv4 FLANNEL_SUBNET",
		"FLANNEL_SUBNET=10.244.5.1/30\nFLANNEL_MTU=1450": "too small",
		"FLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_MTU=12":   "FLANNEL_MTU 12",
		"FLANNEL_SUBNET=banana\n":                        "FLANNEL_SUBNET",
	} {
		if _, err := ParseSubnetEnv(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
}

// fakeEtcd is a running cluster's gRPC Cluster service, enough for Join.
type fakeEtcd struct {
	mu      sync.Mutex
	members []Member
	calls   []string
	next    int
	// noQuorum: the members run (livez answers) but reads time out.
	noQuorum bool
}

func (f *fakeEtcd) handler() http.Handler {
	list := func(field protowire.Number) [][]byte {
		var m etcdrpc.Message
		for _, x := range f.members {
			id, _ := strconv.ParseUint(x.ID, 10, 64)
			m = m.Bytes(field, etcdrpc.EncodeMember(etcdrpc.Member{ID: id, Name: x.Name, PeerURLs: x.PeerURLs, ClientURLs: x.ClientURLs, IsLearner: x.IsLearner}))
		}
		return [][]byte{m}
	}
	method := func(name string, f2 func(req []byte) [][]byte) etcdrpctest.Method {
		return func(req []byte) ([][]byte, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.calls = append(f.calls, name)
			if f.noQuorum {
				return nil, &etcdrpctest.Status{Code: etcdrpc.CodeUnavailable, Message: "etcdserver: request timed out"}
			}
			return f2(req), nil
		}
	}
	return &etcdrpctest.Handler{
		Methods: map[string]etcdrpctest.Method{
			etcdrpc.MethodMemberList: method("list", func([]byte) [][]byte { return list(2) }),
			etcdrpc.MethodMemberAdd: method("add", func(req []byte) [][]byte {
				f.next++
				var urls []string
				learner := false
				etcdrpc.Fields(req, func(fd etcdrpc.Field) error {
					switch fd.Num {
					case 1:
						urls = append(urls, string(fd.Data))
					case 2:
						learner = fd.Varint != 0
					}
					return nil
				})
				f.members = append(f.members, Member{ID: "9" + strconv.Itoa(f.next), PeerURLs: urls, IsLearner: learner})
				return list(3)
			}),
			etcdrpc.MethodMemberRemove: method("remove", func(req []byte) [][]byte {
				var id uint64
				etcdrpc.Fields(req, func(fd etcdrpc.Field) error { id = fd.Varint; return nil })
				for i, m := range f.members {
					if m.ID == strconv.FormatUint(id, 10) {
						f.members = append(f.members[:i], f.members[i+1:]...)
						break
					}
				}
				return [][]byte{nil}
			}),
		},
		Other: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/livez" {
				w.Write([]byte("ok"))
				return
			}
			http.NotFound(w, r)
		}),
	}
}

func joinConfig(self string, peers map[string]string) *node.Config {
	c := &node.Config{Machine: self, Hostname: self, Cluster: &node.Cluster{Name: "lab"}}
	for _, n := range []string{"etcd-1", "etcd-2", "etcd-3", "etcd-4"} {
		if a, ok := peers[n]; ok {
			c.Cluster.EtcdMembers = append(c.Cluster.EtcdMembers, node.Member{Name: n, Address: a})
		}
	}
	return c
}

func TestJoinFoundsTheClusterWhenNoMemberAnswers(t *testing.T) {
	e := &Etcd{RPC: etcdrpc.Plain()}
	cfg := joinConfig("etcd-1", map[string]string{"etcd-1": "10.0.0.1", "etcd-2": "127.0.0.1:1", "etcd-3": "127.0.0.1:2"})
	// Addresses with a port are not etcd members' addresses; ClientURL
	// adds :2379, so nothing answers there.
	p, err := e.Join(context.Background(), cfg, false)
	if err != nil || p.State != "new" || p.Initial != "etcd-1=https://10.0.0.1:2380,etcd-2=https://127.0.0.1:1:2380,etcd-3=https://127.0.0.1:2:2380" {
		t.Errorf("plan %+v, %v", p, err)
	}
	if !strings.Contains(p.Env(), "ETCD_INITIAL_CLUSTER_STATE=new\n") {
		t.Errorf("env %q", p.Env())
	}
}

func TestJoinFoundsASingleMemberCluster(t *testing.T) {
	// The only etcd machine of a site has nobody to ask: it founds the
	// cluster alone rather than trying to join one.
	e := gateway(t, &fakeEtcd{})
	p, err := e.Join(context.Background(), joinConfig("etcd-1", map[string]string{"etcd-1": "10.0.0.1"}), false)
	if err != nil || p.State != "new" || p.Initial != "etcd-1=https://10.0.0.1:2380" {
		t.Errorf("plan %+v, %v", p, err)
	}
}

// gateway serves f where the other members' client URLs point: Join's
// member URLs are https://ADDR:2379, so every request goes to the test
// server instead.
func gateway(t *testing.T, f *fakeEtcd) *Etcd {
	srv := httptest.NewUnstartedServer(f.handler())
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c := srv.Client()
	c.Transport = rewrite{addr: strings.TrimPrefix(srv.URL, "https://"), rt: c.Transport}
	return &Etcd{RPC: &etcdrpc.Client{HTTP: c}}
}

// rewrite sends every request to the test server.
type rewrite struct {
	addr string
	rt   http.RoundTripper
}

func (r rewrite) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.URL.Host = r.addr
	return r.rt.RoundTrip(req)
}

func TestJoinAddsAMemberNewToTheProfile(t *testing.T) {
	f := &fakeEtcd{members: []Member{
		{ID: "1", Name: "etcd-1", PeerURLs: []string{"https://10.0.0.1:2380"}, ClientURLs: []string{"https://10.0.0.1:2379"}},
		{ID: "2", Name: "etcd-2", PeerURLs: []string{"https://10.0.0.2:2380"}, ClientURLs: []string{"https://10.0.0.2:2379"}},
		{ID: "3", Name: "etcd-3", PeerURLs: []string{"https://10.0.0.3:2380"}, ClientURLs: []string{"https://10.0.0.3:2379"}},
	}}
	e := gateway(t, f)
	cfg := joinConfig("etcd-4", map[string]string{"etcd-1": "10.0.0.1", "etcd-2": "10.0.0.2", "etcd-3": "10.0.0.3", "etcd-4": "10.0.0.4"})
	p, err := e.Join(context.Background(), cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	want := "etcd-1=https://10.0.0.1:2380,etcd-2=https://10.0.0.2:2380,etcd-3=https://10.0.0.3:2380,etcd-4=https://10.0.0.4:2380"
	if p.State != "existing" || p.Initial != want || !strings.Contains(p.Why, "added as a learner") {
		t.Errorf("plan %+v", p)
	}
	if len(f.members) != 4 || !f.members[3].IsLearner || strings.Join(f.calls, " ") != "list add" {
		t.Errorf("members %v calls %v", f.members, f.calls)
	}
}

func TestJoinStartsAFoundingMemberThatNeverRan(t *testing.T) {
	f := &fakeEtcd{members: []Member{
		{ID: "1", Name: "etcd-1", PeerURLs: []string{"https://10.0.0.1:2380"}, ClientURLs: []string{"https://10.0.0.1:2379"}},
		{ID: "2", Name: "etcd-2", PeerURLs: []string{"https://10.0.0.2:2380"}, ClientURLs: []string{"https://10.0.0.2:2379"}},
		{ID: "3", Name: "etcd-3", PeerURLs: []string{"https://10.0.0.3:2380"}},
	}}
	e := gateway(t, f)
	p, err := e.Join(context.Background(), joinConfig("etcd-3", map[string]string{"etcd-1": "10.0.0.1", "etcd-2": "10.0.0.2", "etcd-3": "10.0.0.3"}), false)
	if err != nil || p.State != "existing" || len(f.calls) != 1 || len(f.members) != 3 {
		t.Errorf("plan %+v %v, calls %v", p, err, f.calls)
	}
}

func TestJoinReplacesARebootedMember(t *testing.T) {
	f := &fakeEtcd{members: []Member{
		{ID: "1", Name: "etcd-1", PeerURLs: []string{"https://10.0.0.1:2380"}, ClientURLs: []string{"https://10.0.0.1:2379"}},
		{ID: "2", Name: "etcd-2", PeerURLs: []string{"https://10.0.0.2:2380"}, ClientURLs: []string{"https://10.0.0.2:2379"}},
	}}
	e := gateway(t, f)
	p, err := e.Join(context.Background(), joinConfig("etcd-2", map[string]string{"etcd-1": "10.0.0.1", "etcd-2": "10.0.0.2"}), false)
	if err != nil || p.State != "existing" || p.Initial != "etcd-1=https://10.0.0.1:2380,etcd-2=https://10.0.0.2:2380" {
		t.Errorf("plan %+v %v", p, err)
	}
	if strings.Join(f.calls, " ") != "list remove add" {
		t.Errorf("calls %v", f.calls)
	}
	for _, m := range f.members {
		if m.ID == "2" {
			t.Errorf("the old member is still there: %v", f.members)
		}
	}
	if !f.members[len(f.members)-1].IsLearner {
		t.Errorf("rejoined as a voting member: %+v", f.members)
	}
}

func TestJoinStartsAMemberWithDataAsItselfWithoutAskingAnyone(t *testing.T) {
	f := &fakeEtcd{}
	e := gateway(t, f)
	p, err := e.Join(context.Background(), joinConfig("etcd-2", map[string]string{"etcd-1": "10.0.0.1", "etcd-2": "10.0.0.2"}), true)
	if err != nil || p.State != "existing" || !strings.Contains(p.Why, "starting as itself") || len(f.calls) != 0 {
		t.Errorf("plan %+v %v, calls %v", p, err, f.calls)
	}
}

func TestJoinWaitsWhenMembersAnswerWithoutQuorum(t *testing.T) {
	f := &fakeEtcd{noQuorum: true, members: []Member{
		{ID: "1", Name: "etcd-1", PeerURLs: []string{"https://10.0.0.1:2380"}, ClientURLs: []string{"https://10.0.0.1:2379"}},
	}}
	e := gateway(t, f)
	cfg := joinConfig("etcd-2", map[string]string{"etcd-1": "10.0.0.1", "etcd-2": "10.0.0.2", "etcd-3": "10.0.0.3"})
	p, err := e.Join(context.Background(), cfg, false)
	if !errors.Is(err, ErrWait) || !strings.Contains(err.Error(), "no quorum") || p.State != "" {
		t.Errorf("plan %+v, %v", p, err)
	}
	for _, c := range f.calls {
		if strings.Contains(c, "add") || strings.Contains(c, "remove") {
			t.Errorf("membership changed without quorum: %v", f.calls)
		}
	}
}

// TestJoinFoundsOnlyWhenNoMemberCanHoldData: nobody answers. A member
// with no data founds a cluster only when the boot server never saw one
// or no other member keeps data on disk; restores when a snapshot is
// offered; otherwise it waits for the members that may hold the data.
func TestJoinFoundsOnlyWhenNoMemberCanHoldData(t *testing.T) {
	e := &Etcd{RPC: etcdrpc.Plain()}
	e.RPC.Timeout = time.Second
	for _, tc := range []struct {
		name     string
		durable  bool
		id       string
		restore  bool
		want     string // plan's Why, or the error
		wantWait bool
	}{
		{"fresh site", true, "", false, "founding the cluster", false},
		{"durable members, cluster seen", true, "abc123", false, "waiting for them", true},
		{"no durable member, cluster seen", false, "abc123", false, "founding a NEW, EMPTY cluster in place of abc123", false},
		{"snapshot offered", true, "abc123", true, "restoring it", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := joinConfig("etcd-1", map[string]string{"etcd-1": "10.0.0.1", "etcd-2": "127.0.0.1:1", "etcd-3": "127.0.0.1:2"})
			for i := range cfg.Cluster.EtcdMembers {
				cfg.Cluster.EtcdMembers[i].Durable = tc.durable
			}
			cfg.Cluster.EtcdClusterID = tc.id
			if tc.restore {
				cfg.Cluster.EtcdRestore = &node.EtcdRestore{URL: "http://10.0.0.254:8080/x", SHA256: "00"}
			}
			p, err := e.Join(context.Background(), cfg, false)
			if tc.wantWait {
				if !errors.Is(err, ErrWait) || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("plan %+v, %v; want to wait: %s", p, err, tc.want)
				}
				return
			}
			if err != nil || p.State != "new" || !strings.Contains(p.Why, tc.want) || p.Restore != tc.restore {
				t.Errorf("plan %+v, %v; want %q", p, err, tc.want)
			}
		})
	}
}

// TestEveryStepARoleNamesIsImplemented: a role's units run
// `plinth-agent STEP` for each step its descriptor lists (checked in
// package role); each must be one this package provides.
func TestEveryStepARoleNamesIsImplemented(t *testing.T) {
	for _, n := range roles.Names() {
		for _, s := range roles.Get(n).Steps {
			if Steps[s] == nil {
				t.Errorf("role %s names the step %q, which plinth-agent does not have", n, s)
			}
		}
	}
}

func TestMountedTellsAMountPointFromADirectory(t *testing.T) {
	if err := mounted("/proc"); err != nil {
		t.Errorf("/proc: %v", err)
	}
	if err := mounted(t.TempDir()); err == nil || !strings.Contains(err.Error(), "is not mounted") {
		t.Errorf("a plain directory: %v", err)
	}
}
