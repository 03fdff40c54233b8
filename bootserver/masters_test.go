package bootserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	promtestutil "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/bootserver/pki"
	"github.com/plinth-dev/plinth/initramfs/stage1/events"
	"github.com/plinth-dev/plinth/profiles/node"
)

// recSink records what the site DNS is told, safe for the pool's checker.
type recSink struct {
	mu      sync.Mutex
	calls   [][]netip.Addr
	domain  string
	hosts   map[string]netip.Addr
	masters []netip.Addr
}

func (n *recSink) ReadyMasters(_ string, a []netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.masters = a
	n.calls = append(n.calls, a)
}

func (n *recSink) Hosts(d string, h map[string]netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.domain, n.hosts = d, h
}

func (n *recSink) now() []netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.masters
}

// caFixture is fixtureSite with a site CA (in a temporary state directory)
// and an HTTPS listener's configuration.
func caFixture(t *testing.T, siteText string, conf func(*Config)) (*Server, *pki.CA) {
	t.Helper()
	state := t.TempDir()
	ca, _, err := pki.LoadOrCreate(state, "lab", nil)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := fixtureSite(t, siteText, func(c *Config) {
		c.CA, c.TLSListen, c.StateDir = ca, "127.0.0.1:0", state
		if conf != nil {
			conf(c)
		}
	})
	return s, ca
}

