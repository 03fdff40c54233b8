package netlab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/internal/testutil"
)

// The test binary doubles as the programs run inside labs: with
// NETLAB_HELPER set, TestMain serves or fetches HTTP and exits.
func TestMain(m *testing.M) {
	switch os.Getenv("NETLAB_HELPER") {
	case "":
		os.Exit(m.Run())
	case "serve":
		os.Exit(helperServe(os.Getenv("NETLAB_ADDR"), os.Getenv("NETLAB_TOKEN")))
	case "get":
		os.Exit(helperGet(os.Getenv("NETLAB_URL"), os.Getenv("NETLAB_SOURCE")))
	default:
		fmt.Fprintln(os.Stderr, "unknown NETLAB_HELPER")
		os.Exit(2)
	}
}

// helperServe answers every request with token; it prints "listening"
// once its socket is bound.
func helperServe(addr, token string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("listening")
	err = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, token)
	}))
	fmt.Fprintln(os.Stderr, err)
	return 1
}

// helperGet prints url's body, dialling from source if it is set.
func helperGet(url, source string) int {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)}
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil || resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, resp.Status, err)
		return 1
	}
	return 0
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

func newLab(t *testing.T, name string) *Lab {
	t.Helper()
	Require(t)
	l, err := New(t.Context(), t, Config{Name: name, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// helper returns a command running this test binary inside l as helper.
func helper(t *testing.T, l *Lab, ctx context.Context, mode string, env ...string) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := l.Command(ctx, self)
	cmd.Env = append(os.Environ(), append([]string{"NETLAB_HELPER=" + mode}, env...)...)
	return cmd
}

// startServer starts helperServe inside l on port and waits until it listens.
func startServer(t *testing.T, l *Lab, port int, token string) (<-chan error, netip.AddrPort) {
	t.Helper()
	addr := netip.AddrPortFrom(l.ServerAddr(), uint16(port))
	cmd := helper(t, l, t.Context(), "serve", "NETLAB_ADDR="+addr.String(), "NETLAB_TOKEN="+token)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	done, err := l.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- line
		io.Copy(io.Discard, out)
	}()
	select {
	case line := <-ready:
		if line != "listening\n" {
			t.Fatalf("server said %q", line)
		}
	case err := <-done:
		t.Fatalf("server exited: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("server did not listen within 20s")
	}
	return done, addr
}

// getInLab fetches url from inside l, from source if set.
func getInLab(t *testing.T, l *Lab, url, source string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := helper(t, l, ctx, "get", "NETLAB_URL="+url, "NETLAB_SOURCE="+source)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, stderr.String())
	}
	return string(out), nil
}

// dialFromLoopback connects to addr from the host's namespace with source
// 127.0.0.1: the kernel only allows that to a local address (else EINVAL),
// so the attempt cannot send a packet off this machine, yet succeeds if
// the lab's address leaked into the host.
func dialFromLoopback(addr netip.AddrPort) error {
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}
	c, err := d.Dial("tcp", addr.String())
	if err == nil {
		c.Close()
	}
	return err
}

