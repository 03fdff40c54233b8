package bootserver

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/bootserver/api"
)

// An edit the running server rejected used to stop the next start (a
// reboot of the boot server's host) and with it every boot in the rack.
// Now the start serves the last good site, and takes the site on disk as
// soon as it is fixed.
func TestABrokenSiteEditDoesNotKeepTheServerFromStarting(t *testing.T) {
	good := strings.Replace(siteTOML, "%s", "none", 1)
	s, _ := fixtureSite(t, good, func(c *Config) { c.StateDir = t.TempDir() })
	siteFile := filepath.Join(s.cfg.SiteDir, "site.toml")
	if err := os.WriteFile(siteFile, []byte(good+"\n[[machine]]\nname = \"node-3\"\nmac = \"not-a-mac\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err == nil {
		t.Fatal("the broken edit was accepted")
	}

	restarted, err := New(s.cfg)
	if err != nil {
		t.Fatalf("a start with the broken edit on disk: %v", err)
	}
	h := restarted.Handler()
	if w := get(t, h, api.PathBootScript+"?mac=52-54-00-00-00-01"); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "kernel ") {
		t.Fatalf("node-1 of the last good site: %d\n%s", w.Code, w.Body)
	}

	// Fixed: the next reload takes it.
	fixed := good + "\n[[machine]]\nname = \"node-3\"\nmac = \"52:54:00:00:00:03\"\nrole = \"minion\"\nimage = \"img\"\n"
	if err := os.WriteFile(siteFile, []byte(fixed), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := restarted.Reload(); err != nil {
		t.Fatal(err)
	}
	if w := get(t, h, api.PathBootScript+"?mac=52-54-00-00-00-03"); !strings.Contains(w.Body.String(), "kernel ") {
		t.Fatalf("node-3 of the fixed site: %d\n%s", w.Code, w.Body)
	}

	// Without a state directory there is nothing to fall back on: the
	// start fails naming the problem, as before.
	if err := os.WriteFile(siteFile, []byte(good+"\n[[machine]]\nname = \"node-3\"\nmac = \"not-a-mac\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := s.cfg
	cfg.StateDir = ""
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "not-a-mac") {
		t.Fatalf("a start without state and a broken site: %v", err)
	}
}
