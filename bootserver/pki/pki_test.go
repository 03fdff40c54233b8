package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/plinth-dev/plinth/bootserver/api"
	machinekeys "github.com/plinth-dev/plinth/initramfs/keys"
	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

func newCA(t *testing.T) (*CA, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	ca, created, err := LoadOrCreate(dir, "lab", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Fatal("first start did not create a CA")
	}
	return ca, dir
}

func parseCert(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate: %q", s)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFirstStartCreatesTheCAAndLaterStartsLoadTheSameOne(t *testing.T) {
	ca, dir := newCA(t)
	c := ca.Cert()
	if !c.IsCA || c.Subject.CommonName != "plinth site CA lab" {
		t.Errorf("CA subject %s, IsCA %v", c.Subject, c.IsCA)
	}
	if pk, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pk.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", c.PublicKey)
	}
	if years := c.NotAfter.Sub(c.NotBefore).Hours() / 24 / 365; years < 9.99 || years > 10.01 {
		t.Errorf("CA valid for %.2f years, want 10", years)
	}
	for f, want := range map[string]os.FileMode{KeyFile: 0o600, SAKeyFile: 0o600, CertFile: 0o644} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", f, st.Mode().Perm(), want)
		}
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %v, want 0700", st.Mode().Perm())
	}
	again, created, err := LoadOrCreate(dir, "lab", nil)
	if err != nil || created {
		t.Fatalf("second start: created=%v err=%v", created, err)
	}
	if !again.Cert().Equal(c) || again.saPEM != ca.saPEM {
		t.Error("second start has a different CA or service account key")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Errorf("state holds %d files, want 3 (no temp files left)", len(entries))
	}
}

func TestBrokenStateIsAnErrorNamingTheFileAndIsNeverReplaced(t *testing.T) {
	other, otherDir := newCA(t)
	_ = other
	otherKey, _ := os.ReadFile(filepath.Join(otherDir, KeyFile))
	for _, tc := range []struct {
		name   string
		break_ func(dir string)
		want   []string
	}{
		{"corrupt cert", func(d string) { os.WriteFile(filepath.Join(d, CertFile), []byte("garbage"), 0o644) }, []string{CertFile, "corrupt"}},
		{"truncated key", func(d string) {
			b, _ := os.ReadFile(filepath.Join(d, KeyFile))
			os.WriteFile(filepath.Join(d, KeyFile), b[:len(b)/2], 0o600)
		}, []string{KeyFile}},
		{"key of another CA", func(d string) { os.WriteFile(filepath.Join(d, KeyFile), otherKey, 0o600) }, []string{KeyFile, "does not match", CertFile}},
		{"service account key missing", func(d string) { os.Remove(filepath.Join(d, SAKeyFile)) }, []string{"incomplete", SAKeyFile, "missing"}},
		{"unreadable cert", func(d string) { os.Remove(filepath.Join(d, CertFile)); os.Mkdir(filepath.Join(d, CertFile), 0o700) }, []string{CertFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, dir := newCA(t)
			tc.break_(dir)
			before := snapshot(dir)
			_, _, err := LoadOrCreate(dir, "lab", nil)
			if err == nil {
				t.Fatal("a broken state loaded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if after := snapshot(dir); after != before {
				t.Error("the broken state was changed")
			}
		})
	}
}

func snapshot(dir string) string {
	var sb strings.Builder
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		sb.WriteString(e.Name() + "=" + string(b) + "\n")
	}
	return sb.String()
}

