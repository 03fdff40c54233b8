package stage1

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
)

// fakeMachine stands in for the kernel: it records what stage 1 asked.
type fakeMachine struct {
	mu         sync.Mutex
	cmdline    string
	loaded     []string
	missing    map[string]bool
	netFails   int // Up fails this many times first
	netCalls   int
	mountedSrc string
	switched   string
	shells     int
	stopShells int // after this many rescue shells, call cancel
	cancel     func()
	onLoad     func(path string) error // a fake kernel's reaction to a module
	reboots    int
	params     map[string]string // module parameters, by path
}

func (f *fakeMachine) MountBasics() error          { return nil }
func (f *fakeMachine) Console() (io.Writer, error) { return nil, errors.New("no console in tests") }
func (f *fakeMachine) Cmdline() (string, error)    { return f.cmdline, nil }
func (f *fakeMachine) Self() ([]byte, error)       { return []byte("\x7fELF bb"), nil }
func (f *fakeMachine) Reboot() error {
	f.mu.Lock()
	f.reboots++
	f.mu.Unlock()
	if f.cancel != nil {
		f.cancel()
	}
	return errors.New("reboot (fake)")
}
func (f *fakeMachine) LoadModule(p, params string) error {
	if params != "" {
		if f.params == nil {
			f.params = map[string]string{}
		}
		f.params[p] = params
	}
	if f.missing[p] {
		return fmt.Errorf("open %s: no such file or directory", p)
	}
	if f.onLoad != nil {
		if err := f.onLoad(p); err != nil {
			return err
		}
	}
	f.loaded = append(f.loaded, p)
	return nil
}
func (f *fakeMachine) Up(ctx context.Context, iface string) (*NetInfo, error) {
	f.netCalls++
	if f.netCalls <= f.netFails {
		return nil, errors.New("dhcp on eth0: no DHCP answer")
	}
	return &NetInfo{Iface: "eth0", MAC: "52:54:00:00:00:01", Address: "10.0.2.15/24", DNS: []string{"10.0.2.3"}, DHCP: true}, nil
}
func (f *fakeMachine) MountRoot(squashfs, runDir, newRoot string) error {
	f.mountedSrc = squashfs
	return os.MkdirAll(filepath.Join(newRoot, "sbin"), 0o755)
}
func (f *fakeMachine) SwitchRoot(newRoot, init string) error {
	f.switched = init
	return errors.New("switched (fake)")
}
func (f *fakeMachine) Shell(context.Context) error {
	f.shells++
	if f.shells == f.stopShells {
		f.cancel()
	}
	return nil
}

