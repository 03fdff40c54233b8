package stage1

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/bootserver/pki"
	"github.com/plinth-dev/plinth/internal/testutil"
	"github.com/plinth-dev/plinth/profiles/node"
)

// withHTTPS adds to b an HTTPS listener on loopback with a certificate of
// ca (chain: the leaf, then the CA, as plinth serve sends it).
func withHTTPS(t *testing.T, b *bootServer, ca *pki.CA) string {
	t.Helper()
	kp, err := ca.BootServer(nil, []netip.Addr{netip.MustParseAddr("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair([]byte(kp.Cert), []byte(kp.Key))
	if err != nil {
		t.Fatal(err)
	}
	cert.Certificate = append(cert.Certificate, ca.Cert().Raw)
	srv := httptest.NewUnstartedServer(b.Config.Handler)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

func profileWithCA(t *testing.T, caPEM string) string {
	t.Helper()
	b, err := json.Marshal(&node.Config{Version: node.SchemaVersion, Machine: "m1", Hostname: "node-one", Cluster: &node.Cluster{Name: "lab"}, TLS: &node.TLS{CA: caPEM}})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// With plinth.tls and plinth.ca on the command line, the profile and the
// reports go over HTTPS to a server the pinned CA vouches for; the rootfs
// still comes over HTTP, checked by its digest.
func TestRunNetbootFetchesTheProfileOverHTTPSFromThePinnedCA(t *testing.T) {
	ca := testutil.NewCA(t)
	rootfs := []byte(strings.Repeat("squash", 1000))
	srv := newBootServer(t, profileWithCA(t, ca.CertPEM()), rootfs)
	tlsURL := withHTTPS(t, srv, ca)
	m := &fakeMachine{cmdline: fmt.Sprintf("plinth.server=%s plinth.machine=m1 plinth.rootfs=%s plinth.token=tok plinth.tls=%s plinth.ca=%s",
		srv.URL, digestOf(rootfs), tlsURL, api.CAFingerprint(ca.Cert().Raw))}
	s, out := newStage1(t, m, t.TempDir())
	if err := s.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "switched (fake)") {
		t.Fatalf("Run = %v\n%s", err, out)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.tlsProfiles != 1 || len(srv.tokens) != 1 || srv.tokens[0] != "tok" {
		t.Errorf("profile requests over TLS %d of %d (tokens %q), want the one", srv.tlsProfiles, len(srv.tokens), srv.tokens)
	}
	if srv.tlsEvents == 0 || srv.tlsEvents != len(srv.events) {
		t.Errorf("%d of %d events over TLS, want all", srv.tlsEvents, len(srv.events))
	}
}

// A server of another CA gets no request; a profile naming another CA
// (served, say, through a proxy the pin does not cover) stops the boot.
func TestRunNetbootRefusesAServerOrProfileOfAnotherCA(t *testing.T) {
	ca, other := testutil.NewCA(t), testutil.NewCA(t)
	rootfs := []byte(strings.Repeat("squash", 1000))
	pin := api.CAFingerprint(ca.Cert().Raw)

	t.Run("server", func(t *testing.T) {
		srv := newBootServer(t, profileWithCA(t, ca.CertPEM()), rootfs)
		tlsURL := withHTTPS(t, srv, other)
		m := &fakeMachine{cmdline: fmt.Sprintf("plinth.server=%s plinth.machine=m1 plinth.rootfs=%s plinth.tls=%s plinth.ca=%s", srv.URL, digestOf(rootfs), tlsURL, pin)}
		s, out := newStage1(t, m, t.TempDir())
		s.Fetch.Attempts = 1
		// A handshake failure is retried (the impostor may go, the
		// server come back): the test ends the retries.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Run(ctx)
		if !strings.Contains(out.String(), "does not hold the site CA") {
			t.Errorf("console does not say why:\n%s", out)
		}
		srv.mu.Lock()
		defer srv.mu.Unlock()
		if len(srv.tokens) != 0 || len(srv.events) != 0 {
			t.Errorf("the impostor got %d profile requests and %d events", len(srv.tokens), len(srv.events))
		}
	})
	t.Run("profile", func(t *testing.T) {
		srv := newBootServer(t, profileWithCA(t, other.CertPEM()), rootfs)
		tlsURL := withHTTPS(t, srv, ca)
		m := &fakeMachine{cmdline: fmt.Sprintf("plinth.server=%s plinth.machine=m1 plinth.rootfs=%s plinth.tls=%s plinth.ca=%s", srv.URL, digestOf(rootfs), tlsURL, pin)}
		s, out := newStage1(t, m, t.TempDir())
		err := s.Run(context.Background())
		if !IsPermanent(err) || !strings.Contains(out.String(), "its site CA: the CA is "+api.CAFingerprint(other.Cert().Raw)) {
			t.Errorf("Run = %v\n%s", err, out)
		}
	})
}
