package bootserver

import (
	"crypto/tls"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/bootserver/api"
)

// A machine on QEMU's user network reaches a server listening on loopback
// at 10.0.2.2: its boot script names the kernel and initramfs by path
// (iPXE resolves them against the script's URL) and its command line and
// profile name the server at the address the machine used.
func TestURLsFollowTheAddressTheMachineReached(t *testing.T) {
	s, _ := caFixture(t, twoMasters, nil)
	r := httptest.NewRequest("GET", api.PathBootScript+"?mac=52-54-00-00-00-02", nil)
	r.Host = "10.0.2.2:8080"
	r.RemoteAddr = "10.0.2.15:4000"
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, r)
	script := w.Body.String()
	params := api.ParseCmdline(script[strings.Index(script, "\nkernel "):])
	if params[api.ParamServer] != "http://10.0.2.2:8080" {
		t.Errorf("%s=%q, want the address the machine reached", api.ParamServer, params[api.ParamServer])
	}
	_, tlsPort, _ := strings.Cut(strings.TrimPrefix(s.tlsURL, "https://"), ":")
	if want := "https://10.0.2.2:" + tlsPort; params[api.ParamTLS] != want {
		t.Errorf("%s=%q, want %s", api.ParamTLS, params[api.ParamTLS], want)
	}
	if !strings.Contains(script, "\nkernel /artifacts/sha256/") || !strings.Contains(script, "\ninitrd --name initramfs /artifacts/sha256/") {
		t.Errorf("kernel and initramfs not named by path:\n%s", script)
	}
	// The profile, fetched over HTTPS at that address.
	r = httptest.NewRequest("GET", api.ProfilePath("node-2"), nil)
	r.Host, r.RemoteAddr, r.TLS = "10.0.2.2:"+tlsPort, "10.0.2.15:4001", &tls.ConnectionState{}
	w = httptest.NewRecorder()
	s.Handler().ServeHTTP(w, r)
	for _, want := range []string{`"boot_server":"http://10.0.2.2:8080"`, `"report_url":"https://10.0.2.2:` + tlsPort + `"`} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("profile lacks %s: %s", want, w.Body.String()[:min(400, w.Body.Len())])
		}
	}
}

func TestCheckPublicURL(t *testing.T) {
	local := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.2")}
	for _, tc := range []struct {
		public, listen, want string
	}{
		{"http://127.0.0.1:8080", "127.0.0.1:8080", ""},
		{"http://192.0.2.2:8080", "127.0.0.1:8080", "listens on 127.0.0.1:8080 only"},
		{"http://192.0.2.2:9090", ":8080", "port 9090"},
		{"http://192.0.2.2", ":8080", "port 80"},
		{"http://192.0.2.2:8080", ":8080", ""},
		{"http://192.0.2.2:8080", "0.0.0.0:8080", ""},
		{"http://203.0.113.9:8080", ":8080", "not an address of this host"},
		{"http://boot.example:8080", ":8080", ""},
		{"ftp://x:8080", ":8080", "want http"},
	} {
		err := CheckPublicURL(tc.public, tc.listen, local)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("CheckPublicURL(%s, %s) = %v, want %q", tc.public, tc.listen, err, tc.want)
		}
	}
}
