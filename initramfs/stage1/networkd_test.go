package stage1

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/profiles/node"
)

// The rack example: the boot NIC and a second one in an active-backup
// bond, the server's VLAN 107 on it with a static address, and VLAN 200
// on a third NIC by DHCP.
func TestNetworkdFilesForABondWithVLANs(t *testing.T) {
	cfg := &node.Config{Hostname: "r1", Network: &node.Network{
		Bonds: []node.Bond{{Name: "bond0", Mode: node.BondActiveBackup, Members: []string{"52:54:00:00:01:01", "52:54:00:00:01:02"}}},
		VLANs: []node.VLAN{
			{Name: "bond0.107", Link: "bond0", ID: 107, Address: "10.107.0.21/24", Gateway: "10.107.0.1"},
			{Name: "eno3.200", Link: "eno3", ID: 200, Address: node.AddressDHCP},
		},
	}}
	n := &NetInfo{Iface: "eth0", MAC: "52:54:00:00:01:01", Address: "10.77.0.100/24", DHCP: true,
		NICs: []NIC{{"eth0", "52:54:00:00:01:01"}, {"eth1", "52:54:00:00:01:02"}}}
	files := NetworkdFiles(cfg, n)
	want := map[string][]string{
		// The NICs stage 1 brought up keep their names (udev cannot
		// rename a NIC that is up; networkd ignores one it tried to).
		"10-plinth-525400000101.link": {"PermanentMACAddress=52:54:00:00:01:01", "Name=eth0"},
		"10-plinth-525400000102.link": {"PermanentMACAddress=52:54:00:00:01:02", "Name=eth1"},
		"10-plinth-bond0-m0.network":  {"PermanentMACAddress=52:54:00:00:01:01", "Bond=bond0"},
		"10-plinth-bond0-m1.network":  {"PermanentMACAddress=52:54:00:00:01:02", "Bond=bond0"},
		"10-plinth-bond0.netdev":      {"Kind=bond", "MACAddress=52:54:00:00:01:01", "Mode=active-backup", "MIIMonitorSec=100ms"},
		"10-plinth-bond0.network":     {"Name=bond0", "VLAN=bond0.107", "DHCP=ipv4", "ClientIdentifier=mac"},
		"10-plinth-bond0.107.netdev":  {"Kind=vlan", "Id=107"},
		"10-plinth-bond0.107.network": {"Name=bond0.107", "Address=10.107.0.21/24", "Gateway=10.107.0.1"},
		"10-plinth-eno3.200.netdev":   {"Id=200"},
		"10-plinth-eno3.200.network":  {"DHCP=ipv4"},
		"10-plinth-link-eno3.network": {"Name=eno3", "VLAN=eno3.200", "LinkLocalAddressing=no"},
	}
	var got []string
	for p := range files {
		got = append(got, strings.TrimPrefix(p, networkDir))
	}
	if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(maps.Keys(want))) {
		t.Fatalf("files %v\nwant %v", slices.Sorted(slices.Values(got)), slices.Sorted(maps.Keys(want)))
	}
	for f, lines := range want {
		for _, l := range lines {
			if !strings.Contains(files[networkDir+f], l+"\n") {
				t.Errorf("%s lacks %q:\n%s", f, l, files[networkDir+f])
			}
		}
	}
	// The boot NIC is the bond's: no file of its own that would take it
	// out of the bond, and the members' files sort before any that would.
	if _, ok := files[networkDir+"10-plinth.network"]; ok {
		t.Error("a boot NIC file beside the bond holding the boot NIC")
	}
	if !(networkDir+"10-plinth-bond0-m0.network" < networkDir+"10-plinth.network") {
		t.Error("member files sort after the boot NIC's")
	}
}

// A VLAN on the boot NIC itself is named in the boot NIC's file, which
// keeps its static address.
func TestNetworkdFilesVLANOnTheBootNIC(t *testing.T) {
	cfg := &node.Config{Hostname: "r2", Domain: "rack.example", Network: &node.Network{Address: "10.77.0.22/24", Gateway: "10.77.0.1",
		VLANs: []node.VLAN{{Name: "vlan9", Link: "52:54:00:00:02:01", ID: 9, Address: "10.9.0.22/24"}}}}
	files := NetworkdFiles(cfg, &NetInfo{Iface: "eth0", MAC: "52:54:00:00:02:01"})
	boot := files[networkDir+"10-plinth.network"]
	for _, l := range []string{"MACAddress=52:54:00:00:02:01", "VLAN=vlan9", "Address=10.77.0.22/24", "Gateway=10.77.0.1", "Domains=rack.example"} {
		if !strings.Contains(boot, l+"\n") {
			t.Errorf("boot NIC file lacks %q:\n%s", l, boot)
		}
	}
	if len(files) != 3 {
		t.Errorf("%d files, want the boot NIC's and the VLAN's two", len(files))
	}
}
