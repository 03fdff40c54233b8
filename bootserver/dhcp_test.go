package bootserver

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

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
	httpEFI = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64_HTTP))}
	ipxe = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithUserClass("iPXE", false)}
)

func TestDHCPServerLeasesAndPointsEachFirmwareAtItsBootFile(t *testing.T) {
	s, _ := fixture(t, "none")
	s.cfg.TFTPListen = "10.77.0.1:69" // legacy PXE clients are sent there
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
		// A plain offer: PXEClient without PXE vendor options sends UEFI's
		// PXE to port 4011 first (EDK2's BINL offer), where no one answers.
		if c := resp.Options.Get(dhcpv4.OptionClassIdentifier); len(c) != 0 {
			t.Errorf("%s: server-mode offer says class %q", tc.name, c)
		}
	}
	// The range holds two addresses, both taken: a third machine gets no offer.
	if _, err := s.DHCPReply(discover(t, "52:54:00:00:00:07"), "server"); err == nil {
		t.Error("an exhausted range still offered an address")
	}
}

func TestProxyDHCPAnswersOnlyPXEClientsWithoutAnAddress(t *testing.T) {
	s, _ := fixture(t, "none")
	s.cfg.TFTPListen = "10.77.0.1:69" // legacy PXE clients are sent there
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
	s.cfg.TFTPListen = "10.77.0.1:69" // legacy PXE clients are sent there
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

// request is a client's DHCPREQUEST for addr (selecting, with the server
// identifier id when not empty).
func request(t testing.TB, mac, addr, id string) *dhcpv4.DHCPv4 {
	t.Helper()
	mods := []dhcpv4.Modifier{dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(addr)))}
	if id != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(id))))
	}
	return discover(t, mac, mods...)
}

// The attacks of a host that sends DHCP with invented or stolen MACs: it
// can hold offers only while it keeps asking, cannot take an address
// bound to another MAC while that lease is live, and an offer it
// provokes is no lease (enrolment trusts only bound leases).
func TestLeasesBindAtRequestExpireAndNeverMoveWhileLive(t *testing.T) {
	s, _ := fixture(t, "none")
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	s.leases.now = func() time.Time { return now }
	reply := func(req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
		t.Helper()
		resp, err := s.DHCPReply(req, "server")
		if err != nil || resp == nil {
			t.Fatalf("%s from %s: %v %v", req.MessageType(), req.ClientHWAddr, resp, err)
		}
		return resp
	}
	const victim, forger1, forger2 = "52:54:00:00:00:09", "02:00:00:00:00:01", "02:00:00:00:00:02"

	// Two invented MACs fill the two-address range with offers...
	reply(discover(t, forger1))
	reply(discover(t, forger2))
	if _, err := s.DHCPReply(discover(t, victim), "server"); err == nil {
		t.Fatal("a full range still offered an address")
	}
	if _, ok := s.leases.lookup(forger1); ok {
		t.Error("an offer counts as a lease (a DISCOVER alone would pass enrolment's address check)")
	}
	// ...for offerHold only.
	now = now.Add(offerHold + time.Second)
	off := reply(discover(t, victim))
	if off.MessageType() != dhcpv4.MessageTypeOffer {
		t.Fatalf("after the forged offers expired: %s", off.MessageType())
	}
	ack := reply(request(t, victim, off.YourIPAddr.String(), "10.77.0.1"))
	if ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(off.YourIPAddr) {
		t.Fatalf("victim's request: %s %s, want ACK %s", ack.MessageType(), ack.YourIPAddr, off.YourIPAddr)
	}
	if a, ok := s.leases.lookup(victim); !ok || a.String() != off.YourIPAddr.String() {
		t.Fatalf("the ACKed lease is not bound: %v %v", a, ok)
	}
	taken := off.YourIPAddr.String()

	// A forger asking for the victim's live address is refused.
	if r := reply(request(t, forger1, taken, "10.77.0.1")); r.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("another MAC asking for a live lease's address: %s, want NAK", r.MessageType())
	}
	if a, _ := s.leases.lookup(victim); a.String() != taken {
		t.Fatalf("the victim's lease moved: %v", a)
	}
	// Nor is it offered to anyone else while live, even when the range
	// runs out.
	for _, mac := range []string{forger1, forger2} {
		if r, err := s.DHCPReply(discover(t, mac), "server"); err == nil && r.YourIPAddr.String() == taken {
			t.Fatalf("%s was offered the victim's live address", mac)
		}
	}
	// A client that took another server's offer gives ours back.
	if r, _ := s.DHCPReply(request(t, forger1, "192.0.2.9", "192.0.2.1"), "server"); r != nil {
		t.Errorf("a request to another server was answered: %s", r.MessageType())
	}

	// The lease expires; the same MAC gets its address again, and the
	// victim renews (ciaddr) without a new offer.
	now = now.Add(time.Hour + time.Minute)
	if _, ok := s.leases.lookup(victim); ok {
		t.Error("an expired lease still counts")
	}
	renew := discover(t, victim, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(net.ParseIP(taken)))
	if r := reply(renew); r.MessageType() != dhcpv4.MessageTypeAck || r.YourIPAddr.String() != taken {
		t.Fatalf("renewal after expiry, address still free: %s %s", r.MessageType(), r.YourIPAddr)
	}
	// Expired, another MAC may have it.
	now = now.Add(2 * time.Hour)
	if r := reply(request(t, forger2, taken, "10.77.0.1")); r.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("an expired lease's address asked for by another MAC: %s, want ACK", r.MessageType())
	}
	if _, ok := s.leases.lookup(victim); ok {
		t.Error("the victim still holds the address it lost after expiry")
	}
	// Addresses outside the range, or a static machine's, are not given.
	for _, a := range []string{"10.77.0.12", "10.77.0.200"} {
		if r := reply(request(t, forger1, a, "")); r.MessageType() != dhcpv4.MessageTypeNak {
			t.Errorf("request for %s: %s, want NAK", a, r.MessageType())
		}
	}
}

