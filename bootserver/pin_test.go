package bootserver

import (
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/bootserver/pki"
	machinekeys "github.com/plinth-dev/plinth/initramfs/keys"
	"github.com/plinth-dev/plinth/initramfs/stage1/events"
	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// Stage 1 knows the site CA only by the fingerprint on its boot command
// line. With it, it fetches its profile over HTTPS from the real server;
// an impostor on the server's address — with a certificate of its own CA,
// or one that also sends the real CA's certificate in its chain — fails
// the handshake, so no request (no token) ever reaches it.
func TestStage1TrustsTheServerByTheCAFingerprintOnItsBootCommandLine(t *testing.T) {
	s, ca := caFixture(t, twoMasters, nil)
	s.apiPort = 1
	_, _, httpsAddr := serveInBackground(t, t.Context(), s)

	w := get(t, s.Handler(), api.PathBootScript+"?mac=52-54-00-00-00-02")
	script := w.Body.String()
	params := api.ParseCmdline(script[strings.Index(script, "\nkernel "):])
	pin := params[api.ParamCA]
	if pin != api.CAFingerprint(ca.Cert().Raw) {
		t.Fatalf("boot script pins %q, want the site CA %s:\n%s", pin, api.CAFingerprint(ca.Cert().Raw), script)
	}
	if got := params[api.ParamTLS]; got != s.tlsURL || !strings.HasPrefix(got, "https://") {
		t.Fatalf("boot script's %s = %q, want %q", api.ParamTLS, got, s.tlsURL)
	}

	real := "https://" + httpsAddr
	c, err := events.PinnedClient(real, pin)
	if err != nil {
		t.Fatal(err)
	}
	c.Timeout = 10 * time.Second
	k, _ := machinekeys.New(roles.IdentityNames())
	req, _ := k.Requests("node-2")
	resp, err := c.Post(real+api.ProfilePath("node-2"), "application/json", strings.NewReader(mustJSON(t, req)))
	if err != nil {
		t.Fatalf("profile over HTTPS with the pinned CA: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("profile: %s %s", resp.Status, b)
	}
	cfg, err := node.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := events.CheckPin([]byte(cfg.TLS.CA), pin); err != nil {
		t.Errorf("the profile's CA: %v", err)
	}

	other, _, err := pki.LoadOrCreate(t.TempDir(), "lab", nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf := machineCert(t, other, "node-2", "master", netip.MustParseAddr("127.0.0.1"))
	withRealCA := leaf
	withRealCA.Certificate = append(append([][]byte{}, leaf.Certificate...), ca.Cert().Raw)
	// A master's own certificate from the site CA, server auth for the
	// very address stage 1 dials: right CA, right address, but not the
	// boot server's name.
	master := machineCert(t, ca, "node-2", "master", netip.MustParseAddr("127.0.0.1"))
	master.Certificate = append(append([][]byte{}, master.Certificate...), ca.Cert().Raw)
	for _, tc := range []struct {
		name string
		cert tls.Certificate
		want string
	}{
		{"another CA", leaf, "does not hold the site CA"},
		{"another CA's leaf sent with the real CA", withRealCA, "not the pinned site CA's"},
		{"a machine's certificate from the site CA", master, "is valid for"},
	} {
		var reached atomic.Int32
		imp := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			reached.Add(1)
			w.Write([]byte(`{"schema":1}`))
		}))
		imp.TLS = &tls.Config{Certificates: []tls.Certificate{tc.cert}}
		imp.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
		imp.StartTLS()
		_, port, _ := net.SplitHostPort(imp.Listener.Addr().String())
		url := "https://127.0.0.1:" + port
		c, err := events.PinnedClient(url, pin)
		if err != nil {
			t.Fatal(err)
		}
		c.Timeout = 10 * time.Second
		req, _ := http.NewRequest(http.MethodGet, url+api.ProfilePath("node-2"), nil)
		req.Header.Set(api.HeaderToken, "the-boot-token")
		_, err = c.Do(req)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
		if n := reached.Load(); n != 0 {
			t.Errorf("%s: %d requests reached the impostor", tc.name, n)
		}
		imp.Close()
	}
}
