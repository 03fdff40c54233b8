package qemutests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver"
	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/lab"
	"github.com/plinth-dev/plinth/lab/qemu"
)

// newLab makes a private network for the test, removed when it ends.
func newLab(t *testing.T) *lab.Lab {
	t.Helper()
	if err := lab.Available(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	l, err := lab.New(context.Background(), "pxe", "10.77.0.1/24", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// pxeSite is a site on the lab's 10.77.0.0/24 network with plinth serve as
// its DHCP server; tests append their [[machine]] tables.
const pxeSite = `
[site]
name   = "pxe"
domain = "pxe.example"
[dhcp]
mode        = "server"
range_start = "10.77.0.100"
range_end   = "10.77.0.150"
netmask     = "255.255.255.0"
router      = "10.77.0.1"
dns         = ["10.77.0.1"]
`

type pxeMachine struct{ name, mac, host, role string }

// pxeBoot is one machine to netboot: what it reports when ready, its NICs
// (the first with a MAC the site knows boots) and its memory in MiB.
type pxeBoot struct {
	m      pxeMachine
	nics   []qemu.NIC
	memory int
}

// bootAllReady starts every machine at once and waits until each one's
// agent says it is ready with its profile's host name and role, returning
// how long each took from QEMU start.
func bootAllReady(t *testing.T, ctx context.Context, l *lab.Lab, dir string, boots []pxeBoot) []time.Duration {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(boots))
	times := make([]time.Duration, len(boots))
	for i, b := range boots {
		vm, err := qemu.Start(ctx, t, qemu.Config{
			Name: b.m.name, Memory: b.memory, Boot: "n", Wrap: l.Wrap(), LogDir: dir, NICs: b.nics,
		})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func(i int, m pxeMachine, vm *qemu.VM) {
			defer wg.Done()
			re := regexp.MustCompile(`plinth-agent: ready host=` + m.host + ` role=` + m.role + ` root=overlay lower=ro upper=rw`)
			if _, err := vm.Expect(ctx, re); err != nil {
				errs[i] = fmt.Errorf("%s: %w", m.name, err)
				return
			}
			times[i] = vm.Since()
		}(i, b.m, vm)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return times
}

// startPXE starts `plinth serve` as the DHCP server of a new lab network,
// serving the image built in art to the site's [[machine]] tables
// (machines), and waits until it answers. It returns the lab, the server's
// URL and the test's directory (the server's log is serve.log there).
// extra are more flags for plinth serve.
func startPXE(t *testing.T, ctx context.Context, art, machines string, extra ...string) (*lab.Lab, string, string) {
	t.Helper()
	dir := t.TempDir()
	site := pxeSite + machines
	writeFile(t, filepath.Join(dir, "site", "site.toml"), site)
	l := newLab(t)
	server := "http://" + l.Server + ":8080"
	srvLog := filepath.Join(dir, "serve.log")
	logf, err := os.Create(srvLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	args := append([]string{"serve", "--init-ca", "--site", filepath.Join(dir, "site"), "--artifacts", filepath.Dir(art),
		"--listen", l.Server + ":8080", "--server-ip", l.Server, "--dhcp-interface", "br0", "--state", filepath.Join(dir, "state")}, extra...)
	if err := l.Start(ctx, logf, plinthBin, args...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(srvLog)
			t.Logf("plinth serve log:\n%s", b)
		}
	})
	waitFor(t, ctx, "boot server", func() bool { _, err := l.Get(ctx, server+api.PathMachines); return err == nil })
	return l, server, dir
}

// TestPXENetbootTwoMachinesReportTheirProfiles boots two empty machines on a
// private L2 network where `plinth serve` is the DHCP server: each gets iPXE
// from QEMU's ROM, its boot script, kernel, initramfs and rootfs, and its
// own profile, and reports its host name and role back.
func TestPXENetbootTwoMachinesReportTheirProfiles(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	art := buildSmoke(t, ctx)
	// The smoke image carries no etcd or kubelet, so both machines have no
	// role (the agent reports "none"); what tells their profiles apart is
	// the host name each one reports. The roles' services are the cluster
	// e2e's to show.
	machines := []pxeMachine{
		{"pxe-a", "52:54:00:77:00:0a", "alpha", "none"},
		{"pxe-b", "52:54:00:77:00:0b", "beta", "none"},
	}
	var site strings.Builder
	for _, m := range machines {
		fmt.Fprintf(&site, "[[machine]]\nname = %q\nmac = %q\nhostname = %q\nimage = \"smoke\"\n", m.name, m.mac, m.host)
	}
	l, server, dir := startPXE(t, ctx, art, site.String())

	boots := make([]pxeBoot, len(machines))
	for i, m := range machines {
		netdev, err := l.AddTap(ctx)
		if err != nil {
			t.Fatal(err)
		}
		boots[i] = pxeBoot{m, []qemu.NIC{{MAC: m.mac, Netdev: netdev}}, 1024}
	}
	times := bootAllReady(t, ctx, l, dir, boots)
	for i, m := range machines {
		figure(t, "PXE netboot (%s): %s ready %.1fs after QEMU start", qemu.Accel(ctx), m.name, times[i].Seconds())
	}

	// The server heard each machine report its own host name and role.
	var list []bootserver.MachineStatus
	waitFor(t, ctx, "ready events", func() bool {
		b, err := l.Get(ctx, server+api.PathMachines)
		if err != nil || json.Unmarshal(b, &list) != nil {
			return false
		}
		ready := 0
		for _, st := range list {
			for _, m := range machines {
				if st.Name == m.name && st.State == "ready" && strings.Contains(st.LastEvent, "host="+m.host+" role="+m.role) {
					ready++
				}
			}
		}
		return ready == len(machines)
	})
	statusPageShowsReady(t, ctx, l, server, machines)
}

// statusPageShowsReady loads the status page in headless Chromium and
// checks that the rendered page lists every machine as ready.
func statusPageShowsReady(t *testing.T, ctx context.Context, l *lab.Lab, server string, machines []pxeMachine) {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium missing: make deps installs it")
		}
		t.Skip("chromium missing: apt-get install chromium")
	}
	profile := t.TempDir()
	cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, "ip", "netns", "exec", l.Name(), chromium, "--headless", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
		"--user-data-dir="+profile, "--timeout=5000", "--dump-dom", server+"/")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	dom := string(out)
	// The page keeps an event stream open, so it never finishes loading:
	// --timeout ends the load and dumps what the browser shows. That the
	// stream updates the page live is proven in bootserver's own browser
	// test (TestStatusPageUpdatesLiveInABrowser).
	for _, m := range machines {
		row := regexp.MustCompile(`<tr id="m-` + m.name + `" data-state="ready">`)
		if !row.MatchString(dom) {
			t.Errorf("the status page does not show %s ready:\n%s", m.name, dom)
		}
	}
}

func waitFor(t *testing.T, ctx context.Context, what string, ok func() bool) {
	t.Helper()
	for !ok() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}
