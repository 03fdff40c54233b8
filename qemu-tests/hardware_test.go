package qemutests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver"
	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/lab/qemu"
)

// TestOneImageBootsOnEveryNIC netboots the smoke image, whose spec names no
// NIC or disk driver, on five NIC models at once: stage 1 finds each
// machine's NIC by its modalias and loads its driver. A sixth machine has
// two NICs — the first on another network that answers DHCP (QEMU's user
// network, restricted), the second on the boot network — and boots from the
// second: stage 1 must configure the NIC iPXE booted from, not the first
// with a link.
func TestOneImageBootsOnEveryNIC(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	art := buildSmoke(t, ctx)
	models := []struct{ model, driver string }{
		{"e1000", "e1000"},
		{"e1000e", "e1000e"},
		{"rtl8139", "8139cp"}, // QEMU's RTL8139 is a C+: 8139cp claims it (8139too too, if it comes first)
		{"vmxnet3", "vmxnet3"},
		{"virtio-net-pci", "virtio_net"},
	}
	var boots []pxeBoot
	var site strings.Builder
	for i, m := range models {
		pm := pxeMachine{fmt.Sprintf("nic-%s", strings.TrimSuffix(m.model, "-net-pci")), fmt.Sprintf("52:54:00:77:01:%02x", i+1), fmt.Sprintf("nic%d", i+1), "none"}
		fmt.Fprintf(&site, "[[machine]]\nname = %q\nmac = %q\nhostname = %q\nimage = \"smoke\"\n", pm.name, pm.mac, pm.host)
		boots = append(boots, pxeBoot{m: pm, nics: []qemu.NIC{{MAC: pm.mac, Model: m.model}}, memory: 768})
	}
	two := pxeMachine{"two-nics", "52:54:00:77:02:02", "twonics", "none"}
	fmt.Fprintf(&site, "[[machine]]\nname = %q\nmac = %q\nhostname = %q\nimage = \"smoke\"\n", two.name, two.mac, two.host)
	boots = append(boots, pxeBoot{m: two, memory: 768, nics: []qemu.NIC{
		{MAC: "52:54:00:77:02:01", Netdev: "user,restrict=on", Model: "e1000"},
		{MAC: two.mac},
	}})
	l, _, dir := startPXE(t, ctx, art, site.String())
	for i := range boots {
		for j := range boots[i].nics {
			if boots[i].nics[j].Netdev != "" {
				continue
			}
			tap, err := l.AddTap(ctx)
			if err != nil {
				t.Fatal(err)
			}
			boots[i].nics[j].Netdev = tap
		}
	}
	times := bootAllReady(t, ctx, l, dir, boots)
	hw := regexp.MustCompile(`plinth: \[modules\] hardware: \d+ devices, drivers ([^(]*) \(`)
	for i, b := range boots {
		con, err := os.ReadFile(filepath.Join(dir, b.m.name+".console.log"))
		if err != nil {
			t.Fatal(err)
		}
		m := hw.FindSubmatch(con)
		if m == nil {
			t.Errorf("%s: no hardware line on the console", b.m.name)
			continue
		}
		if i < len(models) && !strings.Contains(string(m[1]), models[i].driver) {
			t.Errorf("%s: drivers %q, want %s among them", b.m.name, m[1], models[i].driver)
		}
		if i == len(models) && !regexp.MustCompile(`plinth: \[network\] \S+ `+two.mac+` 10\.77\.0\.`).Match(con) {
			t.Errorf("%s: stage 1 did not configure the NIC it booted from (%s) on the boot network", b.m.name, two.mac)
		}
		figure(t, "one image, any NIC (%s): %s (%s) ready %.1fs after QEMU start; stage 1 loaded %s", qemu.Accel(ctx), b.m.name, nicModel(b.nics), times[i].Seconds(), m[1])
	}
}

func nicModel(nics []qemu.NIC) string {
	var s []string
	for _, n := range nics {
		if n.Model == "" {
			n.Model = "virtio-net-pci"
		}
		s = append(s, n.Model)
	}
	return strings.Join(s, "+")
}