// machineCert is the certificate the site CA gives machine at boot.
func machineCert(t *testing.T, ca *pki.CA, machine, role string, addr netip.Addr) tls.Certificate {
	t.Helper()
	tl, err := issuedTo(t, ca, &node.Config{Machine: machine, Hostname: machine, Role: role,
		Cluster: &node.Cluster{APIName: "api.lab.example", ServiceCIDR: "10.96.0.0/12"}}, addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair([]byte(tl.Cert), []byte(tl.Key))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func certOf(t *testing.T, c tls.Certificate) *x509.Certificate {
	t.Helper()
	x, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// report posts an event to the handler as a machine would, from an
// address, with at most one proof: a token, or a certificate as the HTTPS
// listener would have verified it.
func report(t *testing.T, s *Server, machine, stage, from, token string, cert *x509.Certificate) int {
	t.Helper()
	b, _ := json.Marshal(api.Event{Machine: machine, Stage: stage})
	r := httptest.NewRequest(http.MethodPost, api.PathEvents, bytes.NewReader(b))
	r.RemoteAddr = from + ":1234"
	if token != "" {
		r.Header.Set(api.HeaderToken, token)
	}
	if cert != nil {
		r.TLS = &tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{cert}, VerifiedChains: [][]*x509.Certificate{{cert}}}
	}
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, r)
	return w.Code
}

// The attacks of issue 13, each tried as an outsider on the boot network
// would: none changes the status page, the pool or the name.
func TestForgedReportsChangeNeitherThePoolNorTheName(t *testing.T) {
	s, ca := caFixture(t, strings.Replace(siteTOML, "%s", "none", 1), nil)
	sink := &recSink{}
	s.cfg.Masters = sink
	s.notifyMasters()
	master := certOf(t, machineCert(t, ca, "node-2", "master", netip.MustParseAddr("10.77.0.12")))
	minion := certOf(t, machineCert(t, ca, "node-1", "minion", netip.Addr{}))
	const outsider = "10.77.0.66"
	before, _ := s.state.get("node-2")
	events := promtestutil.ToFloat64(s.metrics.events.WithLabelValues(api.StageReady))
	for _, tc := range []struct {
		what, stage, token string
		cert               *x509.Certificate
	}{
		{"no proof at all", api.StageReady, "", nil},
		{"a guessed token", api.StageReady, "0123456789abcdef0123456789abcdef", nil},
		{"another machine's token", api.StageReady, testToken("node-1"), nil},
		{"another machine's certificate", api.StageReady, "", minion},
		{"an error, no proof", api.StageError, "", nil},
	} {
		if code := report(t, s, "node-2", tc.stage, outsider, tc.token, tc.cert); code != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", tc.what, code)
		}
	}
	if after, _ := s.state.get("node-2"); !statusEqual(before, after) {
		t.Errorf("refused reports changed the status page: %+v → %+v", before, after)
	}
	if got := promtestutil.ToFloat64(s.metrics.events.WithLabelValues(api.StageReady)); got != events {
		t.Errorf("refused reports were counted as events: %v → %v", events, got)
	}
	if n := promtestutil.ToFloat64(s.metrics.refusedReports); n != 5 {
		t.Errorf("plinth_reports_refused_total = %v, want 5", n)
	}
	if got := sink.now(); len(got) != 0 {
		t.Fatalf("forged reports put %v in the API name", got)
	}

	// The machine's boot token proves a stage-1 report, which shows on the
	// status page, but only its certificate can put it in the name.
	if code := report(t, s, "node-2", api.StageReady, "10.77.0.12", testToken("node-2"), nil); code != http.StatusNoContent {
		t.Fatalf("token report: %d", code)
	}
	if st, _ := s.state.get("node-2"); st.State != api.StageReady {
		t.Errorf("a token report is not shown: %+v", st)
	}
	if got := sink.now(); len(got) != 0 {
		t.Fatalf("a token report put %v in the API name", got)
	}
	if code := report(t, s, "node-2", api.StageReady, "10.77.0.12", "", master); code != http.StatusOK {
		t.Fatalf("certified report: %d", code)
	}
	want := []netip.Addr{netip.MustParseAddr("10.77.0.12")}
	if got := sink.now(); !slices.Equal(got, want) {
		t.Fatalf("certified ready: the name has %v, want %v", got, want)
	}
	// The outsider again: a forged error, a token-proven error, a ready
	// from its own address: the name keeps the master's address.
	report(t, s, "node-2", api.StageError, outsider, "", nil)
	report(t, s, "node-2", api.StageError, "10.77.0.12", testToken("node-2"), nil)
	report(t, s, "node-2", api.StageReady, outsider, "", minion)
	if got := sink.now(); !slices.Equal(got, want) {
		t.Fatalf("after forged reports the name has %v, want %v", got, want)
	}
	// The master's own agent says it is not ready: accepted, shown, but
	// whether it serves is for the /readyz checks to say.
	if code := report(t, s, "node-2", api.StageError, "10.77.0.12", "", master); code != http.StatusOK {
		t.Fatalf("certified error: %d", code)
	}
	if st, _ := s.state.get("node-2"); st.State != api.StageError {
		t.Errorf("the master's own error is not shown: %+v", st)
	}
	if got := sink.now(); !slices.Equal(got, want) {
		t.Errorf("after the master's own error report the name has %v, want %v (until a check fails)", got, want)
	}
	// A minion's certified ready never puts it in the name.
	report(t, s, "node-1", api.StageReady, "10.77.0.100", "", minion)
	if got := sink.now(); !slices.Equal(got, want) {
		t.Errorf("after a minion's ready the name has %v, want %v", got, want)
	}
}

func statusEqual(a, b MachineStatus) bool {
	return a.State == b.State && a.IP == b.IP && a.Addr == b.Addr && a.LastEvent == b.LastEvent && a.Events == b.Events && a.LastSeen.Equal(b.LastSeen)
}

// Host names follow the static address, this server's lease, or an
// authenticated report's address, never a request anyone could send.
func TestHostsFollowOnlyAddressesAReportProved(t *testing.T) {
	s, ca := caFixture(t, strings.Replace(siteTOML, "%s", "none", 1), nil)
	sink := &recSink{}
	s.cfg.Masters = sink
	getFrom(s.Handler(), "10.77.0.150", api.ProfilePath("node-1")) // anyone may ask in enrolment none
	report(t, s, "node-1", api.StageInit, "10.77.0.151", "", nil)  // refused
	s.notifyMasters()
	if _, ok := sink.hosts["node-1"]; ok {
		t.Fatalf("node-1 named by an unproven address: %v", sink.hosts)
	}
	// In enrolment none anyone may get a boot token: it names no host either.
	report(t, s, "node-1", api.StageInit, "10.77.0.152", testToken("node-1"), nil)
	if _, ok := sink.hosts["node-1"]; ok {
		t.Fatalf("node-1 named by a boot token's report in enrolment none: %v", sink.hosts)
	}
	report(t, s, "node-1", api.StageInit, "10.77.0.153", "", certOf(t, machineCert(t, ca, "node-1", "minion", netip.Addr{})))
	want := map[string]netip.Addr{"node-1": netip.MustParseAddr("10.77.0.153"), "node-2": netip.MustParseAddr("10.77.0.12")}
	if sink.domain != "lab.example" || !maps.Equal(sink.hosts, want) {
		t.Errorf("hosts %s %v, want lab.example %v", sink.domain, sink.hosts, want)
	}
}

