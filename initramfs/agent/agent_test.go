package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/initramfs/stage1/events"
	"github.com/plinth-dev/plinth/profiles/node"
)

func readSample(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "mountinfo", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// bootedMountinfo is what a machine booted by plinth shows after
// switch_root: the sample captured on this host in a mount namespace
// (plinth-overlay.txt) with the overlay's paths as stage 1 gives them.
func bootedMountinfo(t *testing.T) string {
	return strings.ReplaceAll(readSample(t, "plinth-overlay.txt"), "/tmp/t/run/", "/run/")
}

func TestCheckMounts(t *testing.T) {
	booted := bootedMountinfo(t)
	for _, tc := range []struct {
		name string
		info string
		want string // "" = no problem
	}{
		{"booted by plinth", booted, ""},
		{"captured in a chroot: overlay paths from before the move", readSample(t, "plinth-overlay.txt"), ""},
		{"an ordinary host on ext4", readSample(t, "host-ext4.txt"), "/ is ext4, not an overlay"},
		{"writable lower", strings.Replace(booted, "ro,nodev,relatime - squashfs /dev/loop0 ro,", "rw,nodev,relatime - squashfs /dev/loop0 rw,", 1), "lower layer /run/plinth/lower is not read-only"},
		{"lower is not squashfs", strings.Replace(booted, "- squashfs /dev/loop0", "- ext4 /dev/vda", 1), "is ext4, not squashfs"},
		{"no lower mount", strings.Replace(booted, "/run/plinth/lower ro", "/srv ro", 1), "is not a mount"},
		{"upper on a disk", strings.Replace(booted, "/run/plinth/rw rw,nodev,relatime - tmpfs tmpfs", "/run/plinth/rw rw,nodev,relatime - ext4 /dev/vda", 1), "not tmpfs"},
		{"root read-only", strings.Replace(booted, "/ / rw,relatime - overlay", "/ / ro,relatime - overlay", 1), "/ is mounted read-only"},
	} {
		ms, err := ParseMountinfo(strings.NewReader(tc.info))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := strings.Join(CheckMounts(ms), "; ")
		if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
			t.Errorf("%s: problems %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestParseMountinfoFields(t *testing.T) {
	ms, err := ParseMountinfo(strings.NewReader(
		"29 22 0:24 / /mnt/with\\040space rw,relatime shared:5 master:1 - tmpfs my\\040tmp rw,size=10k\n"))
	if err != nil {
		t.Fatal(err)
	}
	m := ms[0]
	if m.ID != 29 || m.Parent != 22 || m.Point != "/mnt/with space" || m.FSType != "tmpfs" || m.Source != "my tmp" || m.Super["size"] != "10k" || m.ReadOnly() {
		t.Errorf("parsed %+v", m)
	}
	for _, bad := range []string{"1 2 3 4 5 6 7\n", "x 2 3 / / rw - tmpfs t rw\n", "1 2 3 / / rw -\n"} {
		if _, err := ParseMountinfo(strings.NewReader(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseMountinfo(f *testing.F) {
	f.Add(readSampleF(f, "plinth-overlay.txt"))
	f.Add(readSampleF(f, "host-ext4.txt"))
	f.Add("1 2 3 4 5 6 - x\n")
	f.Add("1 1 0:1 / / rw - overlay o lowerdir=:::\n")
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := ParseMountinfo(strings.NewReader(s))
		if err != nil {
			return
		}
		p := CheckMounts(ms)
		if r := at(ms, "/"); r == nil || r.FSType != "overlay" {
			if len(p) == 0 {
				t.Fatalf("no problem reported for a root that is not an overlay: %q", s)
			}
		}
	})
}

func readSampleF(f *testing.F, name string) string {
	b, err := os.ReadFile(filepath.Join("testdata", "mountinfo", name))
	if err != nil {
		f.Fatal(err)
	}
	return string(b)
}

// fakeSystem is a machine: files by path, a host name, service states.
type fakeSystem struct {
	files    map[string]string
	host     string
	readOnly bool
	states   map[string]string
	urls     map[string]string // URL → body of a 200 answer
	logs     map[string]string // unit → its journal's last lines
	restarts map[string]int
	// statusText: unit → its StatusText
	statusText map[string]string
	pinned     []api.APIPool // what PinAPI was given, in order
}

func (f *fakeSystem) ReadFile(p string) ([]byte, error) {
	if s, ok := f.files[p]; ok {
		return []byte(s), nil
	}
	return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
}
func (f *fakeSystem) Hostname() (string, error) { return f.host, nil }
func (f *fakeSystem) PinAPI(pool api.APIPool, _ string) error {
	f.pinned = append(f.pinned, pool)
	return nil
}
func (f *fakeSystem) PreferLiveAPI(context.Context, int) (string, error) { return "", nil }
func (f *fakeSystem) ProbeWrite(string) error {
	if f.readOnly {
		return &fs.PathError{Op: "create", Path: "/.probe", Err: fs.ErrPermission}
	}
	return nil
}
func (f *fakeSystem) Units(_ context.Context, names []string) map[string]UnitState {
	out := map[string]UnitState{}
	for _, n := range names {
		s, ok := f.states[n]
		if !ok {
			s = "inactive"
		}
		out[n] = UnitState{State: s, Restarts: f.restarts[n], Status: f.statusText[n]}
	}
	return out
}

func (f *fakeSystem) FullJournal(_ context.Context, unit string) []byte {
	return []byte("full journal of " + unit + "\n" + f.logs[unit])
}

func (f *fakeSystem) Journal(_ context.Context, unit string, _ int) string {
	return f.logs[unit]
}

func (f *fakeSystem) Get(_ context.Context, url, _, _, _ string) (string, error) {
	if b, ok := f.urls[url]; ok {
		return b, nil
	}
	return "", fmt.Errorf("dial %s: connection refused", url)
}

// procNetTCP lists etcd's two sockets, sshd on loopback only, a connected
// client and something on 10.77.0.11:8080.
const procNetTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:094B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000:094C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
   3: 0B004D0A:094B 0C004D0A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
   4: 0B004D0A:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 100 0 0 10 0
`

func machine(t *testing.T, server string) *fakeSystem {
	cfg := `{"version":2,"machine":"etcd-1","hostname":"etcd-one","role":"etcd","cluster":{"name":"lab","boot_server":"` + server + `"}}`
	return &fakeSystem{
		host: "etcd-one",
		files: map[string]string{role.ConfigPath: cfg, "/proc/self/mountinfo": bootedMountinfo(t), role.ServicesPath: "etcd.service\n",
			"/proc/net/tcp": procNetTCP, "/proc/net/udp": "header\n"},
		states: map[string]string{"etcd.service": "active", "default.target": "active"},
		urls:   map[string]string{"https://127.0.0.1:2379/health": `{"health":"true","reason":""}`},
	}
}

// eventServer records the events posted to it.
func eventServer(t *testing.T) (*httptest.Server, func() []api.Event) {
	b := newBootServer(t)
	return b.Server, b.events
}

// bootServer is the boot server's side of the agent's wire: it records
// events and journal uploads, and its replies ask for the units in ask.
type bootServer struct {
	*httptest.Server
	mu       sync.Mutex
	got      []api.Event
	journals map[string]string // unit → last upload
	ask      []string
	pool     *api.APIPool // what the reply names, if any
}

func newBootServer(t *testing.T) *bootServer {
	b := &bootServer{journals: map[string]string{}}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if unit, ok := strings.CutPrefix(r.URL.Path, api.LogPath("etcd-1", "")); ok && r.Method == http.MethodPost {
			text, _ := io.ReadAll(r.Body)
			b.mu.Lock()
			b.journals[unit] = string(text)
			b.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
			return
		}
		var e api.Event
		if r.URL.Path != api.PathEvents || json.NewDecoder(r.Body).Decode(&e) != nil {
			http.Error(w, "bad", 400)
			return
		}
		if !api.KnownStage(e.Stage) {
			// The boot server would refuse it.
			t.Errorf("the agent posted unknown stage %q", e.Stage)
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		b.got = append(b.got, e)
		if len(b.ask) == 0 && b.pool == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		_ = json.NewEncoder(w).Encode(api.EventReply{Logs: b.ask, API: b.pool})
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *bootServer) events() []api.Event {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]api.Event(nil), b.got...)
}

func (b *bootServer) journal(unit string) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	j, ok := b.journals[unit]
	return j, ok
}

func TestRunReportsReadyOnTheConsoleAndToTheServer(t *testing.T) {
	srv, events := eventServer(t)
	var out bytes.Buffer
	if code := Run(context.Background(), machine(t, srv.URL), &out, eventsPoster()); code != 0 {
		t.Errorf("exit %d: %s", code, out.String())
	}
	if got := out.String(); got != "plinth-agent: ready host=etcd-one role=etcd root=overlay lower=ro upper=rw\n" {
		t.Errorf("console %q", got)
	}
	ev := events()
	if len(ev) != 1 || ev[0].Stage != api.StageReady || ev[0].Machine != "etcd-1" || ev[0].Fields["etcd.service"] != "active" ||
		ev[0].Fields["state"] != "no state disk: /var/lib/etcd in RAM, lost at every reboot" ||
		ev[0].Fields["listen"] != "tcp/2379 tcp/2380 tcp/8080" || ev[0].Fields["unexpected"] != "tcp/8080" {
		t.Errorf("events %+v", ev)
	}
}

func TestRunSaysWhyItIsNotReady(t *testing.T) {
	srv, events := eventServer(t)
	for _, tc := range []struct {
		name   string
		change func(*fakeSystem)
		want   string
	}{
		{"service down", func(f *fakeSystem) { f.states["etcd.service"] = "failed" }, "etcd.service is failed"},
		{"unit up, etcd not serving", func(f *fakeSystem) { delete(f.urls, "https://127.0.0.1:2379/health") }, "etcd not serving: dial https://127.0.0.1:2379/health"},
		{"etcd unhealthy", func(f *fakeSystem) { f.urls["https://127.0.0.1:2379/health"] = `{"health":"false"}` }, `etcd not healthy`},
		{"wrong host name", func(f *fakeSystem) { f.host = "localhost" }, `host name is "localhost", the profile says "etcd-one"`},
		{"root not writable", func(f *fakeSystem) { f.readOnly = true }, "/ is not writable"},
		{"no profile", func(f *fakeSystem) { delete(f.files, role.ConfigPath) }, "no profile"},
		{"not an overlay", func(f *fakeSystem) { f.files["/proc/self/mountinfo"] = readSample(t, "host-ext4.txt") }, "not an overlay"},
		{"state disk refused", func(f *fakeSystem) {
			f.files[role.ConfigPath] = strings.Replace(f.files[role.ConfigPath], `"role":"etcd",`,
				`"role":"etcd","state":{"disk":"min-size:4GiB","part_uuid":"`+node.StatePartUUID("lab", "etcd-1")+`"},`, 1)
			f.files[role.StateStatusFile] = `{"status":"refused","disk":"/dev/vdb","message":"state disk /dev/vdb (8.0 GiB) holds ext4 at 0x438: not plinth's, left untouched"}`
		}, "state disk /dev/vdb (8.0 GiB) holds ext4 at 0x438: not plinth's, left untouched"},
	} {
		m := machine(t, srv.URL)
		tc.change(m)
		var out bytes.Buffer
		code := Run(context.Background(), m, &out, eventsPoster())
		line := out.String()
		if code != 1 || !strings.HasPrefix(line, "plinth-agent: NOT READY host=") || !strings.Contains(line, tc.want) || strings.Count(line, "\n") != 1 {
			t.Errorf("%s: exit %d, console %q, want one NOT READY line with %q", tc.name, code, line, tc.want)
		}
	}
	for _, e := range events() {
		if e.Stage != api.StageError {
			t.Errorf("a machine that is not ready posted %q", e.Stage)
		}
	}
}

func TestRunWithoutABootServerOnlyPrints(t *testing.T) {
	m := machine(t, "")
	delete(m.files, role.ServicesPath)
	var out bytes.Buffer
	if code := Run(context.Background(), m, &out, eventsPoster()); code != 0 || !strings.HasPrefix(out.String(), "plinth-agent: ready host=etcd-one role=etcd ") {
		t.Errorf("exit %d, %q", code, out.String())
	}
}

func eventsPoster() events.Poster { return events.Poster{} }

// flipSystem is a machine whose etcd comes up on the third check.
type flipSystem struct {
	*fakeSystem
	mu     sync.Mutex
	checks int
}

func (f *flipSystem) Units(ctx context.Context, names []string) map[string]UnitState {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks++
	if f.checks < 3 {
		out := f.fakeSystem.Units(ctx, names)
		out["etcd.service"] = UnitState{State: "activating"}
		return out
	}
	return f.fakeSystem.Units(ctx, names)
}

func TestWatchWaitsForTheServicesThenReportsReadyAndAHeartbeat(t *testing.T) {
	srv, events := eventServer(t)
	m := &flipSystem{fakeSystem: machine(t, srv.URL)}
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		Watch(ctx, m, &out, eventsPoster(), WatchOptions{Wait: time.Minute, Every: 5 * time.Millisecond, Heartbeat: 30 * time.Millisecond})
		close(done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ready := 0
		for _, e := range events() {
			if e.Stage == api.StageReady {
				ready++
			}
		}
		if ready >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{
		"plinth-agent: waiting host=etcd-one role=etcd: etcd.service is activating",
		"plinth-agent: ready host=etcd-one role=etcd root=overlay lower=ro upper=rw",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("console:\n%s\nwant:\n%s", out.String(), strings.Join(want, "\n"))
	}
	ev := events()
	if len(ev) < 3 || ev[0].Stage != api.StageServices || ev[1].Stage != api.StageReady || ev[2].Stage != api.StageReady {
		t.Errorf("events: want services, ready, then a ready heartbeat; got %+v", ev)
	}
}

func TestWatchGivesUpWaitingAndSaysWhy(t *testing.T) {
	m := machine(t, "")
	m.states["etcd.service"] = "failed"
	var out syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	Watch(ctx, m, &out, eventsPoster(), WatchOptions{Wait: 20 * time.Millisecond, Every: 5 * time.Millisecond, Heartbeat: time.Hour})
	if !strings.Contains(out.String(), "plinth-agent: NOT READY host=etcd-one role=etcd: etcd.service is failed\n") ||
		strings.Count(out.String(), "NOT READY") != 1 {
		t.Errorf("console %q", out.String())
	}
}

// syncBuffer is a bytes.Buffer safe to write from Watch and read here.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestAReportCarriesTheJournalOfAUnitThatIsDown(t *testing.T) {
	srv, events := eventServer(t)
	m := machine(t, srv.URL)
	m.states["etcd.service"] = "activating"
	m.logs = map[string]string{"etcd.service": "etcd: listen tcp 10.77.0.11:2380: bind: address already in use"}
	Run(context.Background(), m, &bytes.Buffer{}, eventsPoster())
	ev := events()
	if len(ev) != 1 || ev[0].Fields["log etcd.service"] != m.logs["etcd.service"] {
		t.Errorf("events %+v", ev)
	}
	// A unit that is up but does not serve: the probe's unit.
	m.states["etcd.service"] = "active"
	delete(m.urls, "https://127.0.0.1:2379/health")
	Run(context.Background(), m, &bytes.Buffer{}, eventsPoster())
	if ev := events(); len(ev) != 2 || ev[1].Fields["log etcd.service"] == "" {
		t.Errorf("events %+v", ev)
	}
}

// blinkSystem is a ready machine whose etcd misses one health check.
type blinkSystem struct {
	*fakeSystem
	mu   sync.Mutex
	gets int
}

func (b *blinkSystem) Get(ctx context.Context, url, ca, cert, key string) (string, error) {
	b.mu.Lock()
	b.gets++
	n := b.gets
	b.mu.Unlock()
	if n == 3 {
		return "", fmt.Errorf("context deadline exceeded")
	}
	return b.fakeSystem.Get(ctx, url, ca, cert, key)
}

func TestWatchRidesOutOneMissedCheck(t *testing.T) {
	m := &blinkSystem{fakeSystem: machine(t, "")}
	var out syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	Watch(ctx, m, &out, eventsPoster(), WatchOptions{Wait: time.Minute, Every: 5 * time.Millisecond, Heartbeat: time.Hour})
	if got := out.String(); got != "plinth-agent: ready host=etcd-one role=etcd root=overlay lower=ro upper=rw\n" {
		t.Errorf("console %q", got)
	}
}

func TestAUnitThatIsDownHasItsWholeJournalUploaded(t *testing.T) {
	b := newBootServer(t)
	m := machine(t, b.URL)
	m.states["etcd.service"] = "failed"
	m.restarts = map[string]int{"etcd.service": 2}
	m.logs = map[string]string{"etcd.service": "etcd: member has already been bootstrapped"}
	var out bytes.Buffer
	Run(context.Background(), m, &out, eventsPoster())
	j, ok := b.journal("etcd.service")
	if !ok || j != "full journal of etcd.service\netcd: member has already been bootstrapped" {
		t.Errorf("journal uploaded: %v %q; console %q", ok, j, out.String())
	}
	if ev := b.events(); len(ev) != 1 || ev[0].Fields["restarts etcd.service"] != "2" {
		t.Errorf("events %+v", ev)
	}
}

func TestTheServerCanAskAReadyMachineForAJournal(t *testing.T) {
	b := newBootServer(t)
	b.ask = []string{"etcd.service", "not a unit/../x"}
	m := machine(t, b.URL)
	var out bytes.Buffer
	if code := Run(context.Background(), m, &out, eventsPoster()); code != 0 {
		t.Fatalf("exit %d: %s", code, out.String())
	}
	if j, ok := b.journal("etcd.service"); !ok || !strings.HasPrefix(j, "full journal of etcd.service") {
		t.Errorf("asked-for journal: %v %q", ok, j)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.journals) != 1 {
		t.Errorf("uploads %v: a name that is not a unit must not be sent", b.journals)
	}
}

func TestWatchUploadsAFailingUnitsJournalAtMostEveryJournalEvery(t *testing.T) {
	b := newBootServer(t)
	m := machine(t, b.URL)
	m.states["etcd.service"] = "activating"
	var uploads atomic.Int32
	counting := &countingSystem{fakeSystem: m, n: &uploads}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	Watch(ctx, counting, &syncBuffer{}, eventsPoster(), WatchOptions{Wait: time.Minute, Every: 5 * time.Millisecond, Heartbeat: 10 * time.Millisecond, JournalEvery: time.Hour})
	if n := uploads.Load(); n != 1 {
		t.Errorf("%d journal uploads while waiting with JournalEvery an hour, want 1", n)
	}
	if ev := b.events(); len(ev) < 2 {
		t.Errorf("a waiting machine posted %d events in 300 ms with a 10 ms heartbeat", len(ev))
	}
}

// countingSystem counts FullJournal calls.
type countingSystem struct {
	*fakeSystem
	n *atomic.Int32
}

func (c *countingSystem) FullJournal(ctx context.Context, unit string) []byte {
	c.n.Add(1)
	return c.fakeSystem.FullJournal(ctx, unit)
}

func TestParseShowReadsEachUnitsBlockInOrder(t *testing.T) {
	out := "ActiveState=active\nNRestarts=0\nStatusText=\n\nNRestarts=3\nStatusText=importing x.tar (1 of 2, 100 MiB)\nActiveState=activating\n"
	got := parseShow(out, []string{"a.service", "b.service"})
	want := map[string]UnitState{"a.service": {"active", 0, ""}, "b.service": {"activating", 3, "importing x.tar (1 of 2, 100 MiB)"}}
	if !maps.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := parseShow("ActiveState=active\n", []string{"a.service", "b.service"}); len(got) != 0 {
		t.Errorf("a short answer must not be matched to the wrong units: %v", got)
	}
}

// A unit still starting that says how far it is (first boot's image import
// does) has that in the line the console, the boot server and a test's
// stall check see: the line changes while the work goes on.
func TestAStartingUnitSaysHowFarItIs(t *testing.T) {
	m := machine(t, "")
	m.files[role.ServicesPath] = "etcd.service\nplinth-images.service\n"
	m.states["plinth-images.service"] = "activating"
	m.statusText = map[string]string{"plinth-images.service": "importing e2e-debian.tar (3 of 6, 100 MiB)"}
	r, _ := Check(context.Background(), m)
	want := "plinth-images.service is activating (importing e2e-debian.tar (3 of 6, 100 MiB))"
	if r.Ready() || !slices.Contains(r.Problems, want) || !strings.Contains(r.Line(), want) {
		t.Errorf("problems %q, line %q: want %q", r.Problems, r.Line(), want)
	}
}

// TestAMachineStillBootingIsNotReady: the agent starts with the network, so
// a machine whose role's units already run is not ready until systemd has
// reached its default target.
func TestAMachineStillBootingIsNotReady(t *testing.T) {
	m := machine(t, "")
	m.states["default.target"] = "activating"
	var out bytes.Buffer
	if code := Run(context.Background(), m, &out, eventsPoster()); code != 1 || !strings.Contains(out.String(), "boot not finished (default.target is activating)") {
		t.Errorf("exit %d, console %q", code, out.String())
	}
	m.states["default.target"] = "active"
	if code := Run(context.Background(), m, &bytes.Buffer{}, eventsPoster()); code != 0 {
		t.Errorf("booted machine: exit %d", code)
	}
}

func TestTheAPIPoolInAReplyIsPinned(t *testing.T) {
	b := newBootServer(t)
	pool := api.APIPool{Name: "api.lab.example", Addrs: []string{"10.77.0.21", "10.77.0.22"}}
	b.pool = &pool
	m := machine(t, b.URL)
	var out bytes.Buffer
	Run(context.Background(), m, &out, eventsPoster())
	if len(m.pinned) != 1 || m.pinned[0].Name != pool.Name || len(m.pinned[0].Addrs) != 2 {
		t.Errorf("pinned %+v, want %+v once (%s)", m.pinned, pool, out.String())
	}
}
