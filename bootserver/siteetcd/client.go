// Package siteetcd is the boot server's view of the site's etcd cluster:
// it asks every member for its status, remembers the cluster's ID so that
// profiles can tell a member with no data that a cluster exists, takes and
// keeps snapshots, and holds an operator's restore request until the
// restored cluster answers again.
//
// etcd is reached through its JSON gateway (/v3/...) over TLS with a client
// certificate from the site CA, as the machines reach it. There is no etcd
// client library here: three POSTs are all it takes, and the library would
// pull gRPC and etcd's module graph into the boot server for them.
package siteetcd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/bootserver/pki"
	"github.com/plinth-dev/plinth/roles"
)

// ClientCN is the common name of the client certificate the boot server
// (and plinth etcd) presents to etcd.
const ClientCN = "plinth-boot-server"

// ClientURL is an etcd member's client URL at address (an IP or a host
// name). It repeats initramfs/role.ClientURL: that package is machine code
// and brings go-systemd with it.
func ClientURL(address string) string {
	if a, err := netip.ParseAddr(address); err == nil && a.Is6() {
		return "https://[" + address + "]:" + strconv.Itoa(roles.EtcdClientPort)
	}
	return "https://" + address + ":" + strconv.Itoa(roles.EtcdClientPort)
}

// Client talks to etcd members' JSON gateway.
type Client struct {
	HTTP *http.Client
	// Timeout bounds a status request; 0 means 3 s. A snapshot is bounded
	// only by its context.
	Timeout time.Duration
}

// NewClient is a Client that trusts the site CA and presents a client
// certificate (CN ClientCN, client auth only) it issues from it. The key
// lives in memory only: nothing to protect on disk or to rotate by hand;
// a new one is issued at each start and when the current one is within a
// month of expiry.
func NewClient(ca *pki.CA) (*Client, error) {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert())
	id := &clientCert{ca: ca}
	if _, err := id.get(); err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		RootCAs:    pool,
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return id.get()
		},
	}
	return &Client{HTTP: &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}}, nil
}

// clientCert issues the client certificate and renews it before it ends.
type clientCert struct {
	ca   *pki.CA
	mu   sync.Mutex
	cert *tls.Certificate
}

func (c *clientCert) get() (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert != nil && time.Until(c.cert.Leaf.NotAfter) > 30*24*time.Hour {
		return c.cert, nil
	}
	kp, err := c.ca.Issue(pki.Request{CommonName: ClientCN, Client: true})
	if err != nil {
		return nil, fmt.Errorf("etcd client certificate: %w", err)
	}
	cert, err := tls.X509KeyPair([]byte(kp.Cert), []byte(kp.Key))
	if err != nil {
		return nil, fmt.Errorf("etcd client certificate: %w", err)
	}
	c.cert = &cert // X509KeyPair fills Leaf
	return c.cert, nil
}

// Status is one member's answer to /v3/maintenance/status. IDs are hex,
// as etcdctl prints them.
type Status struct {
	Endpoint  string
	ClusterID string
	MemberID  string
	Leader    string // "" when the member knows no leader
	Revision  int64
	Version   string
	DBSize    int64
	Errors    []string // alarms
	IsLearner bool
}

// Healthy reports whether the member is part of a working cluster: it
// knows a leader and raises no alarm.
func (s Status) Healthy() bool { return s.Leader != "" && len(s.Errors) == 0 }

// u64 reads a protobuf 64-bit integer, which the gateway sends as a
// decimal string (and omits when zero).
type u64 uint64

func (u *u64) UnmarshalJSON(b []byte) error {
	v, err := strconv.ParseUint(strings.Trim(string(b), `"`), 10, 64)
	*u = u64(v)
	return err
}

type header struct {
	ClusterID u64 `json:"cluster_id"`
	MemberID  u64 `json:"member_id"`
	Revision  u64 `json:"revision"`
}

// statusResponse is etcdserverpb.StatusResponse as etcd 3.6's gateway
// marshals it (protojson, proto field names, zero values left out).
type statusResponse struct {
	Header    header   `json:"header"`
	Version   string   `json:"version"`
	DBSize    u64      `json:"dbSize"`
	Leader    u64      `json:"leader"`
	Errors    []string `json:"errors"`
	IsLearner bool     `json:"isLearner"`
}

