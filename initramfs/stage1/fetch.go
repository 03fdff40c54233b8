package stage1

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strconv"
	"strings"
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
	Token    string // sent as api.HeaderToken when set
	Attempts int    // per call; default 8
	Backoff  Backoff
	// OnRetry, when set, hears about each retry before its wait.
	OnRetry func(err error, wait time.Duration)
}

func (f *Fetcher) client() *http.Client {
	if f.Client == nil {
		return http.DefaultClient
	}
	return f.Client
}

func (f *Fetcher) attempts() int {
	if f.Attempts <= 0 {
		return 8
	}
	return f.Attempts
}

func (f *Fetcher) wait(ctx context.Context, attempt int, err error) error {
	d := f.Backoff.Delay(attempt)
	if f.OnRetry != nil {
		f.OnRetry(err, d)
	}
	return sleep(ctx, d)
}

func (f *Fetcher) request(ctx context.Context, method, url string, body []byte) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if f.Token != "" {
		req.Header.Set(api.HeaderToken, f.Token)
	}
	return req, nil
}

// HTTPError is a response the server meant: 4xx are not retried by the
// fetcher (the machine is unknown, the token wrong), 5xx are.
type HTTPError struct {
	Method string // GET when empty
	URL    string
	Status string
	Code   int
	Body   string // first line, for the console
}

func (e *HTTPError) Error() string {
	m := e.Method
	if m == "" {
		m = http.MethodGet
	}
	if e.Body == "" {
		return m + " " + e.URL + ": " + e.Status
	}
	return m + " " + e.URL + ": " + e.Status + ": " + e.Body
}

func (e *HTTPError) retryable() bool { return e.Code >= 500 || e.Code == http.StatusTooManyRequests }

// Get returns a small document (a profile), retrying on errors and 5xx.
func (f *Fetcher) Get(ctx context.Context, url string, limit int64) ([]byte, error) {
	return f.do(ctx, http.MethodGet, url, nil, limit)
}

// Post sends body (JSON) and returns the small document that answers it,
// retrying like Get.
func (f *Fetcher) Post(ctx context.Context, url string, body []byte, limit int64) ([]byte, error) {
	return f.do(ctx, http.MethodPost, url, body, limit)
}

func (f *Fetcher) do(ctx context.Context, method, url string, body []byte, limit int64) ([]byte, error) {
	var last error
	for attempt := 0; attempt < f.attempts(); attempt++ {
		if attempt > 0 {
			if err := f.wait(ctx, attempt-1, last); err != nil {
				return nil, err
			}
		}
		b, err := f.once(ctx, method, url, body, limit)
		if err == nil {
			return b, nil
		}
		var he *HTTPError
		if errors.As(err, &he) && !he.retryable() {
			return nil, err
		}
		last = err
	}
	return nil, fmt.Errorf("gave up after %d attempts: %w", f.attempts(), last)
}

func (f *Fetcher) once(ctx context.Context, method, url string, body []byte, limit int64) ([]byte, error) {
	req, err := f.request(ctx, method, url, body)
	if err != nil {
		return nil, err
	}
	resp, err := f.client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	switch {
	case resp.StatusCode != http.StatusOK:
		return nil, &HTTPError{Method: method, URL: url, Status: resp.Status, Code: resp.StatusCode, Body: firstLine(b)}
	case err != nil:
		return nil, fmt.Errorf("%s %s: %w", method, url, err)
	case int64(len(b)) > limit:
		return nil, &HTTPError{Method: method, URL: url, Status: "larger than " + strconv.FormatInt(limit, 10) + " bytes", Code: http.StatusRequestEntityTooLarge}
	}
	return b, nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	if len(s) > 200 {
		s = s[:200]
	}
	return strings.TrimSpace(s)
}

// download is one file being fetched: what is on disk is hashed as it goes.
type download struct {
	url  string
	out  *os.File
	h    hash.Hash
	have int64
}

// restart forgets what was fetched.
func (d *download) restart() error {
	if err := d.out.Truncate(0); err != nil {
		return err
	}
	if _, err := d.out.Seek(0, io.SeekStart); err != nil {
		return err
	}
	d.h.Reset()
	d.have = 0
	return nil
}

// Download writes url's body to path, resuming with Range after a dropped
// connection, and checks that its sha256 is want ("sha256:<hex>"). A file
// whose digest does not match is removed and an error wrapping ErrDigest
// returned: the caller decides whether to try again.
func (f *Fetcher) Download(ctx context.Context, url, path, want string) (int64, error) {
	out, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	d := &download{url: url, out: out, h: sha256.New()}
	var last error
	for attempt := 0; attempt < f.attempts(); attempt++ {
		if attempt > 0 {
			if err := f.wait(ctx, attempt-1, fmt.Errorf("%w (have %d bytes)", last, d.have)); err != nil {
				return d.have, err
			}
		}
		err := f.fetch(ctx, d)
		if err == nil {
			got := "sha256:" + hex.EncodeToString(d.h.Sum(nil))
			if got != want {
				out.Close()
				os.Remove(path)
				return d.have, fmt.Errorf("%w: got %s, want %s", ErrDigest, got, want)
			}
			return d.have, out.Sync()
		}
		var he *HTTPError
		if errors.As(err, &he) && !he.retryable() {
			return d.have, err
		}
		last = err
	}
	return d.have, fmt.Errorf("GET %s: gave up after %d attempts at byte %d: %w", url, f.attempts(), d.have, last)
}

// fetch requests the rest of d and appends it.
func (f *Fetcher) fetch(ctx context.Context, d *download) error {
	req, err := f.request(ctx, http.MethodGet, d.url, nil)
	if err != nil {
		return err
	}
	if d.have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(d.have, 10)+"-")
	}
	resp, err := f.client().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch {
	case d.have > 0 && resp.StatusCode == http.StatusPartialContent:
		if start, ok := rangeStart(resp.Header.Get("Content-Range")); !ok || start != d.have {
			// Not the part asked for: appending it would corrupt the file.
			if err := d.restart(); err != nil {
				return err
			}
			return fmt.Errorf("GET %s: asked from byte %d, got Content-Range %q; starting over", d.url, d.have, resp.Header.Get("Content-Range"))
		}
	case resp.StatusCode == http.StatusOK:
		if d.have > 0 {
			// The server ignored Range: take the whole body again.
			if err := d.restart(); err != nil {
				return err
			}
		}
	default:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return &HTTPError{URL: d.url, Status: resp.Status, Code: resp.StatusCode, Body: firstLine(b)}
	}
	n, err := io.Copy(io.MultiWriter(d.out, d.h), resp.Body)
	d.have += n
	if err != nil {
		return fmt.Errorf("GET %s: %w", d.url, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return fmt.Errorf("GET %s: %w after %d of %d bytes", d.url, io.ErrUnexpectedEOF, n, resp.ContentLength)
	}
	return nil
}

// rangeStart reads the first byte of "bytes START-END/TOTAL".
func rangeStart(cr string) (int64, bool) {
	rest, ok := strings.CutPrefix(cr, "bytes ")
	if !ok {
		return 0, false
	}
	s, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n >= 0
}

// VerifyFile checks the sha256 of a file in fsys.
func VerifyFile(fsys fs.FS, name, want string) error {
	f, err := fsys.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("%w: got %s, want %s", ErrDigest, got, want)
	}
	return nil
}
