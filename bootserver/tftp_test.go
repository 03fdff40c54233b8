package bootserver

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pin/tftp/v3"
)

func TestTFTPServesOnlyTheIPXEBootFiles(t *testing.T) {
	s, _ := fixture(t, "none")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, BIOSBootFile), []byte(strings.Repeat("B", 70000)), 0o644)
	os.WriteFile(filepath.Join(dir, EFIBootFile), []byte("EFI"), 0o644)
	l, _ := net.ListenPacket("udp4", "127.0.0.1:0")
	addr := l.LocalAddr().String()
	l.Close()
	s.cfg.IPXEDir, s.cfg.TFTPListen = dir, addr
	stop, err := s.serveTFTP()
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c, err := tftp.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(2 * time.Second)
	get := func(name string) ([]byte, error) {
		wt, err := c.Receive(name, "octet")
		if err != nil {
			return nil, err
		}
		var b bytes.Buffer
		_, err = wt.WriteTo(&b)
		return b.Bytes(), err
	}
	b, err := get(BIOSBootFile)
	if err != nil || len(b) != 70000 {
		t.Fatalf("%s: %d bytes, %v", BIOSBootFile, len(b), err)
	}
	for _, name := range []string{"../../etc/passwd", "manifest.json", "undionly.kpxe/.."} {
		if b, err := get(name); err == nil {
			t.Errorf("%s was served (%d bytes)", name, len(b))
		}
	}
	// No write requests.
	if rf, err := c.Send("undionly.kpxe", "octet"); err == nil {
		if _, err := rf.ReadFrom(strings.NewReader("evil")); err == nil {
			t.Error("a write request was taken")
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, BIOSBootFile)); len(b) != 70000 {
		t.Errorf("%s changed: %d bytes", BIOSBootFile, len(b))
	}
}

// rrq is a TFTP read request for name in octet mode.
func rrq(name string) []byte {
	return append(append([]byte{0, 1}, name...), append([]byte{0}, "octet\x00"...)...)
}

// FuzzTFTP sends the real server any datagram, as a host on the boot
// network could, and checks after each that it is alive (it serves the EFI
// boot file to a proper request) and that whatever it answered the
// datagram is an error, an option acknowledgement or the first block of
// one of its two files: never anything else.
func FuzzTFTP(f *testing.F) {
	f.Add(rrq(EFIBootFile))
	f.Add(rrq("../../etc/passwd"))
	f.Add(append(rrq(BIOSBootFile)[:len(rrq(BIOSBootFile))-1], "\x00blksize\x0065464\x00tsize\x000\x00"...))
	f.Add([]byte{0, 2, 'x', 0, 'n', 'e', 't', 'a', 's', 'c', 'i', 'i', 0}) // a write request
	f.Add([]byte{0, 4, 0, 1})                                              // a stray ACK
	f.Add([]byte{0, 1})                                                    // a two-byte read request: pack.ag/tftp, used before, panicked on it
	s, _ := fixture(f, "none")
	dir := f.TempDir()
	files := map[string][]byte{BIOSBootFile: bytes.Repeat([]byte("B"), 700), EFIBootFile: []byte("EFI")}
	for n, b := range files {
		os.WriteFile(filepath.Join(dir, n), b, 0o644)
	}
	l, _ := net.ListenPacket("udp4", "127.0.0.1:0")
	addr := l.LocalAddr().(*net.UDPAddr)
	l.Close()
	s.cfg.IPXEDir, s.cfg.TFTPListen = dir, addr.String()
	stop, err := s.serveTFTP()
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(stop)
	listen := func(t *testing.T) *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		fuzz, probe := listen(t), listen(t)
		if _, err := fuzz.WriteToUDP(pkt, addr); err != nil {
			return // too big for a datagram
		}
		// Alive: a proper request, from another port, gets the file.
		if _, err := probe.WriteToUDP(rrq(EFIBootFile), addr); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 70000)
		probe.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := probe.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("after %q the server no longer answers: %v", pkt, err)
		}
		if n < 4 || buf[1] != 3 || string(buf[4:n]) != "EFI" {
			t.Fatalf("after %q: answered %q", pkt, buf[:n])
		}
		probe.WriteToUDP([]byte{0, 4, buf[2], buf[3]}, from)
		// Whatever answered the datagram: never bytes of anything but
		// the two files.
		for {
			fuzz.SetReadDeadline(time.Now().Add(time.Millisecond))
			n, _, err := fuzz.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if n >= 4 && buf[1] == 3 && !bytes.Contains(files[BIOSBootFile], buf[4:n]) && !bytes.Contains(files[EFIBootFile], buf[4:n]) {
				t.Fatalf("answered %q with data %q", pkt, buf[4:n])
			}
		}
	})
}
