package bootserver

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestServeWatchesTheSiteAndStopsWithAStatusPageOpen runs the real server:
// an edit on disk is picked up by the watcher, a broken edit is rejected
// once (not every poll) and SIGHUP retries it, and cancelling the context
// returns promptly even though an event stream is still open.
func TestServeWatchesTheSiteAndStopsWithAStatusPageOpen(t *testing.T) {
	s, _ := fixture(t, "none")
	s.cfg.Poll = 20 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wait, stopWaiting := context.WithTimeout(ctx, 30*time.Second)
	defer stopWaiting()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, nil) }()

	resp, err := http.Get(base + "/v1/events/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "event: machine\n" {
		t.Fatalf("stream: %q %v", line, err)
	}

	siteFile := filepath.Join(s.cfg.SiteDir, "site.toml")
	good, _ := os.ReadFile(siteFile)
	added := string(good) + "[[machine]]\nname = \"node-3\"\nmac = \"52:54:00:00:00:03\"\nrole = \"minion\"\nimage = \"img\"\n"
	if err := replaceFile(siteFile, added); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, wait, "the watcher loads node-3", func() bool { _, ok := s.state.get("node-3"); return ok })

	if err := replaceFile(siteFile, added+"[bogus]\n"); err != nil {
		t.Fatal(err)
	}
	rejected := s.metrics.reloads.WithLabelValues("rejected")
	waitUntil(t, wait, "the watcher rejects the broken site", func() bool { return testutil.ToFloat64(rejected) == 1 })
	time.Sleep(10 * s.cfg.Poll)
	if n := testutil.ToFloat64(rejected); n != 1 {
		t.Errorf("an unchanged broken site was rejected %v times, want once", n)
	}
	if r, err := http.Get(base + "/boot.ipxe?mac=52:54:00:00:00:03"); err != nil || r.StatusCode != 200 {
		t.Errorf("node-3 after a rejected reload: %v %v", r, err)
	} else {
		r.Body.Close()
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, wait, "SIGHUP reloads", func() bool { return testutil.ToFloat64(rejected) == 2 })

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Serve did not return with an event stream open")
	}
	if _, err := http.Get(base + "/"); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("still serving after shutdown: %v", err)
	}
}

// replaceFile swaps a file's content in with a rename, as editors and
// deployment tools do, so the watcher never reads half a file.
func replaceFile(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// TestFingerprintFollowsWhatTheSiteLoaderReads: a temporary file next to
// site.toml is not an edit; a change to any *.toml file is.
func TestFingerprintFollowsWhatTheSiteLoaderReads(t *testing.T) {
	site, art := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(site, "site.toml"), []byte("[site]\nname = \"a\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := fingerprint(site, art)
	if err := os.WriteFile(filepath.Join(site, "site.toml.tmp"), []byte("half written"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fingerprint(site, art) != before {
		t.Error("a temporary file changed the fingerprint")
	}
	if err := os.WriteFile(filepath.Join(site, "rack-2.toml"), []byte("[[machine]]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fingerprint(site, art) == before {
		t.Error("a new *.toml file left the fingerprint unchanged")
	}
}