// twoMasters is the fixture site with node-2 and a node-3 as masters on
// loopback addresses, where the test runs their stand-in API servers.
var twoMasters = strings.Replace(strings.Replace(siteTOML, "%s", "none", 1), "10.77.0.12/24", "127.0.0.2/8", 1) + `
[[machine]]
name = "node-3"
mac = "52:54:00:00:00:03"
role = "master"
image = "img-master"
address = "127.0.0.3/8"
`

// fakeAPI is a stand-in kube-apiserver's /readyz on addr:port with the
// master's site certificate; a unit test needs no Kubernetes.
type fakeAPI struct {
	srv *http.Server
	ln  net.Listener
}

func startFakeAPI(t *testing.T, cert tls.Certificate, addr string) *fakeAPI {
	t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port may be taken for a moment
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" || r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		w.Write([]byte("ok"))
	}), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert}}
	go srv.ServeTLS(ln, "", "")
	f := &fakeAPI{srv: srv, ln: ln}
	t.Cleanup(f.stop)
	return f
}

func (f *fakeAPI) stop() { f.srv.Close() }

// freePortOnBoth finds a port free on both loopback addresses.
func freePortOnBoth(t *testing.T, a, b string) int {
	t.Helper()
	for range 20 {
		l1, err := net.Listen("tcp", a+":0")
		if err != nil {
			t.Fatal(err)
		}
		port := l1.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", net.JoinHostPort(b, strconv.Itoa(port)))
		l1.Close()
		if err == nil {
			l2.Close()
			return port
		}
	}
	t.Fatal("no port free on both addresses")
	return 0
}

