package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/lab"
	"github.com/plinth-dev/plinth/profiles"
	"github.com/plinth-dev/plinth/roles"
)

// TestARoleIsOneDescriptor defines a role through its descriptor alone and
// follows it through what the rest of plinth does with a role: the site
// that names it validates, its machine's profile renders, the agent probes
// its server as the descriptor says, and the lab boots it in its group.
func TestARoleIsOneDescriptor(t *testing.T) {
	healthy := "ok"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/livez" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, healthy)
	}))
	defer srv.Close()
	port := int(netip.MustParseAddrPort(strings.TrimPrefix(srv.URL, "http://")).Port())

	remove, err := roles.Register(roles.Role{
		Name:     "witness",
		Group:    roles.GroupStore,
		Services: []string{"witness.service"},
		Listen:   []roles.Port{{Proto: "tcp", Number: port}},
		Probes:   []roles.Probe{{Unit: "witness.service", Scheme: "http", Port: port, Path: "/livez", Want: "ok"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer remove()

	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "site.toml"), []byte(`[site]
name = "s"
[[machine]]
name = "minion-1"
mac = "52:54:00:00:00:03"
role = "minion"
image = "minion"
[[machine]]
name = "witness-1"
mac = "52:54:00:00:00:01"
role = "witness"
image = "witness"
`), 0o644)
	site, err := profiles.LoadSite(dir)
	if err != nil {
		t.Fatalf("validate: %v", err)
	}
	cfg, err := site.Render(site.Machine("witness-1"), "")
	if err != nil || cfg.Role != "witness" {
		t.Fatalf("render: %+v, %v", cfg, err)
	}
	if problems, unit := probeRole(context.Background(), OS{}, cfg); len(problems) != 0 || unit != "witness.service" {
		t.Errorf("probe of a healthy witness: %v (unit %s)", problems, unit)
	}
	healthy = "degraded"
	if problems, _ := probeRole(context.Background(), OS{}, cfg); len(problems) != 1 || !strings.HasPrefix(problems[0], `witness not healthy: "degraded"`) {
		t.Errorf("probe of an unhealthy witness: %v", problems)
	}
	if got, want := strings.Join(roles.Get(cfg.Role).ListenPorts(cfg), " "), fmt.Sprintf("tcp/%d udp/68", port); got != want {
		t.Errorf("listen ports %s, want %s", got, want)
	}
	groups := lab.BootGroups(site.Machines, func(*profiles.Machine) bool { return true })
	if len(groups) != 2 || groups[0][0].Name != "witness-1" || groups[1][0].Name != "minion-1" {
		t.Errorf("boot groups: %v", groups)
	}
}
