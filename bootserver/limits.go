package bootserver

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// What one client may hold of the server. Every boot network has hosts
// the site does not control; none of them should keep a connection, a
// goroutine or memory for longer than a machine needs to boot:
//
//   - a connection that sends no request line and headers in headerTimeout,
//     or headers larger than maxHeaderBytes, is closed;
//   - a kept-alive connection idle for Config.IdleTimeout is closed;
//   - a request body (events, journals) must arrive whole within
//     Config.BodyTimeout, and no larger than its route allows;
//   - a client that stops reading a response is dropped when one write to
//     it has waited Config.BodyTimeout (each write, and each 1 MiB of a
//     file sent by sendfile, sets a new deadline, so a slow but moving
//     download goes on: a 300 MB rootfs finishes on any link that takes
//     1 MiB per BodyTimeout, about 35 KB/s with the default);
//   - at most maxStreams event streams (status pages) are open at once;
//     the page polls when refused.
const (
	headerTimeout  = 10 * time.Second
	maxHeaderBytes = 64 << 10
	maxStreams     = 64
)

// errBodyTimeout is a request body that did not arrive in time.
var errBodyTimeout = errors.New("request body not received in time")

// readBody reads r's body, at most limit bytes, within the server's
// BodyTimeout. A body too large is an *http.MaxBytesError; one too slow
// is errBodyTimeout.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	rc := http.NewResponseController(w)
	if err := rc.SetReadDeadline(time.Now().Add(s.cfg.BodyTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return nil, err
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, errBodyTimeout
	}
	return b, err
}

// failBody answers a body readBody refused: 413 when too large, 408 when
// too slow, 400 otherwise (the client went away mid-body).
func (s *Server) failBody(w http.ResponseWriter, r *http.Request, what string, limit int64, err error, attrs ...any) {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		s.fail(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("%s: body larger than %d bytes", what, limit), attrs...)
	case errors.Is(err, errBodyTimeout):
		s.fail(w, r, http.StatusRequestTimeout, fmt.Sprintf("%s: body not received within %s", what, s.cfg.BodyTimeout), attrs...)
	default:
		s.fail(w, r, http.StatusBadRequest, fmt.Sprintf("%s: reading the body: %v", what, err), attrs...)
	}
}

// extendWrite gives the next write to w BodyTimeout to complete.
func (s *Server) extendWrite(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.cfg.BodyTimeout))
}
