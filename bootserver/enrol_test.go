package bootserver

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/profiles/node"
)

// getFrom is a GET from a given address.
func getFrom(h http.Handler, remote, path string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, path, nil)
	r.RemoteAddr = remote + ":40000"
	r.Host = "10.77.0.1:8080" // as the machine reached the server: the fixtures' public URL
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func tokenIn(script string) string {
	i := strings.Index(script, api.ParamToken+"=")
	if i < 0 {
		return ""
	}
	return strings.Fields(script[i+len(api.ParamToken)+1:])[0]
}

func TestEnrolmentTokenIsMintedOnlyToTheMachinesOwnAddress(t *testing.T) {
	for _, tc := range []struct {
		name, mac, remote string
		lease             bool   // node's MAC leased an address by our DHCP first
		offer             bool   // only offered one (DISCOVER, no REQUEST)
		neighbour         string // MAC the ARP table shows behind remote
		wantToken         bool
	}{
		{"leased address", "52:54:00:00:00:01", "10.77.0.100", true, false, "", true},
		{"another address than the lease", "52:54:00:00:00:01", "10.77.0.66", true, false, "", false},
		{"an offer is no lease", "52:54:00:00:00:01", "10.77.0.100", false, true, "", false},
		{"static address", "52:54:00:00:00:02", "10.77.0.12", false, false, "", true},
		{"static machine from elsewhere", "52:54:00:00:00:02", "10.77.0.100", false, false, "52:54:00:00:00:02", false},
		{"seen on the wire with its MAC", "52:54:00:00:00:01", "10.77.0.50", false, false, "52:54:00:00:00:01", true},
		{"wire shows another MAC", "52:54:00:00:00:01", "10.77.0.50", false, false, "52:54:00:00:00:66", false},
		{"nothing ties MAC and address", "52:54:00:00:00:01", "10.77.0.50", false, false, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := fixture(t, "token")
			s.neighbour = func(ip netip.Addr) (string, bool) {
				if tc.neighbour != "" && ip == netip.MustParseAddr(tc.remote) {
					return tc.neighbour, true
				}
				return "", false
			}
			if tc.lease {
				leaseTo(t, s, tc.mac)
			}
			if tc.offer {
				if _, err := s.DHCPReply(discover(t, tc.mac), "server"); err != nil {
					t.Fatal(err)
				}
			}
			w := getFrom(s.Handler(), tc.remote, "/boot.ipxe?mac="+tc.mac)
			tok := tokenIn(w.Body.String())
			if w.Code != http.StatusOK || (tok != "") != tc.wantToken {
				t.Fatalf("%d, token %q, want token %v:\n%s", w.Code, tok, tc.wantToken, w.Body)
			}
			if !tc.wantToken && !strings.Contains(w.Body.String(), "must boot from its own address") {
				t.Errorf("the refusal does not say why:\n%s", w.Body)
			}
		})
	}
}

func TestEnrolmentTokenOpensOnlyItsMachinesProfileOnceFromItsAddress(t *testing.T) {
	s, _ := fixture(t, "token")
	h := s.Handler()
	leaseTo(t, s, "52:54:00:00:00:01")
	tok := tokenIn(getFrom(h, "10.77.0.100", "/boot.ipxe?mac=52:54:00:00:00:01").Body.String())
	if tok == "" {
		t.Fatal("no token for the machine at its leased address")
	}
	for _, tc := range []struct {
		name, remote, machine, token string
		want                         int
	}{
		{"no token", "10.77.0.100", "node-1", "", http.StatusForbidden},
		{"guessed token", "10.77.0.100", "node-1", strings.Repeat("0", 32), http.StatusForbidden},
		{"token from another address", "10.77.0.66", "node-1", tok, http.StatusForbidden},
		{"token for another machine", "10.77.0.100", "node-2", tok, http.StatusForbidden},
		{"the machine's own", "10.77.0.100", "node-1", tok, http.StatusOK},
		{"used again", "10.77.0.100", "node-1", tok, http.StatusForbidden},
	} {
		if w := getFrom(h, tc.remote, api.ProfilePath(tc.machine), api.HeaderToken, tc.token); w.Code != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, w.Code, tc.want)
		}
	}
}

