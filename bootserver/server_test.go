package bootserver

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	promtestutil "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/internal/testutil"
	"github.com/plinth-dev/plinth/manifest"
	"github.com/plinth-dev/plinth/profiles/node"
)

const siteTOML = `
[site]
name = "lab"
domain = "lab.example"
api_name = "api.lab.example"
enrolment = "%s"
[dhcp]
mode = "server"
range_start = "10.77.0.100"
range_end = "10.77.0.101"
netmask = "255.255.255.0"
router = "10.77.0.1"
dns = ["10.77.0.1"]
[[machine]]
name = "node-1"
mac = "52:54:00:00:00:01"
role = "minion"
image = "img"
[[machine]]
name = "node-2"
mac = "52:54:00:00:00:02"
role = "master"
image = "img-master"
address = "10.77.0.12/24"
`

// fixture writes a site and one built image with real digests.
func fixture(t testing.TB, enrolment string) (*Server, map[string]string) {
	t.Helper()
	return fixtureSite(t, strings.Replace(siteTOML, "%s", enrolment, 1), nil)
}

// fixtureSite is fixture with the site's text and a last word on the
// server's configuration.
func fixtureSite(t testing.TB, siteText string, conf func(*Config)) (*Server, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	site := filepath.Join(dir, "site")
	os.MkdirAll(site, 0o755)
	os.WriteFile(filepath.Join(site, "site.toml"), []byte(siteText), 0o644)
	// One build of the files as two images: img for minions, img-master.
	digests := map[string]string{}
	for name, role := range map[string]string{"img": "minion", "img-master": "master"} {
		img := filepath.Join(dir, "artifacts", name)
		os.MkdirAll(img, 0o755)
		m := &manifest.Manifest{Schema: manifest.Schema, Name: name, Role: role, Cmdline: "console=ttyS0"}
		for name, body := range map[string]string{manifest.KernelFile: "KERNEL", manifest.Initramfs: "INITRD", manifest.Rootfs: strings.Repeat("R", 10000)} {
			p := filepath.Join(img, name)
			os.WriteFile(p, []byte(body), 0o644)
			d, n, _ := manifest.FileDigest(p)
			m.Files = append(m.Files, manifest.File{Name: name, SHA256: d, Size: n})
			digests[name] = d
		}
		b, _ := m.Encode()
		os.WriteFile(filepath.Join(img, manifest.FileName), b, 0o644)
	}
	cfg := Config{SiteDir: site, ArtifactsDir: filepath.Join(dir, "artifacts"), PublicURL: "http://10.77.0.1:8080", ServerIP: netip.MustParseAddr("10.77.0.1")}
	if conf != nil {
		conf(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Each machine as if booted: its reports prove themselves with
	// testToken (the boot script mints a random one).
	for _, m := range s.snap.Load().site.Machines {
		m := m.Name
		if err := s.reports.set(m, testToken(m)); err != nil {
			t.Fatal(err)
		}
	}
	return s, digests
}

// testToken is the report token fixture gives machine.
func testToken(machine string) string { return "token-of-" + machine }

// asMachine makes r a report of machine's, proven by its fixture token.
func asMachine(r *http.Request, machine string) *http.Request {
	r.Header.Set(api.HeaderToken, testToken(machine))
	return r
}

func get(t *testing.T, h http.Handler, path string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, path, nil)
	r.RemoteAddr = "10.77.0.100:5555"
	r.Host = "10.77.0.1:8080" // as the machine reached the server: the fixture's public URL
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestBootScriptPinsKernelInitrdAndRootfsByDigest(t *testing.T) {
	s, d := fixture(t, "none")
	w := get(t, s.Handler(), "/boot.ipxe?mac=52-54-00-00-00-01&uuid=&arch=x86_64")
	body := w.Body.String()
	if w.Code != 200 || !strings.HasPrefix(body, "#!ipxe\n") {
		t.Fatalf("%d %q", w.Code, body)
	}
	hex := func(n string) string { return strings.TrimPrefix(d[n], "sha256:") }
	for _, want := range []string{
		"kernel /artifacts/sha256/" + hex(manifest.KernelFile) + " initrd=initramfs console=ttyS0 plinth.server=http://10.77.0.1:8080 plinth.machine=node-1 plinth.rootfs=" + d[manifest.Rootfs] + " plinth.iface=52:54:00:00:00:01",
		"initrd --name initramfs /artifacts/sha256/" + hex(manifest.Initramfs),
		"boot\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("script lacks %q:\n%s", want, body)
		}
	}
	// Every boot gets a token for its reports, enrolment or not; it
	// proves node-1's reports until the next boot script replaces it.
	tok := tokenIn(body)
	if tok == "" || tok == testToken("node-1") {
		t.Fatalf("no new report token in the script:\n%s", body)
	}
	if code := report(t, s, "node-1", api.StageInit, "10.77.0.100", tok, nil); code != http.StatusNoContent {
		t.Errorf("a report with the boot's token: %d", code)
	}
	if code := report(t, s, "node-1", api.StageInit, "10.77.0.100", testToken("node-1"), nil); code != http.StatusForbidden {
		t.Errorf("a report with the last boot's token: %d, want 403", code)
	}
}

func TestUnknownMachineIsRefusedAndRecorded(t *testing.T) {
	s, _ := fixture(t, "none")
	w := get(t, s.Handler(), "/boot.ipxe?mac=52:54:00:99:99:99")
	if w.Code != 200 || !strings.Contains(w.Body.String(), "is not in site lab") || strings.Contains(w.Body.String(), "kernel ") {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	st, ok := s.state.get("unknown-525400999999")
	if !ok || st.State != "unknown" {
		t.Errorf("the refused machine was not recorded: %+v", st)
	}
	if n := promtestutil.ToFloat64(s.metrics.refused); n != 1 {
		t.Errorf("refusals counted: %v", n)
	}
	// Listed for the operator, but it cannot post events as if enrolled.
	r := httptest.NewRequest(http.MethodPost, api.PathEvents, strings.NewReader(`{"machine":"unknown-525400999999","stage":"ready"}`))
	w = httptest.NewRecorder()
	s.Handler().ServeHTTP(w, r)
	if w.Code != http.StatusNotFound {
		t.Errorf("event from a refused machine: %d", w.Code)
	}
}

func TestBadRequestsGetClearClientErrors(t *testing.T) {
	s, _ := fixture(t, "none")
	h := s.Handler()
	for path, code := range map[string]int{
		"/boot.ipxe?mac=zz":                        400,
		"/boot.ipxe?mac=52:54:00:00:00:01&bogus=1": 400,
		"/boot.ipxe?mac=%zz":                       400,
		"/boot.ipxe?mac=52:54:00:99:99:99&uuid=x%0Achain%20http://evil/": 400,
		"/boot.ipxe?mac=52:54:00:00:00:01&arch=x86_64%20":                400,
		"/artifacts/sha256/../../etc/passwd":                             307, // the mux cleans it to /etc/passwd, which 404s
		"/artifacts/sha256/..%2f..%2fetc%2fpasswd":                       400,
		"/artifacts/sha256/abc":                                          400,
		"/artifacts/sha256/" + strings.Repeat("0", 64):                   404,
		"/v1/machines/nobody/config":                                     404,
		"/nothing-here":                                                  404,
	} {
		if w := get(t, h, path); w.Code != code {
			t.Errorf("GET %s = %d, want %d (%s)", path, w.Code, code, strings.TrimSpace(w.Body.String()))
		}
	}
	for body, code := range map[string]int{
		`{"machine":"node-1","stage":"bogus"}`:          400,
		`{"machine":"node-1","stage":"init","extra":1}`: 400,
		`{"machine":"ghost","stage":"init"}`:            404,
		`not json`:                                      400,
		`{"machine":"node-1","stage":"init"}` + strings.Repeat(" ", maxEventBody): 413,
	} {
		r := asMachine(httptest.NewRequest(http.MethodPost, api.PathEvents, strings.NewReader(body)), "node-1")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != code {
			t.Errorf("POST event %.40q = %d, want %d", body, w.Code, code)
		}
	}
}

func TestArtifactsServedByDigestWithRangeAndCaching(t *testing.T) {
	s, d := fixture(t, "none")
	path := api.ArtifactPath(strings.TrimPrefix(d[manifest.Rootfs], "sha256:"))
	w := get(t, s.Handler(), path, "Range", "bytes=9990-")
	if w.Code != http.StatusPartialContent || w.Body.String() != strings.Repeat("R", 10) {
		t.Fatalf("range: %d %q", w.Code, w.Body.String())
	}
	w = get(t, s.Handler(), path)
	if w.Header().Get("ETag") != `"`+d[manifest.Rootfs]+`"` || !strings.Contains(w.Header().Get("Cache-Control"), "immutable") || w.Body.Len() != 10000 {
		t.Errorf("headers %v, %d bytes", w.Header(), w.Body.Len())
	}
	if w := get(t, s.Handler(), path, "If-None-Match", `"`+d[manifest.Rootfs]+`"`); w.Code != http.StatusNotModified {
		t.Errorf("conditional GET = %d, want 304", w.Code)
	}
}

func TestProfileAndEventsUpdateTheFleet(t *testing.T) {
	s, d := fixture(t, "none")
	h := s.Handler()
	w := get(t, h, api.ProfilePath("node-1"))
	if w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	c, err := node.Decode(w.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if c.Hostname != "node-1" || c.Role != "minion" || c.Rootfs != d[manifest.Rootfs] || c.Cluster.BootServer != "http://10.77.0.1:8080" {
		t.Errorf("config %+v %+v", c, c.Cluster)
	}
	ev, _ := json.Marshal(api.Event{Machine: "node-1", Stage: api.StageReady, Message: "all good"})
	r := asMachine(httptest.NewRequest(http.MethodPost, api.PathEvents, bytes.NewReader(ev)), "node-1")
	rw := httptest.NewRecorder()
	h.ServeHTTP(rw, r)
	if rw.Code != http.StatusNoContent {
		t.Fatalf("event: %d %s", rw.Code, rw.Body)
	}
	var list []MachineStatus
	json.Unmarshal(get(t, h, api.PathMachines).Body.Bytes(), &list)
	if len(list) != 2 || list[0].Name != "node-1" || list[0].State != api.StageReady || list[0].LastEvent != "all good" {
		t.Errorf("machines %+v", list)
	}
	page := get(t, h, "/").Body.String()
	if !strings.Contains(page, "site <span id=\"site\">lab</span>") || !strings.Contains(page, `new EventSource("/v1/events/stream")`) {
		t.Error("the status page lacks the site or its live updates")
	}
	if !strings.Contains(page, `<tr id="m-node-1" data-state="ready">`) || !strings.Contains(page, "all good") {
		t.Error("the status page does not show node-1's event")
	}
	metrics := get(t, h, "/metrics").Body.String()
	for _, want := range []string{
		`plinth_boot_events_total{stage="ready"} 1`,
		`plinth_machines{state="ready"} 1`,
		`plinth_machines{state="waiting"} 1`,
		`plinth_http_requests_total{code="200",route="config"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestReloadRejectsBrokenSiteAndKeepsServing(t *testing.T) {
	s, _ := fixture(t, "none")
	os.WriteFile(filepath.Join(s.cfg.SiteDir, "site.toml"), []byte("[site]\nname = 3\n"), 0o644)
	if err := s.Reload(); err == nil || !strings.Contains(err.Error(), "site.toml:2:1: site.name") {
		t.Fatalf("reload: %v", err)
	}
	if w := get(t, s.Handler(), "/boot.ipxe?mac=52:54:00:00:00:01"); w.Code != 200 {
		t.Errorf("after a rejected reload: %d", w.Code)
	}
}

func FuzzParseBootQuery(f *testing.F) {
	f.Add("mac=52-54-00-00-00-01&uuid=abc&arch=x86_64")
	f.Add("mac=%zz&label.rack=r1")
	f.Add("mac=52:54:00:00:00:01&mac=52:54:00:00:00:02")
	f.Add("uuid=4C4C4544-0000-0000-0000-000000000000&arch=arm64&label.rack=r%201")
	f.Fuzz(func(t *testing.T, q string) {
		bq, err := ParseBootQuery(q)
		if err != nil {
			return
		}
		if bq.MAC != "" && len(bq.MAC) != 17 {
			t.Fatalf("accepted MAC %q", bq.MAC)
		}
		// What iPXE scripts echo back must not break out of its line.
		if strings.ContainsAny(bq.UUID+bq.Arch, " \n\r\t;${}") {
			t.Fatalf("accepted uuid %q arch %q", bq.UUID, bq.Arch)
		}
	})
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add(`{"machine":"a","stage":"ready","message":"m","fields":{"etcd":"active"}}`)
	f.Add(`{"machine":"","stage":"init"}`)
	f.Add(`[]`)
	f.Fuzz(func(t *testing.T, in string) {
		e, err := DecodeEvent(strings.NewReader(in))
		if err == nil && (!api.KnownStage(e.Stage) || e.Machine == "") {
			t.Fatalf("accepted %+v", e)
		}
	})
}

var tokenRE = regexp.MustCompile(regexp.QuoteMeta(api.ParamToken) + `=[0-9a-f]{32}`)

// TestBootScriptsMatchGoldenFiles pins every script iPXE can get: the chain
// that adds the machine's identity, a known machine's boot, and the refusal
// an unknown machine retries from.
func TestBootScriptsMatchGoldenFiles(t *testing.T) {
	s, _ := fixture(t, "none")
	for _, tc := range []struct{ golden, query string }{
		{"chain.ipxe", ""},
		{"node-1.ipxe", "?mac=52-54-00-00-00-01&uuid=&arch=x86_64"},
		{"node-2.ipxe", "?mac=52:54:00:00:00:02&label.rack=r1"},
		{"unknown.ipxe", "?mac=52:54:00:99:99:99&uuid=4c4c4544-0000-0000-0000-000000000000"},
	} {
		w := get(t, s.Handler(), api.PathBootScript+tc.query)
		if w.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", tc.golden, w.Code, w.Body)
		}
		// The report token is random: the golden file says where it goes.
		got := tokenRE.ReplaceAllString(w.Body.String(), api.ParamToken+"=TOKEN")
		testutil.Golden(t, filepath.Join("testdata", tc.golden), []byte(got))
	}
}

// TestAMachineWhoseImageIsOfAnotherRoleGetsNoBootScript: a master told to
// boot the minion image would start kubelet and Docker with a master's
// profile; the server refuses it, naming both roles, instead.
func TestAMachineWhoseImageIsOfAnotherRoleGetsNoBootScript(t *testing.T) {
	s, _ := fixture(t, "none")
	siteFile := filepath.Join(s.cfg.SiteDir, "site.toml")
	b, _ := os.ReadFile(siteFile)
	os.WriteFile(siteFile, []byte(strings.Replace(string(b), `image = "img-master"`, `image = "img"`, 1)), 0o644)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	w := get(t, s.Handler(), "/boot.ipxe?mac=52:54:00:00:00:02")
	if w.Code != http.StatusConflict || strings.Contains(w.Body.String(), "kernel ") ||
		!strings.Contains(w.Body.String(), `machine node-2: role "master", but image "img" was built for role "minion"`) {
		t.Errorf("%d %q", w.Code, w.Body)
	}
}

// A host inventing MACs cannot grow the server's table of machines (and
// GET /v1/machines, and the status page) without bound: refused machines
// are kept up to maxUnknown, the most recently heard from, and only while
// they keep asking.
func TestAFloodOfInventedMACsIsBounded(t *testing.T) {
	s, _ := fixture(t, "none")
	h := s.Handler()
	get(t, h, api.PathBootScript+"?mac=52-54-00-00-00-01") // a machine of the site, booting
	const flood = 3 * maxUnknown
	last := ""
	for i := range flood {
		mac := fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff)
		get(t, h, api.PathBootScript+"?mac="+mac)
		last = "unknown-" + strings.ReplaceAll(mac, ":", "")
	}
	var list []MachineStatus
	if err := json.Unmarshal(get(t, h, api.PathMachines).Body.Bytes(), &list); err != nil {
		t.Fatal(err)
	}
	unknown, sawLast, sawKnown := 0, false, false
	for _, st := range list {
		switch {
		case st.State == stateUnknown:
			unknown++
			sawLast = sawLast || st.Name == last
		case st.Name == "node-1":
			sawKnown = st.State == api.StageKernel
		}
	}
	if unknown > maxUnknown || !sawLast || !sawKnown {
		t.Fatalf("after %d invented MACs: %d refused machines listed (max %d), the latest listed %v, node-1 booting %v",
			flood, unknown, maxUnknown, sawLast, sawKnown)
	}

	// One that stopped asking long ago goes with the next refusal.
	s.state.mu.Lock()
	s.state.m[last].LastSeen = time.Now().Add(-unknownTTL - time.Minute)
	s.state.mu.Unlock()
	get(t, h, api.PathBootScript+"?mac=02:00:00:00:ff:ff")
	if _, ok := s.state.get(last); ok {
		t.Errorf("%s, silent for longer than %s, is still listed", last, unknownTTL)
	}
}
