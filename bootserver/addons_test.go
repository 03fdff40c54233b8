package bootserver

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/roles"
)

// The boot server applies the cluster addons (the API servers' kubelet
// access, cluster DNS) through a master whose /readyz passes, with
// server-side apply, as an admin it makes for that round alone
// (short-lived); a round that fails is tried again, and once every object
// is applied it never calls again while it runs.
func TestTheBootServerAppliesTheClusterAddonsOnce(t *testing.T) {
	const every = 100 * time.Millisecond
	s, ca := caFixture(t, twoMasters, func(c *Config) { c.APICheckEvery, c.APICheckTimeout = every, time.Second })
	port := freePortOnBoth(t, "127.0.0.2", "127.0.0.3")
	s.apiPort = port
	cert := machineCert(t, ca, "node-2", "master", netip.MustParseAddr("127.0.0.2"))
	want, err := clusterAddons(s.snap.Load().site.Network.Services)
	if err != nil {
		t.Fatal(err)
	}

	type call struct {
		cn, org, path, query, ctype string
		valid                       time.Duration
		body                        map[string]any
	}
	var (
		mu      sync.Mutex
		calls   []call
		refused bool
	)
	ln, err := net.Listen("tcp", "127.0.0.2:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/readyz":
			w.Write([]byte("ok"))
		case r.Method == http.MethodPatch && len(r.TLS.PeerCertificates) > 0:
			c := r.TLS.PeerCertificates[0]
			var body map[string]any
			b, _ := io.ReadAll(r.Body)
			json.Unmarshal(b, &body)
			mu.Lock()
			defer mu.Unlock()
			// The first round's Deployment is refused: the round is tried again.
			if strings.HasSuffix(r.URL.Path, "/deployments/coredns") && !refused {
				refused = true
				http.Error(w, `{"kind":"Status","message":"etcdserver: request timed out"}`, http.StatusInternalServerError)
				return
			}
			calls = append(calls, call{c.Subject.CommonName, joinOrg(c.Subject.Organization), r.URL.Path, r.URL.RawQuery,
				r.Header.Get("Content-Type"), time.Until(c.NotAfter), body})
			w.WriteHeader(http.StatusCreated)
		default:
			http.Error(w, "forbidden", http.StatusForbidden)
		}
	}), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })

	serveInBackground(t, t.Context(), s)
	if code := report(t, s, "node-2", api.StageReady, "127.0.0.2", "", certOf(t, cert)); code != http.StatusOK {
		t.Fatalf("node-2 ready: %d", code)
	}
	// The first round stops at the Deployment; the second, addonRetry
	// later, applies everything.
	first := slices.IndexFunc(want, func(a addon) bool { return a.kind == "Deployment" })
	waitFor(t, "every addon applied", addonRetry+10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) >= first+len(want)
	})
	time.Sleep(20 * every) // more check rounds: no third
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != first+len(want) {
		t.Fatalf("%d calls, want %d (a failed round of %d, then all %d)", len(calls), first+len(want), first, len(want))
	}
	for i, c := range calls[first:] {
		if c.path != want[i].path {
			t.Errorf("call %d applied %s, want %s", first+i, c.path, want[i].path)
		}
		if c.cn != roles.Admin.CommonName || c.org != "system:masters" || c.valid > addonAuth || c.valid < time.Minute {
			t.Errorf("%s: called as %s (%s), valid %s more: want a short-lived admin", c.path, c.cn, c.org, c.valid)
		}
		if c.ctype != "application/apply-patch+yaml" || c.query != "fieldManager=plinth&force=true" {
			t.Errorf("%s: %s ?%s: want a forced server-side apply as plinth", c.path, c.ctype, c.query)
		}
	}
	byPath := map[string]map[string]any{}
	for _, c := range calls {
		byPath[c.path] = c.body
	}
	b := byPath["/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/"+roles.KubeletClientBinding]
	ref, _ := b["roleRef"].(map[string]any)
	subs, _ := b["subjects"].([]any)
	if ref["name"] != "system:kubelet-api-admin" || len(subs) != 1 || subs[0].(map[string]any)["name"] != "plinth:apiserver-kubelet-client" {
		t.Errorf("kubelet client binding: %v", b)
	}
	svc := byPath["/api/v1/namespaces/kube-system/services/kube-dns"]
	if spec, _ := svc["spec"].(map[string]any); spec["clusterIP"] != "10.96.0.10" {
		t.Errorf("kube-dns Service: %v, want clusterIP 10.96.0.10 (the tenth address of 10.96.0.0/12)", svc["spec"])
	}
}

// The addons name CoreDNS by the image the minion image carries, never
// pulled, and the cluster DNS address every kubelet is given.
func TestClusterAddonsRender(t *testing.T) {
	as, err := clusterAddons("10.32.0.0/16")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range as {
		got = append(got, a.String())
	}
	wantObjs := []string{"ClusterRoleBinding " + roles.KubeletClientBinding, "ServiceAccount kube-system/coredns",
		"ClusterRole system:coredns", "ClusterRoleBinding system:coredns", "ConfigMap kube-system/coredns",
		"Deployment kube-system/coredns", "Service kube-system/kube-dns"}
	if !slices.Equal(got, wantObjs) {
		t.Fatalf("addons %q, want %q", got, wantObjs)
	}
	dep := string(as[5].body)
	for _, s := range []string{`"image":"` + roles.CoreDNSImage + `"`, `"imagePullPolicy":"Never"`, `"serviceAccountName":"coredns"`, `"dnsPolicy":"Default"`} {
		if !strings.Contains(dep, s) {
			t.Errorf("Deployment lacks %s: %s", s, dep)
		}
	}
	if cm := string(as[4].body); !strings.Contains(cm, "kubernetes cluster.local in-addr.arpa") || !strings.Contains(cm, "forward . /etc/resolv.conf") {
		t.Errorf("Corefile: %s", cm)
	}
	if svc := string(as[6].body); !strings.Contains(svc, `"clusterIP":"10.32.0.10"`) {
		t.Errorf("Service: %s", svc)
	}
	if _, err := clusterAddons("10.32.0.0/29"); err == nil {
		t.Error("a /29 service network has no tenth address, yet the addons rendered")
	}
}

// Every file in addons/ is applied: one added without a place in
// addonFiles would be embedded and never reach the cluster.
func TestEveryAddonFileIsApplied(t *testing.T) {
	files, err := fs.Glob(addonFS, "addons/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	listed := slices.Sorted(slices.Values(addonFiles))
	if !slices.Equal(files, listed) {
		t.Errorf("addons/ holds %q, addonFiles applies %q", files, listed)
	}
}

func joinOrg(o []string) string {
	if len(o) == 0 {
		return ""
	}
	return o[0]
}
