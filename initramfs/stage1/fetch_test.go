package stage1

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
)

var fast = Backoff{Initial: time.Millisecond, Max: 2 * time.Millisecond}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// artifactServer serves body with Range support. On the first request it
// drops the connection after cut bytes (0: never); mode changes how it
// answers a Range request afterwards.
func artifactServer(t *testing.T, body []byte, cut int, mode string) (*httptest.Server, *atomic.Int32, chan string) {
	var calls atomic.Int32
	ranges := make(chan string, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		rg := r.Header.Get("Range")
		ranges <- rg
		start := 0
		switch {
		case rg != "" && mode == "ignore-range":
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		case rg != "":
			start, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"))
			cr := start
			if mode == "wrong-range" && n == 2 {
				cr = 0 // claims to send the part from 0 but sends from start
			}
			w.Header().Set("Content-Range", "bytes "+strconv.Itoa(cr)+"-"+strconv.Itoa(len(body)-1)+"/"+strconv.Itoa(len(body)))
			w.Header().Set("Content-Length", strconv.Itoa(len(body)-start))
			w.WriteHeader(http.StatusPartialContent)
		default:
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		if n == 1 && cut > 0 {
			w.Write(body[:cut])
			w.(http.Flusher).Flush()
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
			return
		}
		w.Write(body[start:])
	}))
	t.Cleanup(srv.Close)
	return srv, &calls, ranges
}

func TestDownloadResumesWithRangeAfterADroppedConnection(t *testing.T) {
	body := []byte(strings.Repeat("0123456789", 50000))
	srv, calls, ranges := artifactServer(t, body, 123456, "")
	out := filepath.Join(t.TempDir(), "rootfs")
	n, err := (&Fetcher{Backoff: fast}).Download(context.Background(), srv.URL, out, digestOf(body))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	if n != int64(len(body)) || string(got) != string(body) || calls.Load() != 2 {
		t.Errorf("n=%d len=%d calls=%d", n, len(got), calls.Load())
	}
	if first, second := <-ranges, <-ranges; first != "" || second != "bytes=123456-" {
		t.Errorf("requests asked Range %q then %q, want none then bytes=123456-", first, second)
	}
}

func TestDownloadStartsOverWhenTheServerIgnoresOrMisanswersRange(t *testing.T) {
	body := []byte(strings.Repeat("abcdefghij", 30000))
	for _, mode := range []string{"ignore-range", "wrong-range"} {
		srv, _, _ := artifactServer(t, body, 1000, mode)
		out := filepath.Join(t.TempDir(), "rootfs")
		if _, err := (&Fetcher{Backoff: fast}).Download(context.Background(), srv.URL, out, digestOf(body)); err != nil {
			t.Errorf("%s: %v", mode, err)
			continue
		}
		if got, _ := os.ReadFile(out); string(got) != string(body) {
			t.Errorf("%s: file differs from the body (%d bytes)", mode, len(got))
		}
	}
}

func TestDownloadRefusesContentWithTheWrongDigestAndDeletesIt(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("tampered")) }))
	defer srv.Close()
	out := filepath.Join(t.TempDir(), "rootfs")
	want := digestOf([]byte("good"))
	_, err := (&Fetcher{Backoff: fast}).Download(context.Background(), srv.URL, out, want)
	if !errors.Is(err, ErrDigest) || err.Error() != "sha256 mismatch: got "+digestOf([]byte("tampered"))+", want "+want {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Error("the refused file was kept")
	}
}

func TestDownloadGivesUpOnClientErrorsAtOnce(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "no such artifact", http.StatusNotFound)
	}))
	defer srv.Close()
	_, err := (&Fetcher{Backoff: fast}).Download(context.Background(), srv.URL, filepath.Join(t.TempDir(), "x"), digestA)
	if err == nil || !strings.Contains(err.Error(), "no such artifact") || calls.Load() != 1 {
		t.Errorf("err %v after %d calls", err, calls.Load())
	}
}

func TestGetRetriesServerErrorsButNotClientErrorsAndSendsTheToken(t *testing.T) {
	var n atomic.Int32
	var token atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token.Store(r.Header.Get(api.HeaderToken))
		switch {
		case r.URL.Path == "/missing":
			http.Error(w, "no machine x", 404)
		case n.Add(1) < 3:
			http.Error(w, "busy", 503)
		default:
			w.Write([]byte(`{"hostname":"a"}`))
		}
	}))
	defer srv.Close()
	var retries int
	f := &Fetcher{Backoff: fast, Token: "s3cret", OnRetry: func(error, time.Duration) { retries++ }}
	b, err := f.Get(context.Background(), srv.URL+"/ok", 1024)
	if err != nil || string(b) != `{"hostname":"a"}` || n.Load() != 3 || retries != 2 {
		t.Errorf("Get = %q, %v after %d calls, %d retries", b, err, n.Load(), retries)
	}
	if token.Load() != "s3cret" {
		t.Errorf("token header %q", token.Load())
	}
	_, err = f.Get(context.Background(), srv.URL+"/missing", 1024)
	var he *HTTPError
	if !errors.As(err, &he) || he.Code != 404 || !strings.Contains(err.Error(), "no machine x") {
		t.Errorf("404: %v", err)
	}
}

func TestGetRefusesOversizedDocuments(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(make([]byte, 2048)) }))
	defer srv.Close()
	if _, err := (&Fetcher{Backoff: fast}).Get(context.Background(), srv.URL, 1024); err == nil || !strings.Contains(err.Error(), "larger than 1024") {
		t.Errorf("err %v", err)
	}
}

func TestGetStopsWhenTheContextEnds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", 503) }))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := (&Fetcher{Backoff: Backoff{Initial: time.Second, Max: time.Second}}).Get(ctx, srv.URL, 10)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 900*time.Millisecond {
		t.Errorf("err %v after %v", err, time.Since(start))
	}
}

func TestHTTPClientTrustsTheBakedInCA(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	defer srv.Close()
	if _, err := HTTPClient("/nonexistent").Get(srv.URL); err == nil {
		t.Fatal("an unknown CA was trusted")
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	resp, err := HTTPClient(ca).Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}
