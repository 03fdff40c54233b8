package bootserver

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/pin/tftp/v3"
)

// bootFiles are the iPXE files plinth hands to firmware, by name.
func (s *Server) bootFiles() map[string]string {
	return map[string]string{
		BIOSBootFile: filepath.Join(s.cfg.IPXEDir, BIOSBootFile),
		EFIBootFile:  filepath.Join(s.cfg.IPXEDir, EFIBootFile),
	}
}

// firmware serves iPXE over HTTP to UEFI HTTP boot: only the two boot
// files, by name.
func (s *Server) firmware(w http.ResponseWriter, r *http.Request) {
	path, ok := s.bootFiles()[r.PathValue("file")]
	if !ok {
		s.fail(w, r, http.StatusNotFound, fmt.Sprintf("ipxe: plinth serves only %s and %s", BIOSBootFile, EFIBootFile))
		return
	}
	f, err := os.Open(path)
	if err != nil {
		s.fail(w, r, http.StatusNotFound, "ipxe: "+err.Error())
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/efi")
	http.ServeContent(w, r, "", time.Time{}, f)
	s.log.Info("ipxe over http", "file", r.PathValue("file"), "remote", r.RemoteAddr)
}

// serveTFTP serves iPXE to legacy PXE firmware: only the two boot files, by
// their names, never a path from the request; write requests are refused.
//
// github.com/pin/tftp: pack.ag/tftp, used before, panicked on a two-byte
// read request (FuzzTFTP's seed) — one datagram from anyone on the boot
// network ended the whole server.
func (s *Server) serveTFTP() (func(), error) {
	srv := tftp.NewServer(func(name string, rf io.ReaderFrom) error {
		ot := rf.(tftp.OutgoingTransfer)
		remote := ot.RemoteAddr()
		path, ok := s.bootFiles()[name]
		if !ok {
			s.log.Warn("tftp: refused", "file", name, "remote", remote.String())
			return fmt.Errorf("plinth serves only %s and %s", BIOSBootFile, EFIBootFile)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		ot.SetSize(int64(len(b)))
		if _, err := rf.ReadFrom(bytes.NewReader(b)); err != nil {
			s.log.Warn("tftp", "file", name, "remote", remote.String(), "err", err)
			return nil // the transfer has already ended
		}
		s.log.Info("tftp", "file", name, "remote", remote.String())
		return nil
	}, nil)
	srv.SetTimeout(5 * time.Second)
	// Bind here rather than in a goroutine: a port in use is an error now,
	// and the server answers as soon as this returns.
	ua, err := net.ResolveUDPAddr("udp", s.cfg.TFTPListen)
	if err != nil {
		return nil, fmt.Errorf("tftp %s: %w", s.cfg.TFTPListen, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("tftp %s: %w", s.cfg.TFTPListen, err)
	}
	go func() { _ = srv.Serve(conn) }()
	s.log.Info("tftp", "listen", conn.LocalAddr().String(), "dir", s.cfg.IPXEDir)
	return func() {
		// Shutdown closes the socket, then waits for transfers; one to
		// a client gone silent lasts its retries (about 30 s): wait for
		// those no more than 2 s, they end by themselves.
		stopped := make(chan struct{})
		go func() { srv.Shutdown(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
		}
	}, nil
}