// UEFI HTTP boot is told ipxe.efi's URL and that the answer is for an
// HTTPClient; without TFTP a legacy PXE client gets an address and no boot
// file in server mode (its firmware moves on to the next boot option), and
// no answer in proxy mode.
func TestDHCPUEFIHTTPBootAndNoTFTP(t *testing.T) {
	s, _ := fixture(t, "none")
	resp, err := s.DHCPReply(discover(t, "52:54:00:00:00:09", httpEFI...), "server")
	if err != nil || resp == nil {
		t.Fatalf("%v %v", resp, err)
	}
	if resp.BootFileName != "http://10.77.0.1:8080/ipxe/ipxe.efi" || string(resp.Options.Get(dhcpv4.OptionClassIdentifier)) != "HTTPClient" {
		t.Errorf("HTTP boot: file %q class %q", resp.BootFileName, resp.Options.Get(dhcpv4.OptionClassIdentifier))
	}
	resp, err = s.DHCPReply(discover(t, "52:54:00:00:00:08", pxeEFI...), "server")
	if err != nil || resp == nil || resp.BootFileName != "" || resp.YourIPAddr.String() != "10.77.0.101" {
		t.Errorf("PXE without TFTP: %v %v", resp, err)
	}
	if resp, err := s.DHCPReply(discover(t, "52:54:00:00:00:08", pxeEFI...), "proxy"); resp != nil || err != nil {
		t.Errorf("proxy PXE without TFTP: %v %v, want no answer", resp, err)
	}
	s.cfg.IPXEDir = t.TempDir()
	for _, f := range []string{EFIBootFile, BIOSBootFile} {
		os.WriteFile(filepath.Join(s.cfg.IPXEDir, f), []byte("MZ not really "+f), 0o644)
	}
	os.WriteFile(filepath.Join(s.cfg.IPXEDir, "ipxe.lkrn"), []byte("x"), 0o644)
	for path, want := range map[string]int{"/ipxe/ipxe.efi": 200, "/ipxe/undionly.kpxe": 200, "/ipxe/..%2fetc%2fpasswd": 404, "/ipxe/ipxe.lkrn": 404} {
		if w := get(t, s.Handler(), path); w.Code != want {
			t.Errorf("GET %s: %d, want %d", path, w.Code, want)
		}
	}
}
