package bootserver

import (
	"encoding/binary"
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

// leases is the lab DHCP server's address book: a machine with a static
// address in the site gets it; others get the next free one of the range,
// the same again on every boot while the server runs.
type leases struct {
	mu    sync.Mutex
	byMAC map[string]netip.Addr
	used  map[netip.Addr]string
}

func newLeases() *leases {
	return &leases{byMAC: map[string]netip.Addr{}, used: map[netip.Addr]string{}}
}

// lookup is the address leased to mac, if any.
func (l *leases) lookup(mac string) (netip.Addr, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.byMAC[mac]
	return a, ok
}

func (l *leases) get(mac string, site *profiles.Site) (netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m, err := site.Match(mac, "", nil); err == nil && m.Address != "" {
		if p, err := netip.ParsePrefix(m.Address); err == nil {
			return p.Addr(), nil
		}
	}
	if a, ok := l.byMAC[mac]; ok {
		return a, nil
	}
	start, err1 := netip.ParseAddr(site.DHCP.RangeStart)
	end, err2 := netip.ParseAddr(site.DHCP.RangeEnd)
	if err1 != nil || err2 != nil {
		return netip.Addr{}, fmt.Errorf("dhcp: no range configured")
	}
	static := map[netip.Addr]bool{}
	for _, m := range site.Machines {
		if p, err := netip.ParsePrefix(m.Address); err == nil {
			static[p.Addr()] = true
		}
	}
	for a := start; a.Compare(end) <= 0; a = a.Next() {
		if _, taken := l.used[a]; !taken && !static[a] {
			l.used[a] = mac
			l.byMAC[mac] = a
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("dhcp: range %s-%s exhausted", start, end)
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

func isIPXE(req *dhcpv4.DHCPv4) bool {
	for _, uc := range req.UserClass() {
		if uc == "iPXE" {
			return true
		}
	}
	return string(req.Options.Get(dhcpv4.OptionUserClassInformation)) == "iPXE"
}

// bootFile chooses what a PXE client is told to boot: iPXE firmware gets
// the HTTP boot script; legacy firmware gets iPXE over TFTP, for BIOS or
// for x86-64 UEFI by option 93.
func bootFile(req *dhcpv4.DHCPv4, publicURL string) string {
	if isIPXE(req) {
		return publicURL + api.PathBootScript
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
	pxe := isPXE(req) || isIPXE(req)
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
		mods = append(mods,
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient")),
			dhcpv4.WithOption(dhcpv4.OptBootFileName(bootFile(req, s.cfg.PublicURL))),
			dhcpv4.WithOption(dhcpv4.OptTFTPServerName(server.String())),
		)
	}
	if mode == "server" {
		mac := req.ClientHWAddr.String()
		addr, err := s.leases.get(mac, site)
		if err != nil {
			return nil, err
		}
		lease, err := time.ParseDuration(site.DHCP.Lease)
		if err != nil {
			lease = time.Hour
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
		resp.BootFileName = bootFile(req, s.cfg.PublicURL)
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
