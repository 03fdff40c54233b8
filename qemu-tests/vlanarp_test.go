package qemutests

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/lab"
)

// The host kernel here has no 802.1Q support (no 8021q module, no VLAN
// filtering on bridges), so the lab cannot give the server side an address
// on a VLAN. vlanARP asks on the wire instead: from the lab bridge, an ARP
// request tagged with the VLAN for the machine's address; the machine
// answers only through its VLAN interface, and the answer must carry the
// same tag. (Linux answers ARP for any of its addresses on any interface,
// so the tag, not the answer alone, is what shows the address is on the
// VLAN.)

// vlanARP sends, on br0 of lab l, "who has target, tell sender" tagged
// with vid, once a second until ctx ends, and returns the MAC of the first
// answer tagged vid.
func vlanARP(ctx context.Context, l *lab.Lab, vid uint16, target, sender netip.Addr) (net.HardwareAddr, error) {
	fd, br, err := packetSocketIn(l.Name(), "br0")
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
		return nil, err
	}
	tv := unix.NsecToTimeval(int64(200 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, err
	}
	req := arpFrame(br.HardwareAddr, vid, sender, target)
	to := &unix.SockaddrLinklayer{Ifindex: br.Index, Halen: 6, Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	buf, oob := make([]byte, 2048), make([]byte, 256)
	for {
		if err := unix.Sendto(fd, req, 0, to); err != nil {
			return nil, fmt.Errorf("send ARP on br0: %w", err)
		}
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, 0)
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return nil, err
			}
			if mac, ok := arpReply(buf[:n], oob[:oobn], vid, target, sender); ok {
				return mac, nil
			}
		}
	}
}

// packetSocketIn opens an AF_PACKET socket in network namespace ns, bound
// to its interface ifname: the socket stays in that namespace after this
// thread goes back to its own.
func packetSocketIn(ns, ifname string) (int, *net.Interface, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return -1, nil, err
	}
	defer self.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return -1, nil, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return -1, nil, fmt.Errorf("enter %s: %w", ns, err)
	}
	defer func() {
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			panic("cannot return to the test's network namespace: " + err.Error())
		}
	}()
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return -1, nil, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return -1, nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index}); err != nil {
		unix.Close(fd)
		return -1, nil, err
	}
	return fd, ifc, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// arpFrame is an ARP request from mac/sender for target, 802.1Q-tagged
// with vid (0: untagged).
func arpFrame(mac net.HardwareAddr, vid uint16, sender, target netip.Addr) []byte {
	f := make([]byte, 0, 64)
	f = append(f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	f = append(f, mac...)
	if vid != 0 {
		f = binary.BigEndian.AppendUint16(f, 0x8100)
		f = binary.BigEndian.AppendUint16(f, vid&0x0fff)
	}
	f = binary.BigEndian.AppendUint16(f, 0x0806)
	f = append(f, 0, 1, 8, 0, 6, 4, 0, 1) // Ethernet, IPv4, request
	f = append(f, mac...)
	s, tg := sender.As4(), target.As4()
	f = append(f, s[:]...)
	f = append(f, 0, 0, 0, 0, 0, 0)
	f = append(f, tg[:]...)
	for len(f) < 64 {
		f = append(f, 0)
	}
	return f
}

// arpReply reports whether frame is target's ARP reply to sender on VLAN
// vid — tagged in the frame, or with the tag the kernel took off and put in
// the packet's auxiliary data — and the MAC it gives.
func arpReply(frame, oob []byte, vid uint16, target, sender netip.Addr) (net.HardwareAddr, bool) {
	if len(frame) < 14 {
		return nil, false
	}
	tag, tagged := -1, false
	etype := binary.BigEndian.Uint16(frame[12:14])
	body := frame[14:]
	if etype == 0x8100 && len(body) >= 4 {
		tag, tagged = int(binary.BigEndian.Uint16(body[0:2])&0x0fff), true
		etype, body = binary.BigEndian.Uint16(body[2:4]), body[4:]
	}
	if !tagged {
		msgs, err := unix.ParseSocketControlMessage(oob)
		if err != nil {
			return nil, false
		}
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA && len(m.Data) >= int(unsafe.Sizeof(unix.TpacketAuxdata{})) {
				aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0]))
				if aux.Status&unix.TP_STATUS_VLAN_VALID != 0 {
					tag = int(aux.Vlan_tci & 0x0fff)
				}
			}
		}
	}
	want := int(vid)
	if vid == 0 {
		want = -1 // untagged
	}
	if etype != 0x0806 || tag != want || len(body) < 28 || binary.BigEndian.Uint16(body[6:8]) != 2 {
		return nil, false
	}
	spa, _ := netip.AddrFromSlice(body[14:18])
	tpa, _ := netip.AddrFromSlice(body[24:28])
	if spa != target || tpa != sender {
		return nil, false
	}
	return net.HardwareAddr(append([]byte(nil), body[8:14]...)), true
}

// The frame vlanARP sends, answered as the machine would: the answer is
// taken tagged inline, and refused on another VLAN or untagged.
func TestARPFrames(t *testing.T) {
	br, _ := net.ParseMAC("02:00:00:00:00:01")
	m, _ := net.ParseMAC("52:54:00:77:05:01")
	sender, target := netip.MustParseAddr("10.107.0.1"), netip.MustParseAddr("10.107.0.21")
	req := arpFrame(br, 107, sender, target)
	reply := func(vid int) []byte {
		f := append([]byte{}, br...)
		f = append(f, m...)
		if vid >= 0 {
			f = binary.BigEndian.AppendUint16(f, 0x8100)
			f = binary.BigEndian.AppendUint16(f, uint16(vid))
		}
		f = binary.BigEndian.AppendUint16(f, 0x0806)
		f = append(f, 0, 1, 8, 0, 6, 4, 0, 2)
		f = append(f, m...)
		f = append(f, 10, 107, 0, 21)
		f = append(f, br...)
		return append(f, 10, 107, 0, 1)
	}
	if untagged := arpFrame(br, 0, sender, target); binary.BigEndian.Uint16(untagged[12:14]) != 0x0806 {
		t.Errorf("untagged request % x", untagged)
	}
	if got, ok := arpReply(reply(-1), nil, 0, target, sender); !ok || got.String() != m.String() {
		t.Errorf("untagged reply: %v %v", got, ok)
	}
	if len(req) != 64 || binary.BigEndian.Uint16(req[12:14]) != 0x8100 || binary.BigEndian.Uint16(req[14:16]) != 107 {
		t.Errorf("request % x", req)
	}
	if got, ok := arpReply(reply(107), nil, 107, target, sender); !ok || got.String() != m.String() {
		t.Errorf("tagged reply: %v %v", got, ok)
	}
	for _, vid := range []int{-1, 5} {
		if _, ok := arpReply(reply(vid), nil, 107, target, sender); ok {
			t.Errorf("reply on VLAN %d taken for VLAN 107", vid)
		}
	}
}
