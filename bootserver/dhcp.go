package bootserver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/profiles"
)

// Boot files handed to legacy PXE firmware over TFTP (Debian's ipxe).
const (
	BIOSBootFile = "undionly.kpxe"
	EFIBootFile  = "ipxe.efi"
)

// leases is the DHCP server's address book. A machine with a static
// address in the site gets it. Others are offered a free address of the
// range, held for offerHold; only a REQUEST binds it, for the site's lease
// time, and a bound address never moves to another MAC while its lease is
// live. An expired lease stays with its MAC until another needs the
// address, so a machine gets the same one again on every boot while the
// server runs. Each record holds an address of the range, so invented MACs
// cannot grow the book beyond the range, nor keep it full for longer than
// they keep asking.
type leases struct {
	mu     sync.Mutex
	byMAC  map[string]*lease
	byAddr map[netip.Addr]*lease
	now    func() time.Time
}

type lease struct {
	mac     string
	addr    netip.Addr
	expires time.Time
	bound   bool // ACKed; otherwise offered
}

// offerHold is how long an offered address waits for its REQUEST.
const offerHold = 30 * time.Second

// errNak is a REQUEST for an address this server will not give that MAC.
var errNak = errors.New("dhcp: address not available to this client")

func newLeases() *leases {
	return &leases{byMAC: map[string]*lease{}, byAddr: map[netip.Addr]*lease{}, now: time.Now}
}

// lookup is the address bound to mac by a live lease, if any.
func (l *leases) lookup(mac string) (netip.Addr, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if le, ok := l.byMAC[mac]; ok && le.bound && l.now().Before(le.expires) {
		return le.addr, true
	}
	return netip.Addr{}, false
}