func TestStateDirDefaultsToXDGAndStaysOutOfTheSite(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "/var/tmp/xdg")
	if d, err := DefaultStateDir("lab"); err != nil || d != "/var/tmp/xdg/plinth/lab" {
		t.Errorf("DefaultStateDir = %q, %v", d, err)
	}
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/op")
	if d, err := DefaultStateDir("lab"); err != nil || d != "/home/op/.local/state/plinth/lab" {
		t.Errorf("DefaultStateDir without XDG = %q, %v", d, err)
	}
	if _, err := DefaultStateDir("../x"); err == nil {
		t.Error("a site name with a slash named a state directory")
	}
	site := t.TempDir()
	for _, in := range []string{site, filepath.Join(site, "state"), filepath.Join(site, "a", "..", "b")} {
		if err := CheckOutside(in, site); err == nil || !strings.Contains(err.Error(), "inside the site") {
			t.Errorf("CheckOutside(%s) = %v, want an error", in, err)
		}
	}
	for _, out := range []string{filepath.Join(site, "..", "state"), site + "-state"} {
		if err := CheckOutside(out, site); err != nil {
			t.Errorf("CheckOutside(%s) = %v", out, err)
		}
	}
}

func master(name string) *node.Config {
	return &node.Config{Machine: name, Hostname: name, Domain: "lab.example", Role: "master",
		Cluster: &node.Cluster{Name: "lab", APIName: "api.lab.example", ServiceCIDR: "10.96.0.0/12", APIPort: 6443}}
}

// verify checks a certificate chains to the CA for the given use and that
// the key is the certificate's.
func verify(t *testing.T, ca *CA, kp node.KeyPair, usage x509.ExtKeyUsage) *x509.Certificate {
	t.Helper()
	c := parseCert(t, kp.Cert)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(ca.CertPEM()))
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		t.Errorf("%s for %v: %v", c.Subject, usage, err)
	}
	if _, err := tls.X509KeyPair([]byte(kp.Cert), []byte(kp.Key)); err != nil {
		t.Errorf("%s: key does not go with the certificate: %v", c.Subject, err)
	}
	if d := c.NotAfter.Sub(c.NotBefore); d < Validity || d > Validity+time.Hour {
		t.Errorf("%s valid for %v", c.Subject, d)
	}
	if c.NotBefore.After(time.Now().Add(-5 * time.Minute)) {
		t.Errorf("%s not backdated: NotBefore %v", c.Subject, c.NotBefore)
	}
	return c
}

