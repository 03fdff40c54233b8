package bootserver

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/bootserver/pki"
	machinekeys "github.com/plinth-dev/plinth/initramfs/keys"
	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// lockedBuffer collects the server's log lines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func withCA(t *testing.T, s *Server) (*pki.CA, *lockedBuffer) {
	t.Helper()
	ca, _, err := pki.LoadOrCreate(filepath.Join(t.TempDir(), "state"), "lab", nil)
	if err != nil {
		t.Fatal(err)
	}
	s.cfg.CA = ca
	logs := &lockedBuffer{}
	s.log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return ca, logs
}

// requestProfile asks for machine's profile as stage 1 does: keys made
// here, their certificate requests POSTed from remote.
func requestProfile(t *testing.T, h http.Handler, remote, machine string, hdr ...string) (*httptest.ResponseRecorder, *machinekeys.Set) {
	t.Helper()
	k, err := machinekeys.New(roles.IdentityNames())
	if err != nil {
		t.Fatal(err)
	}
	req, err := k.Requests(machine)
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodPost, api.ProfilePath(machine), bytes.NewReader([]byte(mustJSON(t, req))))
	r.RemoteAddr = remote + ":40000"
	r.Host = "10.77.0.1:8080"
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w, k
}

// profileOf is machine's profile as stage 1 ends up with it: requested
// with its own keys, checked to carry no private key, filled with them.
func profileOf(t *testing.T, s *Server, machine, from string) *node.Config {
	t.Helper()
	w, k := requestProfile(t, s.Handler(), from, machine)
	if w.Code != http.StatusOK {
		t.Fatalf("%s: %d %s", machine, w.Code, w.Body)
	}
	if cc := w.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("profile Cache-Control %q, want no-store", cc)
	}
	if strings.Contains(w.Body.String(), "PRIVATE KEY") {
		t.Fatalf("%s: the profile response carries a private key", machine)
	}
	c, err := node.Decode(w.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Fill(c.TLS, machine); err != nil {
		t.Fatalf("%s: %v", machine, err)
	}
	return c
}