// static is mac's static address in the site, if it has one.
func static(mac string, site *profiles.Site) (netip.Addr, bool) {
	if m, err := site.Match(mac, "", nil); err == nil && m.Address != "" {
		if p, err := netip.ParsePrefix(m.Address); err == nil {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// dynamic says whether a is an address of the range that no machine has
// as its static one.
func dynamic(a netip.Addr, site *profiles.Site) (start, end netip.Addr, ok bool) {
	start, err1 := netip.ParseAddr(site.DHCP.RangeStart)
	end, err2 := netip.ParseAddr(site.DHCP.RangeEnd)
	if err1 != nil || err2 != nil {
		return start, end, false
	}
	if !a.IsValid() {
		return start, end, true
	}
	if a.Compare(start) < 0 || a.Compare(end) > 0 {
		return start, end, false
	}
	for _, m := range site.Machines {
		if p, err := netip.ParsePrefix(m.Address); err == nil && p.Addr() == a {
			return start, end, false
		}
	}
	return start, end, true
}

// set records mac's lease of a, dropping mac's record of another address
// and a's record for another MAC (the caller checked that it expired).
func (l *leases) set(mac string, a netip.Addr, until time.Time, bound bool) {
	if old, ok := l.byMAC[mac]; ok && old.addr != a {
		delete(l.byAddr, old.addr)
	}
	if old, ok := l.byAddr[a]; ok && old.mac != mac {
		delete(l.byMAC, old.mac)
	}
	le := &lease{mac: mac, addr: a, expires: until, bound: bound}
	l.byMAC[mac], l.byAddr[a] = le, le
}

// offer is the address to offer mac (DISCOVER).
func (l *leases) offer(mac string, site *profiles.Site) (netip.Addr, error) {
	if a, ok := static(mac, site); ok {
		return a, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if le, ok := l.byMAC[mac]; ok {
		if _, _, ok := dynamic(le.addr, site); ok {
			if !le.bound || !now.Before(le.expires) {
				l.set(mac, le.addr, now.Add(offerHold), false)
			}
			return le.addr, nil
		}
	}
	start, end, ok := dynamic(netip.Addr{}, site)
	if !ok {
		return netip.Addr{}, errors.New("dhcp: no range configured")
	}
	// A never-used address first, then the one expired longest ago.
	var reuse *lease
	for a := start; a.Compare(end) <= 0; a = a.Next() {
		if _, _, ok := dynamic(a, site); !ok {
			continue
		}
		le, taken := l.byAddr[a]
		if !taken {
			l.set(mac, a, now.Add(offerHold), false)
			return a, nil
		}
		if !now.Before(le.expires) && (reuse == nil || le.expires.Before(reuse.expires)) {
			reuse = le
		}
	}
	if reuse != nil {
		a := reuse.addr
		l.set(mac, a, now.Add(offerHold), false)
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("dhcp: range %s-%s exhausted", start, end)
}

// bind binds want (the REQUEST's requested or client address; invalid:
// what mac was offered) to mac for d. errNak: not this client's to have.
func (l *leases) bind(mac string, want netip.Addr, site *profiles.Site, d time.Duration) (netip.Addr, error) {
	if a, ok := static(mac, site); ok {
		if want.IsValid() && want != a {
			return netip.Addr{}, errNak
		}
		return a, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if !want.IsValid() {
		le, ok := l.byMAC[mac]
		if !ok {
			return netip.Addr{}, errNak
		}
		want = le.addr
	}
	if _, _, ok := dynamic(want, site); !ok {
		return netip.Addr{}, errNak
	}
	if le, ok := l.byAddr[want]; ok && le.mac != mac && now.Before(le.expires) {
		return netip.Addr{}, errNak
	}
	l.set(mac, want, now.Add(d), true)
	return want, nil
}

// release forgets what was only offered to mac (it took another server's
// offer).
func (l *leases) release(mac string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if le, ok := l.byMAC[mac]; ok && !le.bound {
		delete(l.byMAC, mac)
		delete(l.byAddr, le.addr)
	}
}

// ClientArch is option 93's value, or -1 when absent.
func ClientArch(req *dhcpv4.DHCPv4) int {
	b := req.Options.Get(dhcpv4.OptionClientSystemArchitectureType)
	if len(b) < 2 {
		return -1
	}
	return int(binary.BigEndian.Uint16(b))
}

func isPXE(req *dhcpv4.DHCPv4) bool {
	return strings.HasPrefix(string(req.Options.Get(dhcpv4.OptionClassIdentifier)), "PXEClient")
}

// isHTTPClient is UEFI HTTP boot's request (vendor class
// "HTTPClient:Arch:00016:..."): its answer is a URL, and says HTTPClient.
func isHTTPClient(req *dhcpv4.DHCPv4) bool {
	return strings.HasPrefix(string(req.Options.Get(dhcpv4.OptionClassIdentifier)), "HTTPClient")
}

func isIPXE(req *dhcpv4.DHCPv4) bool {
	for _, uc := range req.UserClass() {
		if uc == "iPXE" {
			return true
		}
	}
	return string(req.Options.Get(dhcpv4.OptionUserClassInformation)) == "iPXE"
}

// bootFile chooses what a PXE client is told to boot: iPXE firmware gets
// the HTTP boot script; UEFI HTTP boot gets ipxe.efi by URL; legacy
// firmware gets iPXE over TFTP, for BIOS or for x86-64 UEFI by option 93
// — "" when this server has no TFTP (tftp false): sending it to a TFTP
// server that is not there would only delay its next boot option.
func bootFile(req *dhcpv4.DHCPv4, publicURL string, tftp bool) string {
	if isIPXE(req) {
		return publicURL + api.PathBootScript
	}
	if isHTTPClient(req) {
		return publicURL + strings.Replace(api.PathFirmware, "{file}", EFIBootFile, 1)
	}
	if !tftp {
		return ""
	}
	switch ClientArch(req) {
	case 7, 9: // EFI x86-64 (and EFI BC)
		return EFIBootFile
	default:
		return BIOSBootFile
	}
}

// DHCPReply builds the answer to req, or nil when the server keeps quiet.
// mode is the site's [dhcp] mode: "proxy" answers only PXE clients, without
// an address (the site's own DHCP server gives that); "server" leases
// addresses too.
func (s *Server) DHCPReply(req *dhcpv4.DHCPv4, mode string) (*dhcpv4.DHCPv4, error) {
	if req.OpCode != dhcpv4.OpcodeBootRequest || len(req.ClientHWAddr) != 6 {
		return nil, nil
	}
	snap := s.snap.Load()
	site := snap.site
	var replyType dhcpv4.MessageType
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		replyType = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		replyType = dhcpv4.MessageTypeAck
	default:
		return nil, nil
	}
	pxe := isPXE(req) || isIPXE(req) || isHTTPClient(req)
	file := bootFile(req, s.cfg.PublicURL, s.cfg.TFTPListen != "")
	if pxe && file == "" {
		pxe = false // nothing to boot here: an address at most
		if mode == "proxy" {
			return nil, nil
		}
	}
	if mode == "proxy" && !pxe {
		return nil, nil
	}
	server := net.IP(s.cfg.ServerIP.AsSlice())
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(replyType),
		dhcpv4.WithServerIP(server),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server)),
	}
	if pxe {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptBootFileName(file)))
		switch {
		case isHTTPClient(req):
			// UEFI HTTP boot takes only an answer that says HTTPClient.
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient")))
		case mode == "proxy":
			// A proxy's answer is told apart by PXEClient; the firmware
			// then asks this server on port 4011 for the boot file.
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient")),
				dhcpv4.WithOption(dhcpv4.OptTFTPServerName(server.String())))
		default:
			// As the only DHCP server: a plain offer with a boot file and
			// next-server. Saying PXEClient without PXE vendor options
			// would make UEFI's PXE (EDK2) treat it as a BINL offer and
			// ask port 4011 first.
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptTFTPServerName(server.String())))
		}
	}
	if mode == "server" {
		mac := req.ClientHWAddr.String()
		lease, err := time.ParseDuration(site.DHCP.Lease)
		if err != nil {
			lease = time.Hour
		}
		var addr netip.Addr
		if replyType == dhcpv4.MessageTypeOffer {
			addr, err = s.leases.offer(mac, site)
		} else {
			if id := req.ServerIdentifier(); id != nil && !id.Equal(server) {
				s.leases.release(mac) // it chose another server's offer
				return nil, nil
			}
			// The address asked for: option 50 when selecting or
			// rebooting, ciaddr when renewing.
			var want netip.Addr
			for _, ip := range []net.IP{req.RequestedIPAddress(), req.ClientIPAddr} {
				if a, ok := netip.AddrFromSlice(ip.To4()); ok && !a.IsUnspecified() {
					want = a
					break
				}
			}
			addr, err = s.leases.bind(mac, want, site, lease)
			if errors.Is(err, errNak) {
				return dhcpv4.NewReplyFromRequest(req,
					dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
					dhcpv4.WithServerIP(server),
					dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server)))
			}
		}
		if err != nil {
			return nil, err
		}
		mask := net.IPMask(net.ParseIP(site.DHCP.Netmask).To4())
		mods = append(mods,
			dhcpv4.WithYourIP(net.IP(addr.AsSlice())),
			dhcpv4.WithNetmask(mask),
			dhcpv4.WithLeaseTime(uint32(lease.Seconds())),
		)
		if site.DHCP.Router != "" {
			mods = append(mods, dhcpv4.WithRouter(net.ParseIP(site.DHCP.Router)))
		}
		var dns []net.IP
		for _, d := range site.DHCP.DNS {
			dns = append(dns, net.ParseIP(d))
		}
		if len(dns) > 0 {
			mods = append(mods, dhcpv4.WithDNS(dns...))
		}
		if site.Domain != "" {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDomainName(site.Domain)))
		}
	}
	resp, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err != nil {
		return nil, err
	}
	if pxe {
		resp.BootFileName = file
	}
	return resp, nil
}

