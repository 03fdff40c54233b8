// Package etcdrpctest serves fake etcd gRPC methods for tests, over h2c or
// TLS, as etcd frames them.
package etcdrpctest

import (
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
)

// Status is an error a fake method answers with: a gRPC status.
type Status struct {
	Code    int
	Message string
}

func (s *Status) Error() string { return s.Message }

// Method answers one call: the request message in, the answer messages
// (one for a unary call) out, or an error (a *Status for a gRPC code;
// any other error is code 2, unknown).
type Method func(req []byte) ([][]byte, error)

// Handler answers gRPC calls by method path; other requests go to Other
// when set (etcd serves /livez and /health beside gRPC).
type Handler struct {
	Methods map[string]Method
	Other   http.Handler
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Content-Type") != "application/grpc" {
		if h.Other != nil {
			h.Other.ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/grpc")
	f, ok := h.Methods[r.URL.Path]
	if !ok {
		w.Header().Set("Grpc-Status", "12")
		w.Header().Set("Grpc-Message", url.PathEscape("unknown method "+r.URL.Path))
		w.WriteHeader(http.StatusOK)
		return
	}
	req, err := ReadMessage(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	out, err := f(req)
	w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
	w.WriteHeader(http.StatusOK)
	for _, m := range out {
		var hdr [5]byte
		binary.BigEndian.PutUint32(hdr[1:], uint32(len(m)))
		w.Write(hdr[:])
		w.Write(m)
	}
	code, msg := 0, ""
	if err != nil {
		code, msg = 2, err.Error()
		var s *Status
		if errors.As(err, &s) {
			code = s.Code
		}
	}
	w.Header().Set("Grpc-Status", strconv.Itoa(code))
	w.Header().Set("Grpc-Message", url.PathEscape(msg))
}

// ReadMessage reads one framed message.
func ReadMessage(r io.Reader) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
	_, err := io.ReadFull(r, b)
	return b, err
}

// Plain starts h on loopback, speaking HTTP/1.1 and h2c; it stops when the
// test ends.
func Plain(t testing.TB, h http.Handler) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}
