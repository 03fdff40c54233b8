package siteetcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/plinth-dev/plinth/bootserver/pki"
	"github.com/plinth-dev/plinth/bootserver/siteetcd/etcdtest"
	"github.com/plinth-dev/plinth/internal/etcdrpc"
)

// TestTheClientPresentsAClientOnlyCertificateFromTheSiteCA: a member that,
// like etcd with --client-cert-auth, takes only clients the site CA
// certified answers the boot server's client.
func TestTheClientPresentsAClientOnlyCertificateFromTheSiteCA(t *testing.T) {
	ca, _, err := pki.LoadOrCreate(filepath.Join(t.TempDir(), "state"), "lab", nil)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := ca.Issue(pki.Request{CommonName: "etcd-1", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Server: true, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := tls.X509KeyPair([]byte(kp.Cert), []byte(kp.Key))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert())
	fake := etcdtest.New(t, 0x1234, 1) // its handler, behind TLS here
	var peer *x509.Certificate
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer = r.TLS.PeerCertificates[0]
		fake.ServeHTTP(w, r)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()

	c, err := NewClient(ca)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(context.Background(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if st.ClusterID != "1234" || st.MemberID != "1" || st.Leader != "1" || st.Version != "3.6.16" || !st.Healthy() {
		t.Errorf("status %+v", st)
	}
	if peer.Subject.CommonName != ClientCN || !slices.Equal(peer.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("client certificate CN %q, usages %v", peer.Subject.CommonName, peer.ExtKeyUsage)
	}
	// Without a certificate the member refuses.
	if _, err := (&Client{RPC: etcdrpc.New(&tls.Config{RootCAs: pool})}).Status(context.Background(), srv.URL); err == nil {
		t.Error("a client without a certificate was answered")
	}
}

func TestClientURLIsHTTPSOnTheClientPort(t *testing.T) {
	for addr, want := range map[string]string{
		"10.77.0.11":         "https://10.77.0.11:2379",
		"etcd-1.lab.example": "https://etcd-1.lab.example:2379",
		"fd00::11":           "https://[fd00::11]:2379",
	} {
		if got := ClientURL(addr); got != want {
			t.Errorf("ClientURL(%q) = %q, want %q", addr, got, want)
		}
	}
}

func TestStatusWithAnAlarmIsNotHealthy(t *testing.T) {
	m := etcdtest.New(t, 0x1234, 1)
	m.Set(func(s *etcdtest.State) { s.Alarms = []string{"memberID:1 alarm:NOSPACE"} })
	st, err := plainClient().Status(context.Background(), m.URL())
	if err != nil {
		t.Fatal(err)
	}
	if st.Healthy() {
		t.Errorf("%+v is healthy", st)
	}
}