// serveDHCP answers DHCP on iface.
func (s *Server) serveDHCP(mode, iface string) (func(), error) {
	if !s.cfg.ServerIP.Is4() {
		return nil, fmt.Errorf("dhcp %s mode needs the server's IPv4 address (--server-ip)", mode)
	}
	handler := func(conn net.PacketConn, peer net.Addr, req *dhcpv4.DHCPv4) {
		resp, err := s.DHCPReply(req, mode)
		if err != nil {
			s.log.Warn("dhcp", "mac", req.ClientHWAddr.String(), "err", err)
			return
		}
		if resp == nil {
			return
		}
		dst := peer
		if up, ok := peer.(*net.UDPAddr); ok && (up.IP.IsUnspecified() || req.IsBroadcast() || mode == "server") {
			dst = &net.UDPAddr{IP: net.IPv4bcast, Port: up.Port}
		}
		if _, err := conn.WriteTo(resp.ToBytes(), dst); err != nil {
			s.log.Warn("dhcp send", "mac", req.ClientHWAddr.String(), "err", err)
			return
		}
		s.metrics.dhcp.WithLabelValues(resp.MessageType().String()).Inc()
		s.log.Info("dhcp", "mac", req.ClientHWAddr.String(), "type", resp.MessageType().String(), "ip", resp.YourIPAddr.String(), "bootfile", resp.BootFileName)
	}
	ports := []int{dhcpv4.ServerPort}
	if mode == "proxy" {
		// PXE firmware that took our boot file from a proxy offer may ask
		// again, unicast, on the PXE port before it boots.
		ports = append(ports, pxePort)
	}
	var servers []*server4.Server
	stop := func() {
		for _, srv := range servers {
			srv.Close()
		}
	}
	for _, port := range ports {
		srv, err := server4.NewServer(iface, &net.UDPAddr{IP: net.IPv4zero, Port: port}, handler)
		if err != nil {
			stop()
			return nil, fmt.Errorf("dhcp on %s port %d: %w", iface, port, err)
		}
		servers = append(servers, srv)
		go func() { _ = srv.Serve() }()
	}
	s.log.Info("dhcp", "mode", mode, "interface", iface, "ports", ports)
	return stop, nil
}

// pxePort is where PXE clients send their boot server requests (PXE 2.1).
const pxePort = 4011