func waitFor(t *testing.T, what string, within time.Duration, ok func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !ok() {
		if time.Since(start) > within {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// A master whose /readyz stops answering leaves the name within the bound
// (checks every APICheckEvery, poolFailAfter failures), comes back when it
// answers again, and a restarted boot server serves the pool at once.
func TestPoolFollowsHealthAndOutlivesARestart(t *testing.T) {
	const every = 200 * time.Millisecond
	s, ca := caFixture(t, twoMasters, func(c *Config) { c.APICheckEvery, c.APICheckTimeout = every, every })
	port := freePortOnBoth(t, "127.0.0.2", "127.0.0.3")
	s.apiPort = port
	cert2 := machineCert(t, ca, "node-2", "master", netip.MustParseAddr("127.0.0.2"))
	cert3 := machineCert(t, ca, "node-3", "master", netip.MustParseAddr("127.0.0.3"))
	api2 := startFakeAPI(t, cert2, "127.0.0.2:"+strconv.Itoa(port))
	api3 := startFakeAPI(t, cert3, "127.0.0.3:"+strconv.Itoa(port))
	sink := &recSink{}
	s.cfg.Masters = sink
	for _, m := range []struct {
		name string
		c    tls.Certificate
		from string
	}{{"node-2", cert2, "127.0.0.2"}, {"node-3", cert3, "127.0.0.3"}} {
		if code := report(t, s, m.name, api.StageReady, m.from, "", certOf(t, m.c)); code != http.StatusOK {
			t.Fatalf("%s ready: %d", m.name, code)
		}
	}
	both := []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")}
	if got := sink.now(); !slices.Equal(got, both) {
		t.Fatalf("the name has %v, want %v", got, both)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done, _, _ := serveInBackground(t, ctx, s)
	time.Sleep(3 * every) // a few checks that pass: nothing changes
	if got := sink.now(); !slices.Equal(got, both) {
		t.Fatalf("healthy masters: the name has %v, want %v", got, both)
	}

	api2.stop()
	took := waitFor(t, "node-2 leaves the name", 20*every, func() bool { return slices.Equal(sink.now(), both[1:]) })
	t.Logf("figure: a master whose /readyz stopped left the name %v later (checks every %v, %d failures)", took.Round(10*time.Millisecond), every, poolFailAfter)
	var st []PoolMember
	if err := json.Unmarshal(get(t, s.Handler(), api.PathAPIPool).Body.Bytes(), &st); err != nil || len(st) != 2 || st[0].Healthy || st[0].LastErr == "" || !st[1].Healthy {
		t.Errorf("GET %s: %+v (%v): node-2 should be listed unhealthy with its error, node-3 healthy", api.PathAPIPool, st, err)
	}
	// Its agent's heartbeat does not bring it back while checks fail.
	report(t, s, "node-2", api.StageReady, "127.0.0.2", "", certOf(t, cert2))
	if got := sink.now(); !slices.Equal(got, both[1:]) {
		t.Errorf("a heartbeat put a failing master back: %v", got)
	}
	api2 = startFakeAPI(t, cert2, "127.0.0.2:"+strconv.Itoa(port))
	waitFor(t, "node-2 is back in the name", 20*every, func() bool { return slices.Equal(sink.now(), both) })

	// Neither answers: the name fails open and serves both, rather than
	// nothing, while the pool lists both unhealthy.
	api2.stop()
	api3.stop()
	waitFor(t, "both members unhealthy", 20*every, func() bool {
		st := s.APIPool()
		return len(st) == 2 && !st[0].Healthy && !st[1].Healthy
	})
	if got := sink.now(); !slices.Equal(got, both) {
		t.Errorf("with no healthy member the name serves %v, want every member %v", got, both)
	}

	// Restart: the new server serves both before any report or check.
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(s.cfg.StateDir, PoolFile)); err != nil || !strings.Contains(string(b), "node-3") {
		t.Fatalf("pool file: %v %s", err, b)
	}
	s2, err := New(s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	sink2 := &recSink{}
	s2.cfg.Masters = sink2
	s2.notifyMasters()
	if got := sink2.now(); !slices.Equal(got, both) {
		t.Errorf("after a restart the name has %v, want %v", got, both)
	}
}

// serveInBackground runs s on loopback; it returns the HTTP and HTTPS
// addresses and where Serve's error arrives.
func serveInBackground(t *testing.T, ctx context.Context, s *Server) (done chan error, httpAddr, httpsAddr string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.cfg.Poll = time.Hour
	done = make(chan error, 1)
	finished := make(chan struct{})
	go func() { done <- s.Serve(ctx, ln, tln); close(finished) }()
	t.Cleanup(func() {
		select {
		case <-finished:
		case <-time.After(15 * time.Second):
			t.Error("the server did not stop")
		}
	})
	return done, ln.Addr().String(), tln.Addr().String()
}

// Over the real HTTPS listener: the machine's certificate proves it; a
// certificate of another CA naming the same machine does not get past the
// handshake; no certificate and no token is refused.
func TestReportsOverHTTPSAreProvenByTheMachinesCertificate(t *testing.T) {
	s, ca := caFixture(t, twoMasters, nil)
	s.apiPort = 1 // nothing answers there: the pool's checks fail on loopback
	_, _, httpsAddr := serveInBackground(t, t.Context(), s)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert())
	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs, ServerName: "127.0.0.1"}}}
	}
	url := "https://" + httpsAddr + api.PathEvents
	post := func(c *http.Client, machine, stage string) (int, error) {
		b, _ := json.Marshal(api.Event{Machine: machine, Stage: stage})
		resp, err := c.Post(url, "application/json", bytes.NewReader(b))
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	cert2 := machineCert(t, ca, "node-2", "master", netip.MustParseAddr("127.0.0.2"))
	if code, err := post(client(cert2), "node-2", api.StageReady); err != nil || code != http.StatusOK {
		t.Fatalf("node-2 with its certificate: %d %v", code, err)
	}
	if got := s.ReadyMasters(); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("127.0.0.2")}) {
		t.Errorf("the name after node-2's certified ready: %v", got)
	}
	if code, err := post(client(cert2), "node-3", api.StageReady); err != nil || code != http.StatusForbidden {
		t.Errorf("node-2's certificate for node-3: %d %v, want 403", code, err)
	}
	if code, err := post(client(), "node-3", api.StageReady); err != nil || code != http.StatusForbidden {
		t.Errorf("no certificate, no token: %d %v, want 403", code, err)
	}
	other, _, err := pki.LoadOrCreate(t.TempDir(), "lab", nil)
	if err != nil {
		t.Fatal(err)
	}
	forged := machineCert(t, other, "node-3", "master", netip.MustParseAddr("127.0.0.3"))
	if code, err := post(client(forged), "node-3", api.StageReady); err == nil {
		t.Errorf("a certificate of another CA was let through the handshake: %d", code)
	}
	if got := s.ReadyMasters(); slices.Contains(got, netip.MustParseAddr("127.0.0.3")) {
		t.Errorf("node-3 in the name after forged reports: %v", got)
	}
	// The HTTPS listener's certificate is the site CA's, for the address.
	conn, err := tls.Dial("tcp", httpsAddr, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("the HTTPS listener's certificate does not verify against the site CA: %v", err)
	}
	conn.Close()
}

