package stage1

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/profiles/node"
)

const digestA = "sha256:" + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

func TestParseCmdlineQuotesAndBareWords(t *testing.T) {
	kv := ParseCmdline(`console=ttyS0 quiet plinth.server=http://10.0.0.1:8080 msg="two words" init=/x`)
	for k, want := range map[string]string{"console": "ttyS0", "quiet": "", "plinth.server": "http://10.0.0.1:8080", "msg": "two words", "init": "/x"} {
		if got, ok := kv[k]; !ok || got != want {
			t.Errorf("%s = %q (%v), want %q", k, got, ok, want)
		}
	}
}

func TestParseParamsCommandLineWinsAndNetbootNeedsPins(t *testing.T) {
	p, err := ParseParams("plinth.server=http://a:1 plinth.machine=m1 plinth.rootfs="+digestA, "plinth.machine=m2 plinth.rescue=1")
	if err != nil {
		t.Fatal(err)
	}
	if p.Machine != "m2" || p.Server != "http://a:1" || !p.Rescue || p.Init != "/sbin/init" {
		t.Errorf("params %+v", p)
	}
	for _, tc := range []struct{ cmdline, want string }{
		{"plinth.server=http://a plinth.rootfs=" + digestA, "plinth.machine is not"},
		{"plinth.server=http://a plinth.machine=m", "must be pinned by digest"},
		{"plinth.server=ftp://a plinth.machine=m plinth.rootfs=" + digestA, "want an http"},
		{"plinth.rootfs=sha256:XYZ", "plinth.rootfs"},
	} {
		if _, err := ParseParams("", tc.cmdline); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want %q", tc.cmdline, err, tc.want)
		}
	}
}

func FuzzParseParams(f *testing.F) {
	f.Add("console=ttyS0 plinth.server=http://10.0.0.1 plinth.machine=a plinth.rootfs=" + digestA)
	f.Add(`a="b c" "d=e" =f plinth.rescue`)
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseParams("", s)
		if err == nil && p.Server != "" && (p.Machine == "" || p.Rootfs == "") {
			t.Fatalf("accepted netboot without machine or digest: %+v", p)
		}
	})
}

// flakyServer serves body, dropping the connection after cut bytes on the
// first request, and honours Range afterwards.
func flakyServer(t *testing.T, body []byte, cut int) (*httptest.Server, *atomic.Int32) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		start := 0
		if rg := r.Header.Get("Range"); rg != "" {
			start, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"))
			w.Header().Set("Content-Range", "bytes "+strconv.Itoa(start)+"-"+strconv.Itoa(len(body)-1)+"/"+strconv.Itoa(len(body)))
			w.Header().Set("Content-Length", strconv.Itoa(len(body)-start))
			w.WriteHeader(http.StatusPartialContent)
		} else {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		if n == 1 {
			w.Write(body[:cut])
			w.(http.Flusher).Flush()
			hj, _ := w.(http.Hijacker)
			c, _, _ := hj.Hijack()
			c.Close()
			return
		}
		w.Write(body[start:])
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func TestDownloadResumesWithRangeAfterADroppedConnection(t *testing.T) {
	body := []byte(strings.Repeat("0123456789", 50000))
	srv, calls := flakyServer(t, body, 123456)
	out := filepath.Join(t.TempDir(), "rootfs")
	f := &Fetcher{Backoff: time.Millisecond}
	n, err := f.Download(context.Background(), srv.URL, out, digestOf(body))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	if n != int64(len(body)) || string(got) != string(body) || calls.Load() != 2 {
		t.Errorf("n=%d len=%d calls=%d", n, len(got), calls.Load())
	}
}

func TestDownloadRefusesContentWithTheWrongDigest(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("tampered")) }))
	defer srv.Close()
	out := filepath.Join(t.TempDir(), "rootfs")
	_, err := (&Fetcher{Backoff: time.Millisecond}).Download(context.Background(), srv.URL, out, digestOf([]byte("good")))
	if !errors.Is(err, ErrDigest) || !strings.Contains(err.Error(), "want "+digestOf([]byte("good"))) {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Error("the refused file was kept")
	}
}

