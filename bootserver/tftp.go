package bootserver

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"pack.ag/tftp"
)

// serveTFTP serves iPXE to legacy PXE firmware: only the two boot files, by
// their names, never a path from the request.
func (s *Server) serveTFTP() (func(), error) {
	allowed := map[string]string{
		BIOSBootFile: filepath.Join(s.cfg.IPXEDir, BIOSBootFile),
		EFIBootFile:  filepath.Join(s.cfg.IPXEDir, EFIBootFile),
	}
	srv, err := tftp.NewServer(s.cfg.TFTPListen)
	if err != nil {
		return nil, fmt.Errorf("tftp %s: %w", s.cfg.TFTPListen, err)
	}
	srv.ReadHandler(tftp.ReadHandlerFunc(func(w tftp.ReadRequest) {
		name := w.Name()
		path, ok := allowed[name]
		if !ok {
			s.log.Warn("tftp: refused", "file", name, "remote", w.Addr().String())
			w.WriteError(tftp.ErrCodeFileNotFound, "plinth serves only "+BIOSBootFile+" and "+EFIBootFile)
			return
		}
		b, err := os.ReadFile(path)
		if err != nil {
			w.WriteError(tftp.ErrCodeFileNotFound, err.Error())
			return
		}
		w.WriteSize(int64(len(b)))
		if _, err := w.Write(b); err != nil {
			s.log.Warn("tftp", "file", name, "err", err)
			return
		}
		s.log.Info("tftp", "file", name, "remote", w.Addr().String())
	}))
	// Bind here rather than in ListenAndServe's goroutine: a port in use is
	// an error now, and the server answers as soon as this returns.
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
	return func() { srv.Close(); conn.Close() }, nil
}