// Status asks one member (its client URL) for its status.
func (c *Client) Status(ctx context.Context, endpoint string) (Status, error) {
	t := c.Timeout
	if t <= 0 {
		t = 3 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	res, err := c.post(ctx, endpoint, "/v3/maintenance/status")
	if err != nil {
		return Status{}, err
	}
	defer res.Body.Close()
	var r statusResponse
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&r); err != nil {
		return Status{}, fmt.Errorf("%s: status: %w", endpoint, err)
	}
	if r.Header.ClusterID == 0 {
		return Status{}, fmt.Errorf("%s: status carries no cluster ID", endpoint)
	}
	st := Status{
		Endpoint:  endpoint,
		ClusterID: hexID(uint64(r.Header.ClusterID)),
		MemberID:  hexID(uint64(r.Header.MemberID)),
		Revision:  int64(r.Header.Revision),
		Version:   r.Version,
		DBSize:    int64(r.DBSize),
		Errors:    r.Errors,
		IsLearner: r.IsLearner,
	}
	if r.Leader != 0 {
		st.Leader = hexID(uint64(r.Leader))
	}
	return st, nil
}

func hexID(v uint64) string { return strconv.FormatUint(v, 16) }

// post sends an empty request to a gateway path; a status other than 200
// is an error carrying the body.
func (c *Client) post(ctx context.Context, endpoint, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(endpoint, "/")+path, strings.NewReader("{}"))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		res.Body.Close()
		return nil, fmt.Errorf("%s%s: %s: %s", endpoint, path, res.Status, strings.TrimSpace(string(b)))
	}
	return res, nil
}

// Snapshot streams a member's database into w, as etcdctl snapshot save
// writes it: the database followed by the 32-byte sha256 of it that etcd
// appends (etcdutl snapshot restore checks it). The trailing checksum is
// verified here; on any error what was written to w must be thrown away.
// It returns the bytes written and the storage version etcd reported.
func (c *Client) Snapshot(ctx context.Context, endpoint string, w io.Writer) (int64, string, error) {
	res, err := c.post(ctx, endpoint, "/v3/maintenance/snapshot")
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	n, version, err := copySnapshot(w, res.Body)
	if err != nil {
		return n, version, fmt.Errorf("%s: snapshot: %w", endpoint, err)
	}
	return n, version, nil
}

// snapshotChunk is one object of the gateway's snapshot stream: each
// etcdserverpb.SnapshotResponse comes as {"result": {...}} on its own
// line; an error during the stream as {"error": {...}}, after a 200.
type snapshotChunk struct {
	Result *struct {
		RemainingBytes u64    `json:"remaining_bytes"`
		Blob           []byte `json:"blob"` // base64
		Version        string `json:"version"`
	} `json:"result"`
	Error *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// ErrChecksum is a snapshot whose trailing sha256 does not match its data.
var ErrChecksum = errors.New("snapshot checksum does not match its data")

// copySnapshot decodes the gateway's snapshot stream from r into w and
// checks its trailing sha256.
func copySnapshot(w io.Writer, r io.Reader) (int64, string, error) {
	dec := json.NewDecoder(r)
	tw := &trailerWriter{w: w, h: sha256.New()}
	version := ""
	var last *u64
	for {
		var ch snapshotChunk
		err := dec.Decode(&ch)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return tw.n, version, fmt.Errorf("stream: %w", err)
		}
		if ch.Error != nil {
			return tw.n, version, fmt.Errorf("etcd: %s (code %d)", ch.Error.Message, ch.Error.Code)
		}
		if ch.Result == nil {
			return tw.n, version, errors.New("stream: an object with neither result nor error")
		}
		if ch.Result.Version != "" {
			version = ch.Result.Version
		}
		rb := ch.Result.RemainingBytes
		last = &rb
		if _, err := tw.Write(ch.Result.Blob); err != nil {
			return tw.n, version, err
		}
	}
	if last == nil || *last != 0 {
		return tw.n, version, errors.New("stream ended before the last chunk")
	}
	return tw.n, version, tw.check()
}

// trailerWriter passes everything to w and hashes all but the last 32
// bytes seen, which it keeps: they are the checksum.
type trailerWriter struct {
	w    io.Writer
	h    hash.Hash
	tail []byte
	n    int64
}

func (t *trailerWriter) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	t.n += int64(n)
	if err != nil {
		return n, err
	}
	t.tail = append(t.tail, p...)
	if over := len(t.tail) - sha256.Size; over > 0 {
		t.h.Write(t.tail[:over])
		t.tail = append(t.tail[:0], t.tail[over:]...)
	}
	return n, nil
}

// check compares the trailing 32 bytes with the hash of what came before;
// like etcdctl, it also wants the size to be a multiple of 512 plus 32.
func (t *trailerWriter) check() error {
	if t.n <= sha256.Size || t.n%512 != sha256.Size {
		return fmt.Errorf("%d bytes: no sha256 trailer where etcd puts one", t.n)
	}
	if !bytes.Equal(t.h.Sum(nil), t.tail) {
		return ErrChecksum
	}
	return nil
}