func TestGetRetriesServerErrorsButNotClientErrors(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/missing":
			http.Error(w, "no machine x", 404)
		case n.Add(1) < 3:
			http.Error(w, "busy", 503)
		default:
			w.Write([]byte(`{"hostname":"a"}`))
		}
	}))
	defer srv.Close()
	f := &Fetcher{Backoff: time.Millisecond}
	b, err := f.Get(context.Background(), srv.URL+"/ok", 1024)
	if err != nil || string(b) != `{"hostname":"a"}` || n.Load() != 3 {
		t.Errorf("Get = %q, %v after %d calls", b, err, n.Load())
	}
	if _, err := f.Get(context.Background(), srv.URL+"/missing", 1024); err == nil || !strings.Contains(err.Error(), "no machine x") {
		t.Errorf("404: %v", err)
	}
}

func TestRenderWritesIdentityNetworkAndProfile(t *testing.T) {
	dir := t.TempDir()
	root := role.DirRoot(dir)
	os.MkdirAll(filepath.Join(dir, "lib", "systemd"), 0o755)
	os.WriteFile(filepath.Join(dir, "lib", "systemd", "systemd-networkd"), nil, 0o755)
	cfg := &node.Config{Machine: "m1", Hostname: "node-one", Domain: "lab.example",
		Network: &node.Network{Address: "10.0.0.5/24", Gateway: "10.0.0.1", DNS: []string{"10.0.0.2"}},
		Files:   []node.File{{Path: "/etc/motd", Mode: 0o644, Content: "hello\n"}}}
	n := &NetInfo{Iface: "eth0", MAC: "52:54:00:00:00:01", Address: "10.0.0.99/24", DNS: []string{"10.0.0.9"}}
	if err := Render(root, cfg, n); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"etc/hostname":                          "node-one\n",
		"etc/hosts":                             "127.0.0.1\tlocalhost\n127.0.1.1\tnode-one.lab.example node-one\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"etc/resolv.conf":                       "search lab.example\nnameserver 10.0.0.2\n",
		"etc/systemd/network/10-plinth.network": "[Match]\nMACAddress=52:54:00:00:00:01\n\n[Network]\nAddress=10.0.0.5/24\nGateway=10.0.0.1\nDNS=10.0.0.2\n",
		"etc/motd":                              "hello\n",
	}
	for p, w := range want {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil || string(b) != w {
			t.Errorf("%s = %q, %v; want %q", p, b, err, w)
		}
	}
	st, err := os.Stat(filepath.Join(dir, "etc", "plinth", "config.json"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("profile copy: %v %v", st, err)
	}
	if l, err := os.Readlink(filepath.Join(dir, "etc/systemd/system/multi-user.target.wants/systemd-networkd.service")); err != nil || !strings.HasSuffix(l, "systemd-networkd.service") {
		t.Errorf("networkd not enabled: %q %v", l, err)
	}
}

func TestInstallAgentEnablesItsUnit(t *testing.T) {
	dir := t.TempDir()
	if err := InstallAgent(role.DirRoot(dir), []byte("\x7fELF")); err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile(filepath.Join(dir, "etc/systemd/system/plinth-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"After=multi-user.target", "ExecStart=/usr/local/sbin/plinth-agent", "StandardOutput=journal+console", "WantedBy=multi-user.target"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q:\n%s", want, unit)
		}
	}
	if l, _ := os.Readlink(filepath.Join(dir, "usr/local/sbin/plinth-agent")); l != "../lib/plinth/bb" {
		t.Errorf("agent link -> %q", l)
	}
	if _, err := os.Lstat(filepath.Join(dir, "etc/systemd/system/multi-user.target.wants/plinth-agent.service")); err != nil {
		t.Error("agent not enabled")
	}
}

func TestWriteUnitRefusesLineBreaksInValues(t *testing.T) {
	dir := t.TempDir()
	err := role.WriteUnit(role.DirRoot(dir), role.Unit{Name: "x.service", Options: []*unit.UnitOption{
		unit.NewUnitOption("Service", "ExecStart", "/bin/true\nExecStartPre=/bin/evil"),
	}})
	if err == nil || !strings.Contains(err.Error(), "line break") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "etc/systemd/system/x.service")); !os.IsNotExist(err) {
		t.Error("a unit was written anyway")
	}
}

func TestHTTPClientTrustsTheBakedInCA(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	defer srv.Close()
	if _, err := HTTPClient("/nonexistent").Get(srv.URL); err == nil {
		t.Fatal("an unknown CA was trusted")
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	resp, err := HTTPClient(ca).Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}
