package bootserver

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	promtestutil "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/manifest"
)

// The attacks of a host on the boot network that wants to wear the server
// down by holding connections: each ends with the server closing the
// connection, where before it waited for ever.
func TestSlowAndSilentClientsAreDropped(t *testing.T) {
	const limit = 300 * time.Millisecond
	const bigSize = 32 << 20
	var bigDigest string
	s, _ := caFixture(t, twoMasters, func(c *Config) {
		c.IdleTimeout, c.BodyTimeout = limit, limit
		bigDigest = bigRootfs(t, filepath.Join(c.ArtifactsDir, "img"), bigSize)
	})
	s.apiPort = 1
	_, httpAddr, _ := serveInBackground(t, t.Context(), s)
	dial := func(t *testing.T) net.Conn {
		c, err := net.Dial("tcp", httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		// Long enough for any limit here; the attacks did not end
		// before these changes, and the test then fails here.
		c.SetDeadline(time.Now().Add(20 * time.Second))
		return c
	}

	t.Run("idle keep-alive connection", func(t *testing.T) {
		c := dial(t)
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", api.PathAPIPool)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Close {
			t.Fatalf("first request: %s (close %v), want 200 on a kept-alive connection", resp.Status, resp.Close)
		}
		// Then nothing: the server must close the connection.
		if n, err := br.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("an idle connection: read %d bytes, %v; want it closed by the server (EOF)", n, err)
		}
	})

	t.Run("request body that never arrives", func(t *testing.T) {
		c := dial(t)
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"machine\":", api.PathEvents)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("a body that stops after 11 of 1000 bytes: %v; want a 408 answer", err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestTimeout {
			t.Fatalf("a stalled body: %s %s, want 408", resp.Status, b)
		}
	})

	t.Run("download the client stops reading", func(t *testing.T) {
		c := dial(t)
		c.(*net.TCPConn).SetReadBuffer(4096)
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", api.ArtifactPath(strings.TrimPrefix(bigDigest, "sha256:")))
		br := bufio.NewReaderSize(c, 4096)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || resp.ContentLength != bigSize {
			t.Fatalf("download: %s, %d bytes; want 200, %d", resp.Status, resp.ContentLength, bigSize)
		}
		// Stop reading. The server's side of the download must end
		// (its handler returns, counted by the metrics), short of the
		// whole artifact, though the client is still connected.
		done := func() float64 {
			return promtestutil.ToFloat64(s.metrics.requests.WithLabelValues("artifact", "200"))
		}
		for end := time.Now().Add(15 * time.Second); done() == 0; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatal("the server still writes to a client that stopped reading 15 s ago")
			}
		}
		if sent := promtestutil.ToFloat64(s.metrics.bytes); sent >= bigSize {
			t.Fatalf("the server sent all %v bytes to a client that stopped reading", sent)
		} else {
			t.Logf("the server dropped the download after %v of %d bytes", sent, bigSize)
		}
	})

	t.Run("a slow but moving download goes on", func(t *testing.T) {
		c := dial(t)
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", api.ArtifactPath(strings.TrimPrefix(bigDigest, "sha256:")))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		// A third of the limit's pause after each MiB read: each write,
		// and each MiB sent from the file, meets its own deadline.
		var n int64
		buf := make([]byte, readFromChunk)
		for {
			k, err := io.ReadFull(resp.Body, buf)
			n += int64(k)
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				break
			}
			if err != nil {
				t.Fatalf("after %d bytes: %v", n, err)
			}
			time.Sleep(limit / 3)
		}
		if n != bigSize {
			t.Fatalf("got %d of %d bytes", n, bigSize)
		}
	})
}

// bigRootfs replaces the rootfs of the image in dir with size bytes and
// returns its digest.
func bigRootfs(t *testing.T, dir string, size int) string {
	t.Helper()
	mp := filepath.Join(dir, manifest.FileName)
	m, err := manifest.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, manifest.Rootfs)
	if err := os.WriteFile(p, bytes.Repeat([]byte("R"), size), 0o644); err != nil {
		t.Fatal(err)
	}
	d, n, err := manifest.FileDigest(p)
	if err != nil {
		t.Fatal(err)
	}
	for i := range m.Files {
		if m.Files[i].Name == manifest.Rootfs {
			m.Files[i].SHA256, m.Files[i].Size = d, n
		}
	}
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}
