package bootserver

import (
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

func discover(t testing.TB, mac string, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	req, err := dhcpv4.NewDiscovery(hw, mods...)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

var (
	pxeBIOS = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC))}
	pxeEFI = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64))}
	ipxe = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithUserClass("iPXE", false)}
)

func TestDHCPServerLeasesAndPointsEachFirmwareAtItsBootFile(t *testing.T) {
	s, _ := fixture(t, "none")
	for _, tc := range []struct {
		name, mac string
		mods      []dhcpv4.Modifier
		ip, file  string
	}{
		{"bios pxe", "52:54:00:00:00:09", pxeBIOS, "10.77.0.100", BIOSBootFile},
		{"uefi pxe", "52:54:00:00:00:08", pxeEFI, "10.77.0.101", EFIBootFile},
		{"ipxe with static address", "52:54:00:00:00:02", ipxe, "10.77.0.12", "http://10.77.0.1:8080/boot.ipxe"},
		{"same machine again", "52:54:00:00:00:09", pxeBIOS, "10.77.0.100", BIOSBootFile},
	} {
		resp, err := s.DHCPReply(discover(t, tc.mac, tc.mods...), "server")
		if err != nil || resp == nil {
			t.Fatalf("%s: %v %v", tc.name, resp, err)
		}
		if resp.MessageType() != dhcpv4.MessageTypeOffer || resp.YourIPAddr.String() != tc.ip || resp.BootFileName != tc.file {
			t.Errorf("%s: %s ip %s file %q, want offer %s %q", tc.name, resp.MessageType(), resp.YourIPAddr, resp.BootFileName, tc.ip, tc.file)
		}
		if r := resp.Router(); len(r) != 1 || r[0].String() != "10.77.0.1" || resp.ServerIPAddr.String() != "10.77.0.1" {
			t.Errorf("%s: router %v next-server %v", tc.name, r, resp.ServerIPAddr)
		}
	}
	// The range holds two addresses, both taken: a third machine gets no offer.
	if _, err := s.DHCPReply(discover(t, "52:54:00:00:00:07"), "server"); err == nil {
		t.Error("an exhausted range still offered an address")
	}
}

func TestProxyDHCPAnswersOnlyPXEClientsWithoutAnAddress(t *testing.T) {
	s, _ := fixture(t, "none")
	if resp, err := s.DHCPReply(discover(t, "52:54:00:00:00:01"), "proxy"); resp != nil || err != nil {
		t.Fatalf("proxy answered a plain DHCP client: %v %v", resp, err)
	}
	resp, err := s.DHCPReply(discover(t, "52:54:00:00:00:01", pxeEFI...), "proxy")
	if err != nil || resp == nil {
		t.Fatal(err)
	}
	if !resp.YourIPAddr.IsUnspecified() || resp.BootFileName != EFIBootFile || string(resp.Options.Get(dhcpv4.OptionClassIdentifier)) != "PXEClient" {
		t.Errorf("proxy offer: yiaddr %s file %q class %q", resp.YourIPAddr, resp.BootFileName, resp.Options.Get(dhcpv4.OptionClassIdentifier))
	}
}

func FuzzDHCPReply(f *testing.F) {
	s, _ := fixture(f, "none")
	for _, mods := range [][]dhcpv4.Modifier{nil, pxeBIOS, pxeEFI, ipxe} {
		f.Add(discover(f, "52:54:00:00:00:01", mods...).ToBytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := dhcpv4.FromBytes(b)
		if err != nil {
			return
		}
		for _, mode := range []string{"proxy", "server"} {
			resp, err := s.DHCPReply(req, mode)
			if err == nil && resp != nil {
				_ = resp.ToBytes()
			}
		}
	})
}

func TestProxyDHCPAcksThePXERequestOnPort4011(t *testing.T) {
	s, _ := fixture(t, "none")
	// What BIOS PXE firmware sends to port 4011 after a proxy offer: a
	// REQUEST from the address it already has.
	req := discover(t, "52:54:00:00:00:01", append(pxeBIOS, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithClientIP(net.ParseIP("10.77.0.100")))...)
	resp, err := s.DHCPReply(req, "proxy")
	if err != nil || resp == nil {
		t.Fatalf("%v %v", resp, err)
	}
	if resp.MessageType() != dhcpv4.MessageTypeAck || resp.BootFileName != BIOSBootFile || !resp.YourIPAddr.IsUnspecified() {
		t.Errorf("%s file %q yiaddr %s, want an ACK for %s without an address", resp.MessageType(), resp.BootFileName, resp.YourIPAddr, BIOSBootFile)
	}
}
