package qemutests

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/plinth-dev/plinth/bootserver/pki"
	"github.com/plinth-dev/plinth/profiles"
	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// frontProxyOnly shows who may tell a master's API server who a caller
// is. Requests kube-apiserver proxies to an aggregated API server carry the
// caller in X-Remote-User and X-Remote-Group headers, and every API server
// believes those headers from the front-proxy certificate only — while
// the site CA issues every machine's certificates. The attack: a minion's
// kubelet certificate (what a taken minion holds) says it is plinth:admin
// in system:masters; the API server still sees the kubelet. The same
// request with the masters' front-proxy identity is believed, so the
// headers are live and it is the certificate that makes the difference.
func (sc *scenario) frontProxyOnly(t *testing.T, ctx context.Context, master *profiles.Machine) {
	t.Helper()
	ca, err := pki.Load(sc.state)
	if err != nil {
		t.Fatal(err)
	}
	identity := func(role, name string) roles.Identity {
		i := slices.IndexFunc(roles.Get(role).TLS.Identities, func(id roles.Identity) bool { return id.Name == name })
		if i < 0 {
			t.Fatalf("role %s has no identity %s", role, name)
		}
		return roles.Get(role).TLS.Identities[i]
	}
	whoami := func(id roles.Identity, host string) (user string, groups []string) {
		kp, err := ca.Issue(pki.Request{CommonName: id.Subject(host), Organization: id.Organization, Client: true})
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		writeFile(t, cert, kp.Cert)
		if err := os.WriteFile(key, []byte(kp.Key), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := inLab(ctx, sc.c.Lab, "curl", "-sS", "--fail-with-body", "--max-time", "30",
			"--cacert", filepath.Join(sc.cred, "ca.pem"), "--cert", cert, "--key", key,
			"-H", "X-Remote-User: plinth:admin", "-H", "X-Remote-Group: system:masters",
			"-H", "Content-Type: application/json", "-d", `{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`,
			"https://"+ip(master)+":6443/apis/authentication.k8s.io/v1/selfsubjectreviews")
		if err != nil {
			t.Fatalf("SelfSubjectReview as %s: %v\n%s", id.Subject(host), err, out)
		}
		var r struct {
			Status struct {
				UserInfo struct {
					Username string   `json:"username"`
					Groups   []string `json:"groups"`
				} `json:"userInfo"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("SelfSubjectReview as %s: %v\n%s", id.Subject(host), err, out)
		}
		return r.Status.UserInfo.Username, r.Status.UserInfo.Groups
	}
	minion := sc.ofRole("minion")[0]
	kubelet := identity("minion", node.IdentityKubelet)
	user, groups := whoami(kubelet, minion.Hostname)
	t.Logf("a kubelet certificate with X-Remote-User plinth:admin, X-Remote-Group system:masters: the API server sees %s %v", user, groups)
	if user != kubelet.Subject(minion.Hostname) || slices.Contains(groups, "system:masters") {
		t.Errorf("a kubelet's certificate made itself %s %v with X-Remote-* headers; want %s, not in system:masters",
			user, groups, kubelet.Subject(minion.Hostname))
	}
	user, groups = whoami(roles.FrontProxy, master.Hostname)
	t.Logf("the front-proxy certificate with the same headers: the API server sees %s %v", user, groups)
	if user != "plinth:admin" || !slices.Contains(groups, "system:masters") {
		t.Errorf("the front-proxy certificate's X-Remote-* headers were not believed (user %s %v): the aggregation layer cannot pass callers on", user, groups)
	}
}
