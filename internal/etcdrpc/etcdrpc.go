// Package etcdrpc calls the etcd v3 RPCs plinth needs — the member list and
// membership changes, a put-if-absent, status, snapshot and setting up
// etcd's authorisation — as gRPC over net/http's HTTP/2, with a client
// certificate whose common name is the etcd user the caller acts as.
//
// Why not etcd's JSON gateway (/v3/...), which plinth used before: once
// authorisation is enabled, etcd refuses every gateway request that
// carries a client certificate with a common name (CVE-2018-16886; etcd
// disabled common-name authentication on the gateway in PR 10366), so a
// client is known by its certificate only over gRPC. Why not etcd's client
// library: it brings gRPC, zap and etcd's API module into stage 1's agent,
// which every netbooted machine downloads (figures in docs/design.md). The
// calls here are unary, plus one server stream; protowire encodes them.
package etcdrpc

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client calls etcd members' gRPC services.
type Client struct {
	HTTP *http.Client
	// Timeout bounds one unary call; 0 means 3 s. A snapshot is bounded
	// only by its context.
	Timeout time.Duration
}

// New is a Client speaking HTTP/2 over TLS with cfg (the site CA as
// RootCAs, the caller's certificate).
func New(cfg *tls.Config) *Client {
	var p http.Protocols
	p.SetHTTP2(true)
	return &Client{HTTP: &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, Protocols: &p, ForceAttemptHTTP2: true}}}
}

// Plain is a Client speaking HTTP/2 without TLS (h2c): for tests against
// a fake member on loopback.
func Plain() *Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &Client{HTTP: &http.Client{Transport: &http.Transport{Protocols: &p}}}
}

// gRPC status codes plinth looks at.
const (
	CodeInvalidArgument    = 3
	CodeFailedPrecondition = 9
	CodePermissionDenied   = 7
	CodeUnauthenticated    = 16
	CodeUnavailable        = 14
)

// Error is a call etcd answered with a gRPC status other than OK.
type Error struct {
	Endpoint, Method string
	Code             int
	Message          string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s: %s (gRPC code %d)", e.Endpoint, e.Method, e.Message, e.Code)
}

// IsCode reports whether err is an Error with the code.
func IsCode(err error, code int) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// maxMessage bounds one message read from a member: a snapshot chunk is
// 32 KiB, a member list a few KiB.
const maxMessage = 16 << 20

// frame is a gRPC message on the wire: uncompressed, length-prefixed.
func frame(msg []byte) []byte {
	b := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

// Stream calls method ("/etcdserverpb.Cluster/MemberList") on endpoint
// (https://host:2379) with one request message and hands each answer
// message to each; it returns once the stream ends with its status.
func (c *Client) Stream(ctx context.Context, endpoint, method string, req []byte, each func([]byte) error) error {
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(endpoint, "/")+method, bytes.NewReader(frame(req)))
	if err != nil {
		return err
	}
	r.Header.Set("Content-Type", "application/grpc")
	r.Header.Set("TE", "trailers")
	res, err := c.HTTP.Do(r)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		return fmt.Errorf("%s %s: HTTP %s: %s", endpoint, method, res.Status, strings.TrimSpace(string(b)))
	}
	// A call that fails at once answers with headers alone.
	if err := status(endpoint, method, res.Header); err != nil {
		return err
	}
	br := bufio.NewReader(res.Body)
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(br, hdr[:]); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("%s %s: %w", endpoint, method, err)
		}
		if hdr[0] != 0 {
			return fmt.Errorf("%s %s: a compressed message (plinth asks for none)", endpoint, method)
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if n > maxMessage {
			return fmt.Errorf("%s %s: a message of %d bytes", endpoint, method, n)
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(br, msg); err != nil {
			return fmt.Errorf("%s %s: %w", endpoint, method, err)
		}
		if err := each(msg); err != nil {
			return err
		}
	}
	if res.Trailer.Get("Grpc-Status") == "" {
		return fmt.Errorf("%s %s: the stream ended without a status", endpoint, method)
	}
	return status(endpoint, method, res.Trailer)
}

// status is the gRPC status in h (headers or trailers), nil when it is OK
// or absent.
func status(endpoint, method string, h http.Header) error {
	s := h.Get("Grpc-Status")
	if s == "" || s == "0" {
		return nil
	}
	code, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("%s %s: grpc-status %q", endpoint, method, s)
	}
	msg := h.Get("Grpc-Message")
	if m, err := url.PathUnescape(msg); err == nil {
		msg = m
	}
	return &Error{Endpoint: endpoint, Method: method, Code: code, Message: msg}
}

// Call is a unary call: one request, one answer.
func (c *Client) Call(ctx context.Context, endpoint, method string, req []byte) ([]byte, error) {
	t := c.Timeout
	if t <= 0 {
		t = 3 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	var out [][]byte
	err := c.Stream(ctx, endpoint, method, req, func(m []byte) error {
		out = append(out, m)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) != 1 {
		return nil, fmt.Errorf("%s %s: %d answers to a unary call", endpoint, method, len(out))
	}
	return out[0], nil
}
