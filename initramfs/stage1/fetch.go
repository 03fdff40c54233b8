package stage1

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
)

// CAFile is where the initramfs carries the boot server's CA, if any.
const CAFile = "/etc/ssl/certs/plinth-ca.pem"

// HTTPClient trusts the CA in caFile (when present) in addition to the
// system's, so an https boot server with a site certificate works.
func HTTPClient(caFile string) *http.Client {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return &http.Client{}
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	pool.AppendCertsFromPEM(pem)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr}
}

// ErrDigest is returned for content whose sha256 is not the expected one.
var ErrDigest = errors.New("sha256 mismatch")

// Fetcher downloads from the boot server with retries, backoff and, for
// large files, Range requests that resume where a dropped connection left
// off.
type Fetcher struct {
	Client   *http.Client
	Token    string
	Attempts int           // per call; default 8
	Backoff  time.Duration // first wait; doubles up to MaxWait; default 500ms
	MaxWait  time.Duration // default 10s
	OnRetry  func(err error, wait time.Duration)
}

func (f *Fetcher) defaults() {
	if f.Client == nil {
		f.Client = &http.Client{Timeout: 0}
	}
	if f.Attempts <= 0 {
		f.Attempts = 8
	}
	if f.Backoff <= 0 {
		f.Backoff = 500 * time.Millisecond
	}
	if f.MaxWait <= 0 {
		f.MaxWait = 10 * time.Second
	}
}

func (f *Fetcher) wait(ctx context.Context, attempt int, err error) error {
	d := f.Backoff << attempt
	if d > f.MaxWait || d <= 0 {
		d = f.MaxWait
	}
	if f.OnRetry != nil {
		f.OnRetry(err, d)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func (f *Fetcher) request(ctx context.Context, url string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if f.Token != "" {
		req.Header.Set(api.HeaderToken, f.Token)
	}
	return req, nil
}

// Get returns a small document (a profile), retrying on errors and 5xx.
func (f *Fetcher) Get(ctx context.Context, url string, limit int64) ([]byte, error) {
	f.defaults()
	var last error
	for attempt := 0; attempt < f.Attempts; attempt++ {
		if attempt > 0 {
			if err := f.wait(ctx, attempt-1, last); err != nil {
				return nil, err
			}
		}
		req, err := f.request(ctx, url)
		if err != nil {
			return nil, err
		}
		resp, err := f.Client.Do(req)
		if err != nil {
			last = err
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
		resp.Body.Close()
		switch {
		case err != nil:
			last = err
		case resp.StatusCode >= 500:
			last = fmt.Errorf("GET %s: %s", url, resp.Status)
		case resp.StatusCode != http.StatusOK:
			return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, firstLine(b))
		case int64(len(b)) > limit:
			return nil, fmt.Errorf("GET %s: larger than %d bytes", url, limit)
		default:
			return b, nil
		}
	}
	return nil, fmt.Errorf("GET %s: gave up after %d attempts: %w", url, f.Attempts, last)
}

func firstLine(b []byte) string {
	for i, c := range b {
		if c == '\n' || i >= 200 {
			return string(b[:i])
		}
	}
	return string(b)
}

// Download writes url's body to path, resuming with Range after a dropped
// connection, and checks that its sha256 is want ("sha256:<hex>"). A file
// whose digest does not match is removed and ErrDigest returned: the caller
// decides whether to try again.
func (f *Fetcher) Download(ctx context.Context, url, path, want string) (int64, error) {
	f.defaults()
	out, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	h := sha256.New()
	var have int64
	var last error
	for attempt := 0; attempt < f.Attempts; attempt++ {
		if attempt > 0 {
			if err := f.wait(ctx, attempt-1, last); err != nil {
				return have, err
			}
		}
		done, n, err := f.fetchFrom(ctx, url, out, h, have)
		have += n
		if err == nil && done {
			got := "sha256:" + hex.EncodeToString(h.Sum(nil))
			if got != want {
				out.Close()
				os.Remove(path)
				return have, fmt.Errorf("%w: got %s, want %s", ErrDigest, got, want)
			}
			return have, out.Sync()
		}
		last = err
		var perm permanentError
		if errors.As(err, &perm) {
			return have, err
		}
	}
	return have, fmt.Errorf("GET %s: gave up after %d attempts at byte %d: %w", url, f.Attempts, have, last)
}

type permanentError struct{ error }

// fetchFrom requests url from byte offset and appends to out and h.
func (f *Fetcher) fetchFrom(ctx context.Context, url string, out *os.File, h hash.Hash, offset int64) (bool, int64, error) {
	req, err := f.request(ctx, url)
	if err != nil {
		return false, 0, permanentError{err}
	}
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := f.Client.Do(req)
	if err != nil {
		return false, 0, err
	}
	defer resp.Body.Close()
	switch {
	case offset > 0 && resp.StatusCode == http.StatusPartialContent:
	case resp.StatusCode == http.StatusOK:
		if offset > 0 {
			// The server ignored Range: start over.
			if err := out.Truncate(0); err != nil {
				return false, 0, err
			}
			if _, err := out.Seek(0, io.SeekStart); err != nil {
				return false, 0, err
			}
			h.Reset()
			return f.copy(resp, out, h, -offset)
		}
	case resp.StatusCode >= 500:
		return false, 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	default:
		return false, 0, permanentError{fmt.Errorf("GET %s: %s", url, resp.Status)}
	}
	return f.copy(resp, out, h, 0)
}

// copy appends the body; adjust corrects the byte count after a restart.
func (f *Fetcher) copy(resp *http.Response, out *os.File, h hash.Hash, adjust int64) (bool, int64, error) {
	n, err := io.Copy(io.MultiWriter(out, h), resp.Body)
	if err != nil {
		return false, n + adjust, err
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return false, n + adjust, io.ErrUnexpectedEOF
	}
	return true, n + adjust, nil
}

// VerifyFile checks a local file's sha256.
func VerifyFile(path, want string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("%w: got %s, want %s", ErrDigest, got, want)
	}
	return nil
}
