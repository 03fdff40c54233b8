package bootserver

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/roles"
)

// The API servers reach kubelets as plinth:apiserver-kubelet-client, a
// user in no group; the boot server binds it to system:kubelet-api-admin
// once, through a master whose /readyz passes, as an admin it makes for
// that call alone (short-lived), and never again while it runs.
func TestTheBootServerBindsTheKubeletClientOnce(t *testing.T) {
	const every = 100 * time.Millisecond
	s, ca := caFixture(t, twoMasters, func(c *Config) { c.APICheckEvery, c.APICheckTimeout = every, time.Second })
	port := freePortOnBoth(t, "127.0.0.2", "127.0.0.3")
	s.apiPort = port
	cert := machineCert(t, ca, "node-2", "master", netip.MustParseAddr("127.0.0.2"))

	type call struct {
		cn, org string
		valid   time.Duration
		body    map[string]any
	}
	var (
		mu    sync.Mutex
		calls []call
	)
	ln, err := net.Listen("tcp", "127.0.0.2:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/readyz":
			w.Write([]byte("ok"))
		case r.Method == http.MethodPost && r.URL.Path == "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings" && len(r.TLS.PeerCertificates) > 0:
			c := r.TLS.PeerCertificates[0]
			var body map[string]any
			b, _ := io.ReadAll(r.Body)
			json.Unmarshal(b, &body)
			mu.Lock()
			calls = append(calls, call{c.Subject.CommonName, joinOrg(c.Subject.Organization), time.Until(c.NotAfter), body})
			n := len(calls)
			mu.Unlock()
			if n == 1 {
				w.WriteHeader(http.StatusCreated)
			} else {
				w.WriteHeader(http.StatusConflict)
			}
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
	waitFor(t, "the binding's POST", 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) > 0
	})
	time.Sleep(20 * every) // more check rounds: no second call
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 1 {
		t.Errorf("%d calls, want one", len(calls))
	}
	c := calls[0]
	if c.cn != roles.Admin.CommonName || c.org != "system:masters" || c.valid > kubeletBindingAuth || c.valid < time.Minute {
		t.Errorf("called as %s (%s), valid %s more: want a short-lived admin", c.cn, c.org, c.valid)
	}
	ref, _ := c.body["roleRef"].(map[string]any)
	subs, _ := c.body["subjects"].([]any)
	meta, _ := c.body["metadata"].(map[string]any)
	if ref["name"] != "system:kubelet-api-admin" || len(subs) != 1 || subs[0].(map[string]any)["name"] != "plinth:apiserver-kubelet-client" ||
		meta["name"] != roles.KubeletClientBinding || c.body["kind"] != "ClusterRoleBinding" {
		t.Errorf("posted %v", c.body)
	}
}

func joinOrg(o []string) string {
	if len(o) == 0 {
		return ""
	}
	return o[0]
}
