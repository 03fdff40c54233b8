// Package events posts boot events to the boot server, best effort: boot
// and the readiness agent never wait long for the operator's screen.
package events

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/profiles/node"
)

// Sink receives boot events; Post must return promptly.
type Sink interface {
	Post(ctx context.Context, e api.Event)
}

// Poster sends each event at once with a short timeout and reports the
// error; callers that must not wait use a Queue.
type Poster struct {
	URL     string // the server's base URL + api.PathEvents
	Machine string
	Client  *http.Client
	Timeout time.Duration // per event; default 2s
	// Token is the boot's report token (api.ParamToken), sent as
	// api.HeaderToken: the proof of a machine that has no certificate yet.
	Token string
}

// Send posts one event, stamping the machine (and the time if unset).
func (p *Poster) Send(ctx context.Context, e api.Event) error {
	_, err := p.Report(ctx, e)
	return err
}

// Report posts one event like Send and returns the server's reply: the
// journals an operator asked this machine for.
func (p *Poster) Report(ctx context.Context, e api.Event) (api.EventReply, error) {
	var rep api.EventReply
	e.Machine = p.Machine
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	b, err := json.Marshal(e)
	if err != nil {
		return rep, fmt.Errorf("event: %w", err)
	}
	resp, err := p.do(ctx, p.URL, "application/json", b)
	if err != nil {
		return rep, fmt.Errorf("post event: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return rep, fmt.Errorf("post event: %s", resp.Status)
	}
	if resp.StatusCode == http.StatusOK {
		// A reply the agent cannot read asks for nothing it understands.
		_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&rep)
	}
	return rep, nil
}

