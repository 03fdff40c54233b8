package bootserver

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"pack.ag/tftp"
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
	c, err := tftp.NewClient()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Get("tftp://" + addr + "/" + BIOSBootFile)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp)
	if err != nil || len(b) != 70000 {
		t.Fatalf("%s: %d bytes, %v", BIOSBootFile, len(b), err)
	}
	for _, name := range []string{"../../etc/passwd", "manifest.json", "undionly.kpxe/.."} {
		if r, err := c.Get("tftp://" + addr + "/" + name); err == nil {
			if b, err := io.ReadAll(r); err == nil {
				t.Errorf("%s was served (%d bytes)", name, len(b))
			}
		}
	}
}