// What the machine runs: its agent's poster, set up from its profile and
// the files stage 1 wrote, reports over HTTPS with the certificate and puts
// the master in the name; without the certificate it falls back to the
// boot's token, which shows on the status page but changes no pool.
func TestAMastersAgentJoinsThePoolWithItsCertificateFiles(t *testing.T) {
	s, ca := caFixture(t, twoMasters, nil)
	s.apiPort = 1
	_, httpAddr, httpsAddr := serveInBackground(t, t.Context(), s)
	tl, err := issuedTo(t, ca, &node.Config{Machine: "node-3", Hostname: "node-3", Role: "master",
		Cluster: &node.Cluster{APIName: "api.lab.example", ServiceCIDR: "10.96.0.0/12"}}, netip.MustParseAddr("127.0.0.3"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := events.TLSFiles{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "node.pem"), Key: filepath.Join(dir, "node-key.pem")}
	for p, body := range map[string]string{files.CA: tl.CA, files.Cert: tl.Cert, files.Key: tl.Key} {
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := &node.Config{Machine: "node-3", Cluster: &node.Cluster{BootServer: "http://" + httpAddr, ReportURL: "https://" + httpsAddr}}

	// The certificate missing: the token, over HTTP.
	bad := files
	bad.Cert = filepath.Join(dir, "absent.pem")
	p, err := events.Poster{}.ForMachine(cfg, bad, testToken("node-3"))
	if err == nil || !strings.HasPrefix(p.URL, "http://") {
		t.Fatalf("without its certificate: %v, %s", err, p.URL)
	}
	if err := p.Send(t.Context(), api.Event{Stage: api.StageReady}); err != nil {
		t.Fatalf("token report: %v", err)
	}
	if got := s.ReadyMasters(); len(got) != 0 {
		t.Fatalf("a token report put %v in the name", got)
	}
	p, err = events.Poster{}.ForMachine(cfg, files, testToken("node-3"))
	if err != nil || !strings.HasPrefix(p.URL, "https://") || p.Token != "" {
		t.Fatalf("with its certificate: %v, %s, token %q", err, p.URL, p.Token)
	}
	reply, err := p.Report(t.Context(), api.Event{Stage: api.StageReady})
	if err != nil {
		t.Fatalf("certified report: %v", err)
	}
	if reply.API == nil || reply.API.Name != "api.lab.example" || !slices.Equal(reply.API.Addrs, []string{"127.0.0.3"}) {
		t.Errorf("the reply names the pool %+v, want api.lab.example [127.0.0.3]", reply.API)
	}
	if got, want := s.ReadyMasters(), []netip.Addr{netip.MustParseAddr("127.0.0.3")}; !slices.Equal(got, want) {
		t.Errorf("the name after the agent's report: %v, want %v", got, want)
	}
	if err := p.Journal(t.Context(), "kube-apiserver.service", []byte("up\n")); err != nil {
		t.Errorf("journal upload with the certificate: %v", err)
	}
}