func namespaces(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

type link struct {
	Name   string   `json:"ifname"`
	Flags  []string `json:"flags"`
	Master string   `json:"master"`
}

// links lists the interfaces inside l.
func links(t *testing.T, l *Lab) map[string]link {
	t.Helper()
	out, err := exec.Command("ip", "-n", l.Name(), "-j", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var ls []link
	if err := json.Unmarshal(out, &ls); err != nil {
		t.Fatal(err)
	}
	m := map[string]link{}
	for _, x := range ls {
		m[x.Name] = x
	}
	return m
}

func TestLabServesHTTPOnlyInsideItsNamespace(t *testing.T) {
	l := newLab(t, "http")
	var taps []string
	for _, name := range []string{"", "vm1"} {
		tap, err := l.AddTap(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		taps = append(taps, tap)
	}
	if !slices.Equal(taps, []string{"tap0", "vm1"}) {
		t.Errorf("taps = %v, want [tap0 vm1]", taps)
	}
	ls := links(t, l)
	for _, tap := range taps {
		if got := ls[tap]; got.Master != Bridge || !slices.Contains(got.Flags, "UP") {
			t.Errorf("tap %s in lab: %+v, want up on %s", tap, got, Bridge)
		}
		if _, err := net.InterfaceByName(tap); err == nil {
			t.Errorf("tap %s is visible in the host's namespace", tap)
		}
	}

	token := "lab " + l.Name()
	_, addr := startServer(t, l, 8080, token)
	url := "http://" + addr.String() + "/"
	got, err := getInLab(t, l, url, "")
	if err != nil || got != token {
		t.Fatalf("GET %s inside the lab = %q, %v; want %q", url, got, err, token)
	}
	// The same loopback-sourced dial the host makes below works in the
	// lab, so its failure on the host is the address's absence there.
	if got, err := getInLab(t, l, url, "127.0.0.1"); err != nil || got != token {
		t.Fatalf("GET %s from 127.0.0.1 inside the lab = %q, %v; want %q", url, got, err, token)
	}
	if err := dialFromLoopback(addr); err == nil {
		t.Fatalf("%s is reachable from the host's namespace", addr)
	} else {
		t.Logf("from the host: %v", err)
	}
	hostAddrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range hostAddrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr() == l.ServerAddr() {
			t.Errorf("host has the lab's address %s", a)
		}
	}
}

func TestLabHasNoRouteOut(t *testing.T) {
	l := newLab(t, "noroute")
	if _, err := l.AddTap(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
	// route get only consults the routing table: it sends nothing.
	for _, dst := range []string{"192.0.2.1", "1.1.1.1", "10.78.0.1"} {
		out, err := exec.Command("ip", "-n", l.Name(), "route", "get", dst).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "unreachable") {
			t.Errorf("route to %s from the lab: %q, %v; want unreachable", dst, out, err)
		}
	}
	inside := netip.MustParseAddr("10.77.0.20")
	if out, err := exec.Command("ip", "-n", l.Name(), "route", "get", inside.String()).CombinedOutput(); err != nil || !strings.Contains(string(out), "dev "+Bridge) {
		t.Errorf("route to %s from the lab: %q, %v; want dev %s", inside, out, err, Bridge)
	}
	var names []string
	for name := range links(t, l) {
		names = append(names, name)
	}
	slices.Sort(names)
	if want := []string{Bridge, "lo", "tap0"}; !slices.Equal(names, want) {
		t.Errorf("interfaces in the lab = %v, want only %v", names, want)
	}
}

func TestCloseKillsEverythingAndDeletesNamespace(t *testing.T) {
	Require(t)
	l, err := New(t.Context(), nil, Config{Name: "close", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() }) // in case a check fails first
	tap, err := l.AddTap(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	// One process ignores SIGTERM; one leaves its group (setsid): Close
	// must still end both.
	sh := l.Command(context.Background(), "sh", "-c", "trap '' TERM; sleep 1000 & echo ready; wait")
	shOut, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stubborn, err := l.Start(sh)
	if err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(shOut).ReadString('\n'); line != "ready\n" {
		t.Fatalf("shell said %q, %v", line, err)
	}
	escaped := l.Command(context.Background(), "setsid", "sleep", "1001")
	if err := escaped.Run(); err != nil { // returns at once: setsid forks
		t.Fatal(err)
	}
	pids, err := nsPids(t.Context(), l.Name())
	if err != nil || len(pids) < 2 {
		t.Fatalf("processes in the lab = %v, %v; want at least 2", pids, err)
	}

	start := time.Now()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("Close took %v", took.Round(time.Millisecond))
	if took < grace {
		t.Errorf("Close took %v, less than the SIGTERM grace period %v: the shell did not ignore SIGTERM", took, grace)
	}
	select {
	case err := <-stubborn:
		if err == nil {
			t.Error("the stubborn process exited 0; want killed")
		}
	default:
		t.Error("Close returned before the stubborn process was reaped")
	}
	for _, pid := range pids {
		if alive(pid) && !zombie(pid) {
			t.Errorf("pid %d survived Close", pid)
		}
	}
	if slices.Contains(namespaces(t), l.Name()) {
		t.Errorf("namespace %s survived Close", l.Name())
	}
	if _, err := net.InterfaceByName(tap); err == nil {
		t.Errorf("tap %s moved to the host when the lab closed", tap)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := l.AddTap(t.Context(), ""); err == nil {
		t.Error("AddTap on a closed lab succeeded")
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // gone
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z")
}

func TestStartRefusesCommandsNotMadeByTheLab(t *testing.T) {
	l := newLab(t, "refuse")
	if _, err := l.Start(exec.Command("true")); err == nil {
		t.Fatal("Start ran a command outside the lab")
	}
	other := newLab(t, "other")
	if _, err := l.Start(other.Command(t.Context(), "true")); err == nil {
		t.Fatal("Start ran another lab's command")
	}
}

func TestDoCreatesSocketsInsideTheLab(t *testing.T) {
	l := newLab(t, "do")
	addr := netip.AddrPortFrom(l.ServerAddr(), 8081)
	if ln, err := net.Listen("tcp", addr.String()); err == nil {
		ln.Close()
		t.Fatalf("the host could listen on the lab's %s", addr)
	}
	var ln net.Listener
	if err := l.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "in-process") }))
	if got, err := getInLab(t, l, "http://"+addr.String()+"/", ""); err != nil || got != "in-process" {
		t.Fatalf("GET inside the lab = %q, %v", got, err)
	}
	if err := dialFromLoopback(addr); err == nil {
		t.Fatalf("%s is reachable from the host's namespace", addr)
	}
}

func TestRemoveStaleDeletesOnlyLabsOfDeadProcesses(t *testing.T) {
	Require(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadPid := dead.Process.Pid
	names := map[string]bool{ // name: should survive
		formatName("stale", deadPid, "abcdef"):       false,
		formatName("live", os.Getpid(), "abcdef"):    true,
		fmt.Sprintf("plinth-test-%d", deadPid):       true, // lab's naming
		fmt.Sprintf("plinth-nl-x-%d-zz", deadPid):    true,
		fmt.Sprintf("other-nl-x-%d-abcdef", deadPid): true,
	}
	for name := range names {
		if err := ip(t.Context(), "netns", "add", name); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	}
	RemoveStale(t.Context(), testLogger(t))
	have := namespaces(t)
	for name, survive := range names {
		if slices.Contains(have, name) != survive {
			t.Errorf("namespace %s: survived = %v, want %v", name, !survive, survive)
		}
	}
}

func TestQEMUAttachesToTapInsideTheLab(t *testing.T) {
	qemu := testutil.NeedTool(t, "qemu-system-x86_64", "apt-get install qemu-system-x86 (make deps does)")
	l := newLab(t, "qemu")
	tap, err := l.AddTap(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if flags := links(t, l)[tap].Flags; !slices.Contains(flags, "NO-CARRIER") {
		t.Fatalf("tap %s before QEMU: %v, want NO-CARRIER", tap, flags)
	}
	// -S: the machine is built (and the tap opened) but never runs.
	cmd := l.Command(t.Context(), qemu, "-M", "q35", "-nodefaults", "-display", "none", "-S",
		"-netdev", "tap,id=n0,ifname="+tap+",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=n0")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	done, err := l.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for !slices.Contains(links(t, l)[tap].Flags, "LOWER_UP") {
		select {
		case err := <-done:
			t.Fatalf("QEMU exited: %v: %s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("tap %s has no carrier 15s after QEMU started: %v", tap, links(t, l)[tap].Flags)
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("QEMU exited: %v: %s", err, stderr.String())
	case <-time.After(2 * time.Second):
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	default:
		t.Error("QEMU still running after Close")
	}
}

func TestConfigDefaultsAndValidation(t *testing.T) {
	for _, tc := range []struct {
		name       string
		cfg        Config
		wantServer string // ServerAddr/bits after defaults; "" for an error
	}{
		{"defaults", Config{Name: "a"}, "10.77.0.1/24"},
		{"subnet given unmasked", Config{Name: "a", Subnet: netip.MustParsePrefix("192.168.9.77/24")}, "192.168.9.1/24"},
		{"server given", Config{Name: "a", ServerAddr: netip.MustParseAddr("10.77.0.254")}, "10.77.0.254/24"},
		{"small subnet", Config{Name: "a", Subnet: netip.MustParsePrefix("172.16.0.4/30")}, "172.16.0.5/30"},
		{"empty name", Config{}, ""},
		{"name too long", Config{Name: "abcdefghijklm"}, ""},
		{"name with dash", Config{Name: "a-b"}, ""},
		{"public subnet", Config{Name: "a", Subnet: netip.MustParsePrefix("8.8.8.0/24")}, ""},
		{"ipv6 subnet", Config{Name: "a", Subnet: netip.MustParsePrefix("fd00::/64")}, ""},
		{"subnet /31", Config{Name: "a", Subnet: netip.MustParsePrefix("10.0.0.0/31")}, ""},
		{"server outside subnet", Config{Name: "a", ServerAddr: netip.MustParseAddr("10.78.0.1")}, ""},
		{"server is network address", Config{Name: "a", ServerAddr: netip.MustParseAddr("10.77.0.0")}, ""},
		{"server is broadcast", Config{Name: "a", ServerAddr: netip.MustParseAddr("10.77.0.255")}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.cfg.withDefaults()
			if tc.wantServer == "" {
				if err == nil {
					t.Fatalf("accepted %+v", cfg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := netip.PrefixFrom(cfg.ServerAddr, cfg.Subnet.Bits()).String(); got != tc.wantServer {
				t.Errorf("server = %s, want %s", got, tc.wantServer)
			}
		})
	}
}

func TestAddTapRejectsBadNames(t *testing.T) {
	l := newLab(t, "names")
	for _, name := range []string{"br0", "lo", "sixteen-chars-xx", "has space", "a/b", "UPPER"} {
		if _, err := l.AddTap(t.Context(), name); err == nil {
			t.Errorf("AddTap(%q) succeeded", name)
		}
	}
	if _, err := l.AddTap(t.Context(), "dup"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.AddTap(t.Context(), "dup"); err == nil {
		t.Error("a second tap named dup succeeded")
	}
}

func TestNameRoundTrips(t *testing.T) {
	for _, tc := range []struct {
		label string
		pid   int
	}{{"a", 1}, {"netboot", 4194304}, {"abcdefghijkl", 123}} {
		ns := formatName(tc.label, tc.pid, "0a1b2c")
		if pid, ok := parseName(ns); !ok || pid != tc.pid {
			t.Errorf("parseName(%q) = %d, %v; want %d", ns, pid, ok, tc.pid)
		}
	}
	for _, ns := range []string{"plinth-test-123", "plinth-lab-123", "plinth-nl-a-0-abcdef", "plinth-nl-a-1-ABCDEF", "plinth-nl--1-abcdef", "x-plinth-nl-a-1-abcdef"} {
		if pid, ok := parseName(ns); ok {
			t.Errorf("parseName(%q) = %d; want not a lab", ns, pid)
		}
	}
}

func FuzzParseName(f *testing.F) {
	f.Add("plinth-nl-a-12-abcdef")
	f.Add("plinth-test-12")
	f.Add("plinth-nl-a-99999999999-abcdef")
	f.Fuzz(func(t *testing.T, ns string) {
		pid, ok := parseName(ns)
		if !ok {
			return
		}
		if pid <= 0 {
			t.Fatalf("parseName(%q) = %d", ns, pid)
		}
		m := labNameRE.FindStringSubmatch(ns)
		if got := formatName(m[1], pid, m[3]); got != ns {
			t.Fatalf("formatName(parseName(%q)) = %q", ns, got)
		}
	})
}

// TestDoLeavesTheLabsProcessesRunning: a lab process has Pdeathsig, which
// fires when the thread that forked it exits. Do must not end threads: a
// boot server started, then asked for its status with Do's goroutine on
// the very thread that forked it (the usual schedule: the caller blocks
// at once), died with no word, and the air-gap test waited 17 minutes.
func TestDoLeavesTheLabsProcessesRunning(t *testing.T) {
	l := newLab(t, "dokeep")
	var procs []<-chan error
	for range 4 {
		ended, err := l.Start(l.Command(t.Context(), "sleep", "600"))
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, ended)
		for range 10 {
			if err := l.Do(func() error { return nil }); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(300 * time.Millisecond)
	for i, ended := range procs {
		select {
		case err := <-ended:
			t.Errorf("process %d ended while the lab ran: %v", i, err)
		default:
		}
	}
}