// leaseTo has s lease an address to mac as a DHCP client would: DISCOVER,
// then REQUEST of the offer.
func leaseTo(t *testing.T, s *Server, mac string) string {
	t.Helper()
	off, err := s.DHCPReply(discover(t, mac), "server")
	if err != nil || off == nil {
		t.Fatalf("offer to %s: %v %v", mac, off, err)
	}
	ack, err := s.DHCPReply(request(t, mac, off.YourIPAddr.String(), s.cfg.ServerIP.String()), "server")
	if err != nil || ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("request of %s by %s: %v %v", off.YourIPAddr, mac, ack, err)
	}
	return ack.YourIPAddr.String()
}

// A machine that got its boot script (and token) just before the server
// restarted still gets its profile after it, once.
func TestEnrolmentTokensOutliveARestart(t *testing.T) {
	s, _ := fixtureSite(t, strings.Replace(siteTOML, "%s", "token", 1), func(c *Config) { c.StateDir = t.TempDir() })
	leaseTo(t, s, "52:54:00:00:00:01")
	tok := tokenIn(getFrom(s.Handler(), "10.77.0.100", "/boot.ipxe?mac=52:54:00:00:00:01").Body.String())
	if tok == "" {
		t.Fatal("no token")
	}
	restart := func() http.Handler {
		s2, err := New(s.cfg)
		if err != nil {
			t.Fatal(err)
		}
		return s2.Handler()
	}
	if w := getFrom(restart(), "10.77.0.100", api.ProfilePath("node-1"), api.HeaderToken, tok); w.Code != http.StatusOK {
		t.Fatalf("profile with the token after a restart: %d %s", w.Code, w.Body)
	}
	if w := getFrom(restart(), "10.77.0.100", api.ProfilePath("node-1"), api.HeaderToken, tok); w.Code != http.StatusForbidden {
		t.Fatalf("the used token again after another restart: %d, want 403", w.Code)
	}
	b, err := os.ReadFile(filepath.Join(s.cfg.StateDir, TokensFile))
	if err != nil || strings.Contains(string(b), tok) {
		t.Errorf("the tokens file (%v) holds the token itself, not its hash:\n%s", err, b)
	}
}

func TestRefusedBootOfAKnownMachineKeepsItsReportedState(t *testing.T) {
	s, _ := fixture(t, "token")
	s.state.update("node-1", func(st *MachineStatus) { st.State, st.IP = api.StageReady, "10.77.0.100" })
	getFrom(s.Handler(), "10.77.0.66", "/boot.ipxe?mac=52:54:00:00:00:01")
	st, _ := s.state.get("node-1")
	if st.State != api.StageReady || st.IP != "10.77.0.100" || !strings.Contains(st.LastEvent, "refused a boot script to 10.77.0.66") {
		t.Errorf("after a refused claim: %+v", st)
	}
}

func TestARPLookupFindsOnlyCompleteEntries(t *testing.T) {
	const table = `IP address       HW type     Flags       HW address            Mask     Device
10.77.0.11       0x1         0x2         52:54:00:00:00:0b     *        br0
10.77.0.12       0x1         0x0         00:00:00:00:00:00     *        br0
10.77.0.13       0x1         0x6         52:54:00:00:00:0D     *        br0
garbage
`
	for _, tc := range []struct {
		ip, mac string
		ok      bool
	}{
		{"10.77.0.11", "52:54:00:00:00:0b", true},
		{"10.77.0.12", "", false}, // incomplete: nobody answered ARP
		{"10.77.0.13", "52:54:00:00:00:0d", true},
		{"10.77.0.14", "", false},
	} {
		mac, ok := arpLookup(strings.NewReader(table), netip.MustParseAddr(tc.ip))
		if mac != tc.mac || ok != tc.ok {
			t.Errorf("%s: %q %v, want %q %v", tc.ip, mac, ok, tc.mac, tc.ok)
		}
	}
}