// TestUserNetworkingNetbootsFromALoopbackServer is what a new user tries
// first: `plinth serve --listen 127.0.0.1:PORT`, no --public-url, and a QEMU
// machine on user networking whose firmware fetches
// http://10.0.2.2:PORT/boot.ipxe. The scripts name what to fetch by path and
// the command line and profile name the server at 10.0.2.2, the address the
// machine reached; the HTTPS listener is trusted by the boot server's name
// in its certificate, not by that address. Both run inside the lab's network
// namespace, so QEMU's user network reaches nothing but its loopback.
func TestUserNetworkingNetbootsFromALoopbackServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	art := buildSmoke(t, ctx)
	dir := t.TempDir()
	const mac = "52:54:00:77:03:01"
	writeFile(t, filepath.Join(dir, "site", "site.toml"), fmt.Sprintf(`
[site]
name   = "user"
domain = "user.example"
[[machine]]
name     = "user-1"
mac      = %q
hostname = "usernet"
image    = "smoke"
`, mac))
	l := newLab(t)
	logf, err := os.Create(filepath.Join(dir, "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	if err := l.Start(ctx, logf, plinthBin, "serve", "--init-ca", "--site", filepath.Join(dir, "site"), "--artifacts", filepath.Dir(art),
		"--listen", "127.0.0.1:8099", "--state", filepath.Join(dir, "state")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "serve.log"))
			t.Logf("plinth serve log:\n%s", b)
		}
	})
	server := "http://127.0.0.1:8099"
	waitFor(t, ctx, "boot server", func() bool { _, err := l.Get(ctx, server+api.PathMachines); return err == nil })
	vm, err := qemu.Start(ctx, t, qemu.Config{
		Name: "user-1", Memory: 768, Boot: "n", Wrap: l.Wrap(), LogDir: dir,
		NICs: []qemu.NIC{{MAC: mac, Netdev: "user,bootfile=http://10.0.2.2:8099/boot.ipxe"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(ctx, regexp.MustCompile(`plinth-agent: ready host=usernet role=none`)); err != nil {
		t.Fatal(err)
	}
	figure(t, "user networking (%s): ready %.1fs after QEMU start, from a server on 127.0.0.1 with no --public-url", qemu.Accel(ctx), vm.Since().Seconds())
	con, _ := os.ReadFile(filepath.Join(dir, "user-1.console.log"))
	for _, want := range []string{"plinth.server=http://10.0.2.2:8099", "plinth.tls=https://10.0.2.2:8443"} {
		if !strings.Contains(string(con), want) {
			t.Errorf("the kernel command line lacks %s", want)
		}
	}
	// The agent's ready report came over HTTPS with the machine's own
	// certificate, to the address the machine knows.
	var list []bootserver.MachineStatus
	waitFor(t, ctx, "the ready report", func() bool {
		b, err := l.Get(ctx, server+api.PathMachines)
		if err != nil || json.Unmarshal(b, &list) != nil {
			return false
		}
		for _, st := range list {
			if st.Name == "user-1" && st.State == "ready" {
				return true
			}
		}
		return false
	})
}

// TestUEFINetboot boots a UEFI machine (OVMF) whose NIC has no option ROM,
// so the firmware netboots with its own driver: by native PXE (DHCP, then
// ipxe.efi over plinth's TFTP) and by UEFI HTTP boot (DHCP answers the
// HTTPClient vendor class with ipxe.efi's URL; no TFTP at all). Either way
// iPXE then takes the boot script and the machine boots to ready.
func TestUEFINetboot(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []string
		want  string // what the server log shows iPXE came by
	}{
		{"pxe", []string{"--tftp", "10.77.0.1:69"}, `msg=tftp file=ipxe.efi`},
		{"http", nil, `msg="ipxe over http" file=ipxe.efi`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
			defer cancel()
			art := buildSmoke(t, ctx)
			m := pxeMachine{"uefi-" + tc.name, "52:54:00:77:04:01", "uefi" + tc.name, "none"}
			site := fmt.Sprintf("[[machine]]\nname = %q\nmac = %q\nhostname = %q\nimage = \"smoke\"\n", m.name, m.mac, m.host)
			l, _, dir := startPXE(t, ctx, art, site, tc.extra...)
			tap, err := l.AddTap(ctx)
			if err != nil {
				t.Fatal(err)
			}
			vm, err := qemu.Start(ctx, t, qemu.Config{
				Name: m.name, Memory: 1024, Boot: "n", Firmware: "ovmf", Wrap: l.Wrap(), LogDir: dir,
				NICs: []qemu.NIC{{MAC: m.mac, Netdev: tap, NoROM: true}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := vm.Expect(ctx, regexp.MustCompile(`plinth-agent: ready host=`+m.host+` role=none`)); err != nil {
				t.Fatal(err)
			}
			figure(t, "UEFI %s netboot (%s): ready %.1fs after QEMU start", tc.name, qemu.Accel(ctx), vm.Since().Seconds())
			b, _ := os.ReadFile(filepath.Join(dir, "serve.log"))
			if !strings.Contains(string(b), tc.want) {
				t.Errorf("the server log does not show iPXE fetched that way (%s)", tc.want)
			}
		})
	}
}

// TestBondKeepsTheBootAddress boots a machine with two NICs whose site
// entry puts them in a bond — active-backup, then 802.3ad — with VLAN 107
// on top at 10.107.0.21/24. The machine must stay reachable at its boot address
// once networkd has swapped the boot NIC for the bond: it answers ARP there
// from the bond, which has the boot NIC's MAC (so the DHCP lease and every
// neighbour's cache stay good), and ping; its agent keeps reporting. The
// VLAN is shown on the wire: this host's kernel has no 802.1Q, so the test
// sends, from the lab's bridge, an ARP request tagged 107 for 10.107.0.21,
// and the answer must come back tagged 107 from the bond's MAC.
func TestBondKeepsTheBootAddress(t *testing.T) {
	// 802.3ad with no LACP partner (the lab's bridge speaks none): the
	// bond still forms an aggregator of its own and carries traffic.
	for _, mode := range []string{"active-backup", "802.3ad"} {
		t.Run(mode, func(t *testing.T) { testBond(t, mode) })
	}
}

func testBond(t *testing.T, mode string) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	art := buildSmoke(t, ctx)
	m := pxeMachine{"bonded", "52:54:00:77:05:01", "bonded", "none"}
	const second = "52:54:00:77:05:02"
	site := fmt.Sprintf(`[[machine]]
name = %q
mac = %q
hostname = %q
image = "smoke"
[[machine.bond]]
name = "bond0"
mode = %q
members = [%q, %q]
[[machine.vlan]]
link = "bond0"
id = 107
address = "10.107.0.21/24"
`, m.name, m.mac, m.host, mode, m.mac, second)
	l, server, dir := startPXE(t, ctx, art, site)
	inLab := func(args ...string) ([]byte, error) {
		return exec.CommandContext(ctx, l.Wrap()[0], append(l.Wrap()[1:], args...)...).CombinedOutput()
	}
	var nics []qemu.NIC
	for _, mac := range []string{m.mac, second} {
		tap, err := l.AddTap(ctx)
		if err != nil {
			t.Fatal(err)
		}
		nics = append(nics, qemu.NIC{MAC: mac, Netdev: tap})
	}
	times := bootAllReady(t, ctx, l, dir, []pxeBoot{{m: m, nics: nics, memory: 768}})
	var boot string
	waitFor(t, ctx, "the machine's boot address", func() bool {
		b, err := l.Get(ctx, server+api.PathMachines)
		var list []bootserver.MachineStatus
		if err != nil || json.Unmarshal(b, &list) != nil {
			return false
		}
		for _, st := range list {
			if st.Name == m.name && st.IP != "" {
				boot = st.IP
				return true
			}
		}
		return false
	})
	start := time.Now()
	bctx, bcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer bcancel()
	mac, err := vlanARP(bctx, l, 0, netip.MustParseAddr(boot), netip.MustParseAddr(l.Server))
	if err != nil {
		t.Fatalf("no ARP answer for the boot address %s: %v", boot, err)
	}
	if !strings.EqualFold(mac.String(), m.mac) {
		t.Errorf("the boot address answered from %s, not from the bond with the boot NIC's MAC %s", mac, m.mac)
	}
	tARP := time.Since(start)
	vmac, err := vlanARP(bctx, l, 107, netip.MustParseAddr("10.107.0.21"), netip.MustParseAddr("10.107.0.1"))
	if err != nil {
		t.Fatalf("no answer tagged 107 for the VLAN's address 10.107.0.21: %v", err)
	}
	if !strings.EqualFold(vmac.String(), m.mac) {
		t.Errorf("the VLAN address answered from %s, not from the bond (%s)", vmac, m.mac)
	}
	tVLAN := time.Since(start)
	waitFor(t, ctx, "ping "+boot, func() bool {
		_, err := inLab("ping", "-c", "1", "-W", "2", boot)
		return err == nil
	})
	// Reports still reach the server after the swap: a heartbeat after
	// the bond took over.
	var last time.Time
	waitFor(t, ctx, "a report after the bond took over", func() bool {
		b, err := l.Get(ctx, server+api.PathMachines)
		var list []bootserver.MachineStatus
		if err != nil || json.Unmarshal(b, &list) != nil {
			return false
		}
		for _, st := range list {
			if st.Name == m.name {
				if !last.IsZero() && st.LastSeen.After(last) {
					return true
				}
				last = st.LastSeen
			}
		}
		return false
	})
	figure(t, "bond %s (%s): ready %.1fs after QEMU start; the boot address %s answered ARP from the bond (%s) %.1fs after ready, VLAN 107's 10.107.0.21 answered tagged ARP %.1fs after ready; ping and reports went on",
		mode, qemu.Accel(ctx), times[0].Seconds(), boot, mac, tARP.Seconds(), tVLAN.Seconds())
}