func TestMachineCertificatesCarryTheNamesAndUsesTheirRoleNeeds(t *testing.T) {
	ca, _ := newCA(t)
	addr := netip.MustParseAddr("10.77.0.21")
	m, err := forMachine(t, ca, master("master-1"), addr)
	if err != nil {
		t.Fatal(err)
	}
	c := verify(t, ca, node.KeyPair{Cert: m.Cert, Key: m.Key}, x509.ExtKeyUsageServerAuth)
	verify(t, ca, node.KeyPair{Cert: m.Cert, Key: m.Key}, x509.ExtKeyUsageClientAuth)
	if c.Subject.CommonName != "master-1" {
		t.Errorf("CN %q", c.Subject.CommonName)
	}
	for _, h := range []string{"master-1", "master-1.lab.example", "localhost", "api.lab.example", "kubernetes", "kubernetes.default",
		"kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.77.0.21", "127.0.0.1", "10.96.0.1"} {
		if err := c.VerifyHostname(h); err != nil {
			t.Errorf("master cert: %v", err)
		}
	}
	if m.CA != ca.CertPEM() {
		t.Error("TLS.CA is not the site CA")
	}
	if _, ok := m.Identities[node.IdentityAdmin]; ok {
		t.Error("a master got the admin identity")
	}
	for id, cn := range map[string]string{node.IdentityControllerManager: "system:kube-controller-manager", node.IdentityScheduler: "system:kube-scheduler",
		node.IdentityKubeletClient: "plinth:apiserver-kubelet-client", node.IdentityFrontProxy: "plinth:front-proxy",
		node.IdentityEtcdAPIServer: "plinth:etcd-kube-apiserver", node.IdentityEtcdFlannel: "plinth:etcd-flannel"} {
		c := verify(t, ca, m.Identities[id], x509.ExtKeyUsageClientAuth)
		if c.Subject.CommonName != cn || len(c.Subject.Organization) != 0 {
			t.Errorf("%s subject %s, want CN %s and no group (not system:masters)", id, c.Subject, cn)
		}
	}
	if len(m.Identities) != 6 {
		t.Errorf("master identities %v, want kubelet-client, front-proxy, controller-manager, scheduler, etcd-apiserver, etcd-flannel", keys(m.Identities))
	}
	m2, _ := forMachine(t, ca, master("master-2"), netip.MustParseAddr("10.77.0.22"))
	if m.ServiceAccountKey == "" || m.ServiceAccountKey != m2.ServiceAccountKey {
		t.Error("masters do not share one service account key")
	}
	if m.Key == m2.Key {
		t.Error("two masters got the same key")
	}

	minion := &node.Config{Machine: "minion-1", Hostname: "minion-1", Domain: "lab.example", Role: "minion",
		Cluster: &node.Cluster{Name: "lab", APIName: "api.lab.example", ServiceCIDR: "10.96.0.0/12"}}
	n, err := forMachine(t, ca, minion, netip.MustParseAddr("10.77.0.31"))
	if err != nil {
		t.Fatal(err)
	}
	nc := verify(t, ca, node.KeyPair{Cert: n.Cert, Key: n.Key}, x509.ExtKeyUsageServerAuth)
	if nc.VerifyHostname("api.lab.example") == nil || nc.VerifyHostname("10.96.0.1") == nil {
		t.Error("a minion's certificate is good for the API")
	}
	if n.ServiceAccountKey != "" {
		t.Error("a minion got the service account key")
	}
	kubelet := verify(t, ca, n.Identities[node.IdentityKubelet], x509.ExtKeyUsageClientAuth)
	if kubelet.Subject.CommonName != "system:node:minion-1" || !slices.Equal(kubelet.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("kubelet subject %s", kubelet.Subject)
	}
	proxy := verify(t, ca, n.Identities[node.IdentityKubeProxy], x509.ExtKeyUsageClientAuth)
	if proxy.Subject.CommonName != "system:kube-proxy" {
		t.Errorf("kube-proxy subject %s", proxy.Subject)
	}
	if _, ok := n.Identities[node.IdentityAdmin]; ok {
		t.Error("a minion got the admin identity")
	}
	if fl := verify(t, ca, n.Identities[node.IdentityEtcdFlannel], x509.ExtKeyUsageClientAuth); fl.Subject.CommonName != "plinth:etcd-flannel" {
		t.Errorf("a minion's flannel identity is %s", fl.Subject)
	}
	if len(n.Identities) != 3 {
		t.Errorf("minion identities %v, want kubelet, kube-proxy, etcd-flannel", keys(n.Identities))
	}

	etcd := &node.Config{Machine: "etcd-1", Hostname: "etcd-1", Domain: "lab.example", Role: "etcd"}
	e, err := forMachine(t, ca, etcd, netip.MustParseAddr("10.77.0.11"))
	if err != nil {
		t.Fatal(err)
	}
	ec := verify(t, ca, node.KeyPair{Cert: e.Cert, Key: e.Key}, x509.ExtKeyUsageClientAuth)
	if ec.VerifyHostname("10.77.0.11") != nil || ec.VerifyHostname("etcd-1.lab.example") != nil {
		t.Errorf("etcd cert names %v %v", ec.DNSNames, ec.IPAddresses)
	}
	if len(e.Identities) != 1 || e.ServiceAccountKey != "" {
		t.Errorf("an etcd member got identities %v", keys(e.Identities))
	}
	if em := verify(t, ca, e.Identities[node.IdentityEtcdMember], x509.ExtKeyUsageClientAuth); em.Subject.CommonName != "plinth:etcd-member" {
		t.Errorf("an etcd member's etcd identity is %s", em.Subject)
	}

	if none, err := forMachine(t, ca, &node.Config{Machine: "x", Hostname: "x"}, addr); none != nil || err != nil {
		t.Errorf("a machine without a role got TLS: %v %v", none, err)
	}
}