// newStage1 is a Stage1 over fake machine m and an initramfs at dir.
func newStage1(t *testing.T, m *fakeMachine, initramfs string) (*Stage1, *bytes.Buffer) {
	var out bytes.Buffer
	run := t.TempDir()
	return &Stage1{
		Mounter: m, Modules: m, Net: m, Kernel: m, Rescue: m,
		Con:     &Console{W: &syncWriter{w: &out}},
		Fetch:   &Fetcher{Backoff: fast},
		Files:   os.DirFS(initramfs),
		RunDir:  filepath.Join(run, "plinth"),
		NewRoot: filepath.Join(run, "newroot"),
		Retry:   fast,
	}, &out
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

func writeTree(t *testing.T, files map[string]string) string {
	dir := t.TempDir()
	for p, c := range files {
		full := filepath.Join(dir, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const rootfsBytes = "hsqs pretend squashfs"

func embeddedInitramfs(t *testing.T, digest string) string {
	return writeTree(t, map[string]string{
		"etc/plinth/modules":     "lib/modules/6.1/kernel/fs/squashfs/squashfs.ko\nlib/modules/6.1/kernel/fs/overlayfs/overlay.ko\n",
		"etc/plinth/cmdline":     "plinth.init=/lib/systemd/systemd",
		"plinth/rootfs.squashfs": rootfsBytes,
		"plinth/rootfs.digest":   digest + "\n",
		"plinth/config.json":     `{"version":2,"machine":"smoke-1","hostname":"smoke-one","domain":"smoke.example"}`,
	})
}

func TestRunEmbeddedVerifiesMountsConfiguresAndSwitches(t *testing.T) {
	m := &fakeMachine{cmdline: "console=ttyS0"}
	s, out := newStage1(t, m, embeddedInitramfs(t, digestOf([]byte(rootfsBytes))))
	err := s.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "switched (fake)") {
		t.Fatalf("Run = %v\n%s", err, out)
	}
	if m.mountedSrc != EmbeddedRootfs || m.switched != "/lib/systemd/systemd" || len(m.loaded) != 2 || m.netCalls != 0 {
		t.Errorf("mounted %q, switched to %q, loaded %v, network %d calls", m.mountedSrc, m.switched, m.loaded, m.netCalls)
	}
	if b, _ := os.ReadFile(filepath.Join(s.NewRoot, "etc/hostname")); string(b) != "smoke-one\n" {
		t.Errorf("hostname file %q", b)
	}
	if _, err := os.Lstat(filepath.Join(s.NewRoot, "usr/local/sbin/plinth-agent")); err != nil {
		t.Errorf("agent not installed: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var stages []string
	for _, l := range lines {
		stages = append(stages, strings.SplitN(strings.TrimPrefix(l, "plinth: ["), "]", 2)[0])
	}
	if got := strings.Join(stages, " "); got != "init modules profile rootfs mount config switch switch" {
		t.Errorf("one line per step, in order; got %q:\n%s", got, out)
	}
}

func TestRunEmbeddedRefusesACorruptRootfsAndHaltsSayingSo(t *testing.T) {
	want := digestOf([]byte("the rootfs as built"))
	m := &fakeMachine{cmdline: "console=ttyS0"}
	s, out := newStage1(t, m, embeddedInitramfs(t, want))
	err := s.Run(context.Background())
	if !IsPermanent(err) || !errors.Is(err, ErrDigest) || m.mountedSrc != "" {
		t.Fatalf("Run = %v (mounted %q)", err, m.mountedSrc)
	}
	line := "plinth: [rootfs] REFUSED: sha256 mismatch: got " + digestOf([]byte(rootfsBytes)) + ", want " + want + "\n"
	if !strings.Contains(out.String(), line) {
		t.Errorf("console lacks %q:\n%s", line, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out.Reset()
	s.Halt(ctx, err)
	if !strings.HasPrefix(out.String(), line) || !strings.Contains(out.String(), "plinth: [halt] boot stopped: [rootfs] sha256 mismatch") {
		t.Errorf("halt does not repeat the refusal:\n%s", out)
	}
}

func TestRunEmbeddedParamDigestWinsOverTheFile(t *testing.T) {
	good := digestOf([]byte(rootfsBytes))
	m := &fakeMachine{cmdline: "plinth.rootfs=" + digestA}
	s, out := newStage1(t, m, embeddedInitramfs(t, good))
	if err := s.Run(context.Background()); !errors.Is(err, ErrDigest) || !strings.Contains(out.String(), "want "+digestA) {
		t.Errorf("Run = %v: the command line's digest was not the one checked\n%s", err, out)
	}
}

func TestRunGoesOnWhenAModuleIsMissingAndNamesIt(t *testing.T) {
	m := &fakeMachine{missing: map[string]bool{"/lib/modules/6.1/kernel/fs/squashfs/squashfs.ko": true}}
	s, out := newStage1(t, m, embeddedInitramfs(t, digestOf([]byte(rootfsBytes))))
	s.Run(context.Background())
	for _, want := range []string{
		"plinth: [modules] FAILED /lib/modules/6.1/kernel/fs/squashfs/squashfs.ko: open",
		"plinth: [modules] 1 of 2 modules loaded; failed: squashfs.ko",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
	if m.switched == "" {
		t.Error("boot stopped at a missing module")
	}
}

// bootServer serves one machine's profile and the rootfs, optionally
// corrupting the first n artifact responses, and records events.
type bootServer struct {
	*httptest.Server
	mu      sync.Mutex
	events  []api.Event
	tokens  []string
	corrupt int
	// Requests that came over TLS: profiles and events.
	tlsProfiles, tlsEvents int
}

func newBootServer(t *testing.T, profile string, rootfs []byte) *bootServer {
	b := &bootServer{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.ProfilePath("m1"), func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.tokens = append(b.tokens, r.Header.Get(api.HeaderToken))
		if r.TLS != nil {
			b.tlsProfiles++
		}
		b.mu.Unlock()
		w.Write([]byte(profile))
	})
	mux.HandleFunc("GET "+api.ArtifactPath(strings.TrimPrefix(digestOf(rootfs), "sha256:")), func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		bad := b.corrupt > 0
		b.corrupt--
		b.mu.Unlock()
		if bad {
			w.Write([]byte("evil"))
			return
		}
		w.Write(rootfs)
	})
	mux.HandleFunc("POST "+api.PathEvents, func(w http.ResponseWriter, r *http.Request) {
		var e api.Event
		json.NewDecoder(r.Body).Decode(&e)
		if !api.KnownStage(e.Stage) {
			// The boot server would refuse it.
			t.Errorf("stage 1 posted unknown stage %q", e.Stage)
		}
		b.mu.Lock()
		b.events = append(b.events, e)
		if r.TLS != nil {
			b.tlsEvents++
		}
		b.mu.Unlock()
	})
	b.Server = httptest.NewServer(mux)
	t.Cleanup(b.Close)
	return b
}

func (b *bootServer) stages() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var s []string
	for _, e := range b.events {
		s = append(s, e.Stage)
	}
	return strings.Join(s, " ")
}

func TestRunNetbootFetchesRetriesAndReportsEveryStep(t *testing.T) {
	rootfs := []byte(strings.Repeat("squash", 1000))
	srv := newBootServer(t, `{"version":2,"machine":"m1","hostname":"node-one","cluster":{"name":"lab"}}`, rootfs)
	srv.corrupt = 1
	m := &fakeMachine{netFails: 2, cmdline: fmt.Sprintf("plinth.server=%s plinth.machine=m1 plinth.rootfs=%s plinth.token=tok", srv.URL, digestOf(rootfs))}
	s, out := newStage1(t, m, t.TempDir())
	err := s.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "switched (fake)") {
		t.Fatalf("Run = %v\n%s", err, out)
	}
	if m.netCalls != 3 || m.mountedSrc != filepath.Join(s.RunDir, "rootfs.squashfs") {
		t.Errorf("network %d calls, mounted %q", m.netCalls, m.mountedSrc)
	}
	for _, want := range []string{
		"plinth: [network] FAILED: dhcp on eth0: no DHCP answer",
		"plinth: [network] retrying in",
		"plinth: [network] eth0 52:54:00:00:00:01 10.0.2.15/24 via dhcp",
		"plinth: [rootfs] REFUSED: sha256 mismatch: got " + digestOf([]byte("evil")) + ", want " + digestOf(rootfs) + "\n",
		"plinth: [rootfs] " + digestOf(rootfs) + " fetched and verified",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
	if got, err := os.ReadFile(m.mountedSrc); err != nil || string(got) != string(rootfs) {
		t.Errorf("downloaded rootfs: %v", err)
	}
	// Events sent before the network was up were held, not lost; the
	// refusal was posted as an error.
	want := "init modules error network error network network profile error rootfs rootfs mount config switch"
	if got := srv.stages(); !strings.HasPrefix(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	if srv.tokens[0] != "tok" {
		t.Errorf("token %q", srv.tokens)
	}
}

func TestRunEmbeddedStopsOnAProfileErrorButRescueRetries(t *testing.T) {
	dir := embeddedInitramfs(t, digestOf([]byte(rootfsBytes)))
	os.WriteFile(filepath.Join(dir, "plinth/config.json"), []byte(`{"version":2,"hostname":"Bad_Name"}`), 0o644)
	m := &fakeMachine{}
	s, _ := newStage1(t, m, dir)
	if err := s.Run(context.Background()); !IsPermanent(err) || !strings.Contains(err.Error(), "[profile]") {
		t.Fatalf("Run = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The fake shell returns at once, as if the operator exited it; the
	// third one ends the test.
	m = &fakeMachine{cmdline: "plinth.rescue=1", stopShells: 3, cancel: cancel}
	s, out := newStage1(t, m, dir)
	if err := s.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v", err)
	}
	if n := strings.Count(out.String(), "exit it to retry [profile]"); n != 3 {
		t.Errorf("%d rescue lines:\n%s", n, out)
	}
}

func TestRunNetbootRetriesAnUnknownMachineUntilTheServerKnowsIt(t *testing.T) {
	rootfs := []byte("root")
	var known bool
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.URL.Path == api.ProfilePath("m1") && !known:
			known = true // the operator adds it
			http.Error(w, "no machine m1", http.StatusNotFound)
		case r.URL.Path == api.ProfilePath("m1"):
			w.Write([]byte(`{"version":2,"hostname":"n1"}`))
		case strings.HasPrefix(r.URL.Path, api.PathArtifacts):
			w.Write(rootfs)
		}
	}))
	defer srv.Close()
	m := &fakeMachine{cmdline: fmt.Sprintf("plinth.server=%s plinth.machine=m1 plinth.rootfs=%s", srv.URL, digestOf(rootfs))}
	s, out := newStage1(t, m, t.TempDir())
	if err := s.Run(context.Background()); m.switched == "" {
		t.Fatalf("Run = %v\n%s", err, out)
	}
	if !strings.Contains(out.String(), "plinth: [profile] FAILED: profile "+srv.URL+"/v1/machines/m1/config: POST") {
		t.Errorf("console:\n%s", out)
	}
}

func TestRunStopsOnABadCommandLine(t *testing.T) {
	m := &fakeMachine{cmdline: "plinth.server=http://x plinth.machine=m"}
	s, out := newStage1(t, m, t.TempDir())
	err := s.Run(context.Background())
	if !IsPermanent(err) || !strings.Contains(out.String(), "plinth: [init] FAILED: plinth.server is set but plinth.rootfs is not") {
		t.Errorf("Run = %v\n%s", err, out)
	}
}

// A boot that stopped reboots after plinth.reboot, saying when.
func TestHaltRebootsAfterTheStatedDelay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := &fakeMachine{cancel: cancel}
	s, out := newStage1(t, m, t.TempDir())
	s.Params.Reboot = 50 * time.Millisecond
	s.Halt(ctx, errors.New("[network] no NIC"))
	if m.reboots != 1 {
		t.Errorf("%d reboots, want 1", m.reboots)
	}
	for _, want := range []string{"plinth: [halt] boot stopped: [network] no NIC", "plinth: [halt] rebooting in 0s (plinth.reboot=off keeps the machine halted)", "plinth: [halt] rebooting\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
}

func TestRebootParam(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{"", DefaultReboot, false},
		{"plinth.reboot=off", 0, false},
		{"plinth.reboot=0", 0, false},
		{"plinth.reboot=90s", 90 * time.Second, false},
		{"plinth.reboot=30", 30 * time.Second, false},
		{"plinth.reboot=soon", DefaultReboot, true},
		{"plinth.reboot=-5s", DefaultReboot, true},
	} {
		p, err := ParseParams("", tc.in)
		if (err != nil) != tc.bad || p.Reboot != tc.want {
			t.Errorf("%q: Reboot %s, err %v; want %s, error %v", tc.in, p.Reboot, err, tc.want, tc.bad)
		}
	}
}