func leaf(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatalf("no PEM in %q", s)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestProfileCarriesCertificatesForThatMachineOnly(t *testing.T) {
	s, _ := fixture(t, "none")
	ca, logs := withCA(t, s)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert())

	// node-2: a master with a static address, asking from it.
	m := profileOf(t, s, "node-2", "10.77.0.12")
	if m.TLS == nil || m.TLS.Key == "" || m.TLS.ServiceAccountKey == "" {
		t.Fatalf("master TLS %+v", m.TLS)
	}
	mc := leaf(t, m.TLS.Cert)
	if _, err := mc.Verify(x509.VerifyOptions{Roots: roots, DNSName: "api.lab.example", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("master certificate for the API name: %v", err)
	}
	for _, h := range []string{"node-2", "node-2.lab.example", "10.77.0.12", "10.96.0.1", "kubernetes.default.svc"} {
		if err := mc.VerifyHostname(h); err != nil {
			t.Errorf("master: %v", err)
		}
	}
	if _, ok := m.TLS.Identities[node.IdentityKubeletClient]; !ok {
		t.Error("master has no kubelet-client identity")
	}
	for id, kp := range m.TLS.Identities {
		if c := leaf(t, kp.Cert); slices.Contains(c.Subject.Organization, "system:masters") {
			t.Errorf("a master's %s identity is in system:masters", id)
		}
	}

	// node-1: a minion on DHCP: its certificate names the address it asked from.
	n := profileOf(t, s, "node-1", "10.77.0.100")
	nc := leaf(t, n.TLS.Cert)
	if err := nc.VerifyHostname("10.77.0.100"); err != nil {
		t.Errorf("minion: %v", err)
	}
	if nc.VerifyHostname("api.lab.example") == nil {
		t.Error("a minion's certificate is good for the API name")
	}
	if k := leaf(t, n.TLS.Identities[node.IdentityKubelet].Cert); k.Subject.CommonName != "system:node:node-1" {
		t.Errorf("kubelet CN %q", k.Subject.CommonName)
	}
	if n.TLS.ServiceAccountKey != "" {
		t.Error("a minion got the service account key")
	}

	// No key of one machine is in another's response, and none is in
	// anything else the server shows or logs.
	secrets := []string{m.TLS.Key, m.TLS.ServiceAccountKey, m.TLS.Identities[node.IdentityKubeletClient].Key}
	for _, kp := range n.TLS.Identities {
		secrets = append(secrets, kp.Key)
	}
	secrets = append(secrets, n.TLS.Key)
	n2 := profileOf(t, s, "node-1", "10.77.0.100")
	shown := map[string]string{
		"node-1's profile":  mustJSON(t, n2),
		"/v1/machines":      getFrom(s.Handler(), "10.77.0.5", api.PathMachines).Body.String(),
		"status page":       getFrom(s.Handler(), "10.77.0.5", "/").Body.String(),
		"metrics":           getFrom(s.Handler(), "10.77.0.5", "/metrics").Body.String(),
		"the server's logs": logs.String(),
	}
	for where, text := range shown {
		for _, k := range secrets {
			body := strings.Split(strings.TrimSpace(k), "\n")[1] // a line of the key itself
			if strings.Contains(text, body) {
				t.Errorf("%s holds a key issued earlier", where)
			}
		}
		if where != "node-1's profile" && strings.Contains(text, "PRIVATE KEY") {
			t.Errorf("%s shows a private key", where)
		}
	}
	if !strings.Contains(logs.String(), "certificates issued") {
		t.Errorf("issuing is not logged: %s", logs)
	}
}

func TestProfileOfAMachineWithoutARoleHasNoTLS(t *testing.T) {
	s, _ := fixture(t, "none")
	withCA(t, s)
	s.snap.Load().site.Machine("node-1").Role = ""
	if c := profileOf(t, s, "node-1", "10.77.0.100"); c.TLS != nil {
		t.Errorf("a machine without a role got TLS: %+v", c.TLS)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A host the site's [default] boots — anyone can plug one into the rack —
// gets its image and a profile but no certificate (none for etcd, none
// for the cluster) until the operator adds it to the site.
func TestAMachineBootedByTheDefaultGetsNoCredentialsUntilApproved(t *testing.T) {
	const mac = "52:54:00:00:00:77"
	site := strings.Replace(siteTOML, "%s", "none", 1) + "\n[default]\naction = \"boot\"\nrole = \"minion\"\nimage = \"img\"\n"
	s, _ := caFixture(t, site, nil)
	h := s.Handler()
	if w := get(t, h, api.PathBootScript+"?mac="+mac); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "kernel ") {
		t.Fatalf("the default did not boot it: %d\n%s", w.Code, w.Body)
	}
	name := "m-525400000077"
	w, _ := requestProfile(t, h, "10.77.0.100", name)
	if w.Code != http.StatusOK {
		t.Fatalf("profile: %d %s", w.Code, w.Body)
	}
	if b := w.Body.String(); strings.Contains(b, "PRIVATE KEY") || strings.Contains(b, "BEGIN CERTIFICATE") && !strings.Contains(b, `"ca"`) {
		t.Fatalf("an unapproved machine got credentials:\n%s", b)
	}
	c, err := node.Decode(w.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS != nil && len(c.TLS.Identities) > 0 {
		t.Fatalf("an unapproved machine got identities: %+v", c.TLS.Identities)
	}
	if st, _ := s.state.get(name); !strings.Contains(st.LastEvent, "awaiting approval") {
		t.Errorf("the status does not say it awaits approval: %q", st.LastEvent)
	}

	// Approved: the operator adds it to the site; its next boot gets them.
	siteFile := filepath.Join(s.cfg.SiteDir, "site.toml")
	approved := site + "\n[[machine]]\nname = \"" + name + "\"\nmac = \"" + mac + "\"\nrole = \"minion\"\nimage = \"img\"\n"
	if err := os.WriteFile(siteFile, []byte(approved), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	get(t, h, api.PathBootScript+"?mac="+mac)
	c = profileOf(t, s, name, "10.77.0.100")
	if c.TLS == nil || len(c.TLS.Identities) == 0 {
		t.Fatal("the approved machine got no certificates")
	}
}

// issuedTo is the TLS material a machine ends up with: keys made as stage
// 1 makes them, certified by ca, filled in.
func issuedTo(t *testing.T, ca *pki.CA, c *node.Config, addr netip.Addr) (*node.TLS, error) {
	t.Helper()
	k, err := machinekeys.New(roles.IdentityNames())
	if err != nil {
		t.Fatal(err)
	}
	req, err := k.Requests(c.Machine)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := ca.ForMachine(c, addr, req)
	if err != nil {
		return nil, err
	}
	return tl, k.Fill(tl, c.Machine)
}

// No response of the boot server carries a private key, for any machine,
// whoever asks and however: the profile of a master (the case that once
// held a system:masters key, the service-account key and an API server
// certificate) fetched by an outsider with GET has no certificate at all;
// asked as stage 1 asks, it has certificates for the asker's own keys and
// the service-account key only sealed to the asker's HPKE key; a request
// without keys, with someone else's key, or with a key as "request" is
// refused, and no refusal echoes a key either.
func TestNoResponseCarriesAPrivateKey(t *testing.T) {
	s, _ := fixture(t, "none")
	withCA(t, s)
	h := s.Handler()
	post := func(machine, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, api.ProfilePath(machine), strings.NewReader(body))
		r.RemoteAddr, r.Host = "10.77.0.66:40000", "10.77.0.1:8080"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	k, _ := machinekeys.New(roles.IdentityNames())
	req, _ := k.Requests("node-2")
	forged := *req
	forged.Node = strings.Replace(req.Node, "REQUEST-----\n", "REQUEST-----\nAAAA", 1)
	keyAsRequest := *req
	keyAsRequest.Node = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"
	for _, machine := range []string{"node-1", "node-2"} {
		for name, w := range map[string]*httptest.ResponseRecorder{
			"GET by an outsider":             getFrom(h, "10.77.0.66", api.ProfilePath(machine)),
			"POST as stage 1":                func() *httptest.ResponseRecorder { w, _ := requestProfile(t, h, "10.77.0.66", machine); return w }(),
			"POST without keys":              post(machine, `{}`),
			"POST with a broken request":     post(machine, mustJSON(t, &forged)),
			"POST with a key as its request": post(machine, mustJSON(t, &keyAsRequest)),
			"POST of garbage":                post(machine, `{"node":`),
		} {
			body := w.Body.String()
			if strings.Contains(body, "PRIVATE KEY") {
				t.Errorf("%s, %s: %d, the response carries a private key", machine, name, w.Code)
			}
			wantOK := name == "GET by an outsider" || name == "POST as stage 1"
			if wantOK != (w.Code == http.StatusOK) {
				t.Errorf("%s, %s: %d %s", machine, name, w.Code, body)
			}
			if name == "GET by an outsider" && strings.Contains(body, "BEGIN CERTIFICATE-----") && strings.Contains(body, `"cert"`) {
				t.Errorf("%s: a GET got certificates", machine)
			}
		}
	}
}