func keys(m map[string]node.KeyPair) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestCredentialsGiveAWorkingAdminKubeconfig(t *testing.T) {
	ca, _ := newCA(t)
	out := filepath.Join(t.TempDir(), "creds")
	paths, err := ca.WriteCredentials(out, "lab", "https://api.lab.example:6443")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 4 {
		t.Fatalf("wrote %v", paths)
	}
	for f, want := range map[string]os.FileMode{AdminKeyFile: 0o600, KubeconfigFile: 0o600, AdminCertFile: 0o644, CertFile: 0o644} {
		st, err := os.Stat(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", f, st.Mode().Perm(), want)
		}
	}
	cert, _ := os.ReadFile(filepath.Join(out, AdminCertFile))
	key, _ := os.ReadFile(filepath.Join(out, AdminKeyFile))
	c := verify(t, ca, node.KeyPair{Cert: string(cert), Key: string(key)}, x509.ExtKeyUsageClientAuth)
	if c.Subject.CommonName != "plinth:admin" || !slices.Equal(c.Subject.Organization, []string{"system:masters"}) {
		t.Errorf("admin subject %s", c.Subject)
	}
	raw, _ := os.ReadFile(filepath.Join(out, KubeconfigFile))
	var kc struct {
		Clusters []struct {
			Name    string
			Cluster struct {
				Server string
				CA     string `yaml:"certificate-authority-data"`
			}
		}
		Users []struct {
			Name string
			User struct {
				Cert string `yaml:"client-certificate-data"`
				Key  string `yaml:"client-key-data"`
			}
		}
		Contexts []struct {
			Name    string
			Context struct{ Cluster, User string }
		}
		Current string `yaml:"current-context"`
	}
	if err := yaml.Unmarshal(raw, &kc); err != nil {
		t.Fatalf("kubeconfig is not YAML: %v\n%s", err, raw)
	}
	if len(kc.Clusters) != 1 || kc.Clusters[0].Cluster.Server != "https://api.lab.example:6443" || kc.Current != "lab" ||
		len(kc.Contexts) != 1 || kc.Contexts[0].Context.Cluster != "lab" || len(kc.Users) != 1 || kc.Contexts[0].Context.User != kc.Users[0].Name {
		t.Fatalf("kubeconfig %+v", kc)
	}
	dec := func(s string) []byte {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if !bytes.Equal(dec(kc.Clusters[0].Cluster.CA), []byte(ca.CertPEM())) || !bytes.Equal(dec(kc.Users[0].User.Cert), cert) || !bytes.Equal(dec(kc.Users[0].User.Key), key) {
		t.Error("kubeconfig does not embed the files it was written with")
	}
	if _, err := ca.WriteCredentials(out, "lab", "http://api:6443"); err == nil {
		t.Error("a plain-HTTP API server was accepted")
	}
}

// Only the boot server's certificate carries the name machines check it by.
func TestIssueRefusesTheBootServerName(t *testing.T) {
	ca, _, err := LoadOrCreate(t.TempDir(), "lab", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{api.BootServerSAN, "BOOT-SERVER.plinth.invalid."} {
		if _, err := ca.Issue(Request{CommonName: "evil", DNSNames: []string{"evil.lab", n}, Server: true}); err == nil {
			t.Errorf("Issue with %s: no error", n)
		}
	}
	kp, err := ca.BootServer(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode([]byte(kp.Cert))
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil || c.VerifyHostname(api.BootServerSAN) != nil {
		t.Errorf("the boot server's certificate is not for %s: %v %v", api.BootServerSAN, err, c.DNSNames)
	}
}

// forMachine is what a machine goes through: keys made as stage 1 makes
// them, their requests certified, the answer filled in with the keys.
func forMachine(t *testing.T, ca *CA, c *node.Config, addr netip.Addr) (*node.TLS, error) {
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
	if tl != nil && tl.Key != "" {
		t.Errorf("%s: the CA's answer carries a private key", c.Machine)
	}
	return tl, k.Fill(tl, c.Machine)
}

// A machine's request is worth its public key and nothing else: what it
// asks for (a system:masters subject, the API name) is not what it gets;
// a request not signed by its own key (someone else's public key), a key
// of another kind or a missing request is refused, naming what is wrong;
// the service-account key opens only with the requester's own HPKE key.
func TestCertifyTakesOnlyTheKeyFromARequest(t *testing.T) {
	ca, _ := newCA(t)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := func(k any, tmpl *x509.CertificateRequest) string {
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, k)
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	}
	greedy := csr(k, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "plinth:admin", Organization: []string{"system:masters"}},
		DNSNames: []string{"api.lab.example", api.BootServerSAN}})
	cert, err := ca.Certify(Request{CommonName: "system:kube-proxy", Client: true}, greedy)
	if err != nil {
		t.Fatal(err)
	}
	c := parseCert(t, cert)
	if c.Subject.CommonName != "system:kube-proxy" || len(c.Subject.Organization) != 0 || len(c.DNSNames) != 0 {
		t.Errorf("certified %s %v: the request's subject or names leaked in", c.Subject, c.DNSNames)
	}
	if !c.PublicKey.(*ecdsa.PublicKey).Equal(&k.PublicKey) {
		t.Error("the certificate is not for the request's key")
	}

	// Someone else's public key in a request signed by another key.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b, _ := pem.Decode([]byte(csr(other, &x509.CertificateRequest{})))
	forged := bytes.Replace(b.Bytes, mustMarshalPub(t, &other.PublicKey), mustMarshalPub(t, &k.PublicKey), 1)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	for name, tc := range map[string]struct{ csr, want string }{
		"forged":  {string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: forged})), "not signed by its key"},
		"rsa":     {csr(rsaKey, &x509.CertificateRequest{}), "only ECDSA P-256"},
		"key":     {string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte("x")})), "not one PEM CERTIFICATE REQUEST"},
		"nothing": {"", "not one PEM CERTIFICATE REQUEST"},
	} {
		if _, err := ca.Certify(Request{CommonName: "x", Client: true}, tc.csr); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}

	mk, _ := machinekeys.New(roles.IdentityNames())
	req, _ := mk.Requests("master-1")
	delete(req.Identities, node.IdentityScheduler)
	if _, err := ca.ForMachine(master("master-1"), netip.Addr{}, req); err == nil || !strings.Contains(err.Error(), `identity "scheduler"`) {
		t.Errorf("a request without the scheduler's key: %v", err)
	}

	// The sealed service-account key: another machine's keys cannot open
	// it, nor can the same keys under another machine's name.
	req, _ = mk.Requests("master-1")
	tl, err := ca.ForMachine(master("master-1"), netip.Addr{}, req)
	if err != nil {
		t.Fatal(err)
	}
	if tl.ServiceAccountKey != "" || strings.Contains(tl.SealedServiceAccountKey, "PRIVATE") {
		t.Fatal("the service-account key went out in the clear")
	}
	thief, _ := machinekeys.New(roles.IdentityNames())
	stolen := *tl
	if err := thief.Fill(&stolen, "master-1"); err == nil {
		t.Error("another machine's keys filled in master-1's answer")
	}
	renamed := *tl
	renamed.Identities = nil
	renamed.Cert = ""
	if err := mk.Fill(&renamed, "master-2"); err == nil || !strings.Contains(err.Error(), "sealed service-account key") {
		t.Errorf("opened under another machine's name: %v", err)
	}
	if err := mk.Fill(tl, "master-1"); err != nil || !strings.Contains(tl.ServiceAccountKey, "PRIVATE KEY") {
		t.Errorf("master-1 cannot open its own: %v", err)
	}
}

func mustMarshalPub(t *testing.T, k *ecdsa.PublicKey) []byte {
	t.Helper()
	b, err := k.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// etcd takes a client certificate named root as its root user: the CA
// never issues one, whatever asks.
func TestNoClientCertificateIsNamedAsEtcdsRootUser(t *testing.T) {
	ca, _, err := LoadOrCreate(t.TempDir(), "lab", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Issue(Request{CommonName: roles.EtcdRootUser, Client: true}); err == nil {
		t.Error("Issue: a client certificate named root")
	}
	c := &node.Config{Machine: "root", Hostname: "root", Role: "etcd"}
	if tls, err := forMachine(t, ca, c, netip.MustParseAddr("10.77.0.11")); err == nil {
		t.Errorf("a machine called root got a certificate: %v", tls != nil)
	}
}