// A machine the site names by SMBIOS UUID (no MAC) enrols: its first boot
// is tied to the address leased to the MAC it reports, and that MAC is
// kept (across restarts). A later boot claiming its UUID with another MAC
// — anyone can type a UUID — gets nothing.
func TestAMachineMatchedByUUIDEnrolsWithTheMACItFirstBootedWith(t *testing.T) {
	const uuid = "4c4c4544-0051-3510-8052-b4c04f4e4d32"
	const nic, thief = "52:54:00:00:00:44", "52:54:00:00:00:55"
	site := strings.Replace(siteTOML, "%s", "token", 1) + "\n[[machine]]\nname = \"by-uuid\"\nuuid = \"" + uuid + "\"\nrole = \"minion\"\nimage = \"img\"\n"
	s, _ := fixtureSite(t, site, func(c *Config) { c.StateDir = t.TempDir() })
	addr := leaseTo(t, s, nic)
	w := getFrom(s.Handler(), addr, "/boot.ipxe?mac="+nic+"&uuid="+uuid)
	tok := tokenIn(w.Body.String())
	if tok == "" {
		t.Fatalf("a UUID-matched machine booting from its lease got no token:\n%s", w.Body)
	}
	if w := getFrom(s.Handler(), addr, api.ProfilePath("by-uuid"), api.HeaderToken, tok); w.Code != http.StatusOK {
		t.Fatalf("its profile: %d %s", w.Code, w.Body)
	}

	// After a restart, the thief: its own MAC, its own lease, the UUID.
	s2, err := New(s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	theirs := leaseTo(t, s2, thief)
	w = getFrom(s2.Handler(), theirs, "/boot.ipxe?mac="+thief+"&uuid="+uuid)
	if tok := tokenIn(w.Body.String()); tok != "" || !strings.Contains(w.Body.String(), "enrolled with MAC "+nic) {
		t.Fatalf("another MAC claiming the UUID: token %q:\n%s", tok, w.Body)
	}
	// The machine itself still enrols.
	addr = leaseTo(t, s2, nic)
	if tok := tokenIn(getFrom(s2.Handler(), addr, "/boot.ipxe?mac="+nic+"&uuid="+uuid).Body.String()); tok == "" {
		t.Fatal("the machine's own next boot got no token")
	}
}

// In token enrolment the token opens a profile once, at boot; after that a
// machine re-reads its profile (its first-boot steps: the etcd state) with
// its own certificate in place of the token — a GET, without credentials.
// Another machine's certificate, or none, is refused.
func TestAMachinesCertificateOpensItsProfileWithoutAToken(t *testing.T) {
	s, ca := caFixture(t, strings.Replace(siteTOML, "%s", "token", 1), nil)
	own := certOf(t, machineCert(t, ca, "node-1", "minion", netip.Addr{}))
	other := certOf(t, machineCert(t, ca, "node-2", "master", netip.MustParseAddr("10.77.0.12")))
	get := func(method string, cert *x509.Certificate) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, api.ProfilePath("node-1"), strings.NewReader("{}"))
		r.RemoteAddr, r.Host = "10.77.0.100:40000", "10.77.0.1:8443"
		if cert != nil {
			r.TLS = &tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{cert}, VerifiedChains: [][]*x509.Certificate{{cert}}}
		}
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, r)
		return w
	}
	w := get(http.MethodGet, own)
	if w.Code != http.StatusOK {
		t.Fatalf("GET with its own certificate: %d %s", w.Code, w.Body)
	}
	if c, err := node.Decode(w.Body.Bytes()); err != nil || c.TLS != nil {
		t.Errorf("the profile: %v, TLS %+v: want one without credentials", err, c.TLS)
	}
	for what, w := range map[string]*httptest.ResponseRecorder{
		"another machine's certificate": get(http.MethodGet, other),
		"no certificate":                get(http.MethodGet, nil),
		"a POST for credentials":        get(http.MethodPost, own),
	} {
		if w.Code != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", what, w.Code)
		}
	}
}