// Journal uploads a unit's journal to the server (api.LogPath), the newest
// api.MaxLogBytes of it.
func (p *Poster) Journal(ctx context.Context, unit string, text []byte) error {
	if len(text) > api.MaxLogBytes {
		text = text[len(text)-api.MaxLogBytes:]
	}
	url := strings.TrimSuffix(p.URL, api.PathEvents) + api.LogPath(p.Machine, unit)
	resp, err := p.do(ctx, url, "text/plain; charset=utf-8", text)
	if err != nil {
		return fmt.Errorf("upload journal of %s: %w", unit, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("upload journal of %s: %s", unit, resp.Status)
	}
	return nil
}

// do POSTs body to url within the Poster's timeout; the response body is
// read before the timeout's context is released.
func (p *Poster) do(ctx context.Context, url, contentType string, body []byte) (*http.Response, error) {
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Content-Type", contentType)
	if p.Token != "" {
		req.Header.Set(api.HeaderToken, p.Token)
	}
	c := p.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// Queue holds events until Open (the network is up) and then posts them in
// order from one goroutine. Post never blocks: when the buffer is full the
// event is dropped and counted, since the console already shows it.
type Queue struct {
	p       *Poster
	ch      chan api.Event
	open    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	pending int
	idle    *sync.Cond
	dropped int
	failed  int
}

// NewQueue returns a queue of up to size events in front of p.
func NewQueue(p *Poster, size int) *Queue {
	q := &Queue{p: p, ch: make(chan api.Event, size), open: make(chan struct{})}
	q.idle = sync.NewCond(&q.mu)
	go q.run()
	return q
}

// Post queues e.
func (q *Queue) Post(_ context.Context, e api.Event) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	select {
	case q.ch <- e:
		q.pending++
	default:
		q.dropped++
	}
}

// Open starts sending; events posted before it wait in the buffer.
func (q *Queue) Open() { q.once.Do(func() { close(q.open) }) }

func (q *Queue) run() {
	<-q.open
	for e := range q.ch {
		// A background context: a Post's caller may be gone; Send has its
		// own timeout.
		err := q.p.Send(context.Background(), e)
		q.mu.Lock()
		if err != nil {
			q.failed++
		}
		q.pending--
		q.idle.Broadcast()
		q.mu.Unlock()
	}
}

// Flush waits until every queued event was tried or ctx is done, and
// returns how many events were dropped or failed so far.
func (q *Queue) Flush(ctx context.Context) (lost int) {
	done := make(chan struct{})
	go func() {
		q.mu.Lock()
		for q.pending > 0 && ctx.Err() == nil {
			q.idle.Wait()
		}
		q.mu.Unlock()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		// Wake the waiter so it sees ctx.Err and exits.
		q.mu.Lock()
		q.idle.Broadcast()
		q.mu.Unlock()
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dropped + q.failed + q.pending
}

// TLSFiles are where a booted machine keeps its certificate, its key and
// the site CA.
type TLSFiles struct {
	CA, Cert, Key string
	// Pin, when set, is the api.CAFingerprint the CA file must have (the
	// boot command line's api.ParamCA): a profile whose CA is not the
	// pinned one is not trusted to say whom to report to.
	Pin string
}

// ForMachine is p set up to report as the machine cfg describes: to the
// profile's ReportURL over HTTPS with the machine's own certificate when
// the profile names one and the files load (the only reports the boot
// server lets change the API pool), else to its BootServer with the
// boot's token. Its journal uploads go the same way.
func (p Poster) ForMachine(cfg *node.Config, files TLSFiles, token string) (Poster, error) {
	p.Machine = cfg.Machine
	if cfg.Cluster == nil {
		return p, errors.New("the profile has no cluster settings (no boot server)")
	}
	if cfg.Cluster.ReportURL != "" {
		c, err := BootServerClient(files)
		if err == nil {
			p.URL, p.Client, p.Token = strings.TrimRight(cfg.Cluster.ReportURL, "/")+api.PathEvents, c, ""
			return p, nil
		}
		// Without its certificate the machine still says how it is.
		p.URL, p.Token = strings.TrimRight(cfg.Cluster.BootServer, "/")+api.PathEvents, token
		return p, fmt.Errorf("reporting with the boot token: the machine's certificate: %w", err)
	}
	p.URL, p.Token = strings.TrimRight(cfg.Cluster.BootServer, "/")+api.PathEvents, token
	return p, nil
}

// TLSClient trusts the site CA only and presents the machine's certificate
// (none when f.Cert is empty).
func TLSClient(f TLSFiles) (*http.Client, error) {
	cfg, err := TLSConfig(f)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}, nil
}

// TLSConfig is the client TLS configuration of TLSClient.
func TLSConfig(f TLSFiles) (*tls.Config, error) {
	ca, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s: no certificate", f.CA)
	}
	if f.Pin != "" {
		if err := CheckPin(ca, f.Pin); err != nil {
			return nil, fmt.Errorf("%s: %w", f.CA, err)
		}
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if f.Cert != "" {
		kp, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	return cfg, nil
}

// BootServerClient is TLSClient for the boot server: it checks the
// server's certificate for api.BootServerSAN, not for the address in the
// URL, so a machine that reached the server through an address of its own
// (a NAT, QEMU's 10.0.2.2) still knows it is the site's boot server.
func BootServerClient(f TLSFiles) (*http.Client, error) {
	c, err := TLSClient(f)
	if err != nil {
		return nil, err
	}
	c.Transport.(*http.Transport).TLSClientConfig.ServerName = api.BootServerSAN
	return c, nil
}

// CheckPin says whether caPEM is one certificate whose api.CAFingerprint
// is pin.
func CheckPin(caPEM []byte, pin string) error {
	b, rest := pem.Decode(caPEM)
	if b == nil || b.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) > 0 {
		return fmt.Errorf("want exactly one PEM certificate, the site CA pinned by %s", api.ParamCA)
	}
	if got := api.CAFingerprint(b.Bytes); got != pin {
		return fmt.Errorf("the CA is %s, not the site CA %s=%s", got, api.ParamCA, pin)
	}
	return nil
}

// PinnedClient talks HTTPS to serverURL and trusts one CA only: the one
// whose api.CAFingerprint is pin, which the server sends in its chain (as
// plinth serve does). Stage 1 knows the site CA by that fingerprint alone,
// from its boot command line, before it has the CA itself. The server's
// certificate must be for api.BootServerSAN, whatever serverURL's host.
func PinnedClient(serverURL, pin string) (*http.Client, error) {
	u, err := url.Parse(serverURL)
	if err != nil || u.Scheme != "https" || u.Hostname() == "" {
		return nil, fmt.Errorf("%q: want an https:// URL", serverURL)
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Go's own check needs the CA in RootCAs; the machine has only
		// its fingerprint, so VerifyConnection makes the whole check.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPinned(cs.PeerCertificates, api.BootServerSAN, pin)
		},
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}, nil
}

// verifyPinned accepts a server chain whose leaf is for host (the boot
// server's name) and chains
// to a certificate in it with fingerprint pin.
func verifyPinned(chain []*x509.Certificate, host, pin string) error {
	if len(chain) == 0 {
		return errors.New("the server sent no certificate")
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	pinned := false
	for _, c := range chain[1:] {
		if api.CAFingerprint(c.Raw) == pin {
			roots.AddCert(c)
			pinned = true
		} else {
			inter.AddCert(c)
		}
	}
	if !pinned {
		return fmt.Errorf("the server's certificate chain does not hold the site CA %s=%s", api.ParamCA, pin)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: host}); err != nil {
		return fmt.Errorf("the server's certificate is not the pinned site CA's for %s: %w", host, err)
	}
	return nil
}
