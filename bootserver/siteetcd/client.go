// Package siteetcd is the boot server's view of the site's etcd cluster:
// it asks every member for its status, remembers the cluster's ID so that
// profiles can tell a member with no data that a cluster exists, takes and
// keeps snapshots, and holds an operator's restore request until the
// restored cluster answers again.
//
// etcd is reached over gRPC (internal/etcdrpc) with a client certificate
// from the site CA whose common name is the boot server's etcd user
// (roles.EtcdBootServer, etcd's root role: snapshots need it).
package siteetcd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/bootserver/pki"
	"github.com/plinth-dev/plinth/internal/etcdrpc"
	"github.com/plinth-dev/plinth/roles"
)

// ClientCN is the common name of the client certificate the boot server
// (and plinth etcd) presents to etcd: its etcd user.
var ClientCN = roles.EtcdBootServer.CommonName

// ClientURL is an etcd member's client URL at address (an IP or a host
// name). It repeats initramfs/role.ClientURL: that package is machine code
// and brings go-systemd with it.
func ClientURL(address string) string {
	if a, err := netip.ParseAddr(address); err == nil && a.Is6() {
		return "https://[" + address + "]:" + strconv.Itoa(roles.EtcdClientPort)
	}
	return "https://" + address + ":" + strconv.Itoa(roles.EtcdClientPort)
}

// Client talks to etcd members.
type Client struct {
	RPC *etcdrpc.Client
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
	return &Client{RPC: etcdrpc.New(cfg)}, nil
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

// Status asks one member (its client URL) for its status.
func (c *Client) Status(ctx context.Context, endpoint string) (Status, error) {
	r, err := c.RPC.Status(ctx, endpoint)
	if err != nil {
		return Status{}, err
	}
	if r.ClusterID == 0 {
		return Status{}, fmt.Errorf("%s: status carries no cluster ID", endpoint)
	}
	st := Status{
		Endpoint:  endpoint,
		ClusterID: hexID(r.ClusterID),
		MemberID:  hexID(r.MemberID),
		Revision:  r.Revision,
		Version:   r.Version,
		DBSize:    r.DBSize,
		Errors:    r.Errors,
		IsLearner: r.IsLearner,
	}
	if r.Leader != 0 {
		st.Leader = hexID(r.Leader)
	}
	return st, nil
}

func hexID(v uint64) string { return strconv.FormatUint(v, 16) }

// Snapshot streams a member's database into w, as etcdctl snapshot save
// writes it: the database followed by the 32-byte sha256 of it that etcd
// appends (etcdutl snapshot restore checks it). The trailing checksum is
// verified here; on any error what was written to w must be thrown away.
// It returns the bytes written and the storage version etcd reported.
func (c *Client) Snapshot(ctx context.Context, endpoint string, w io.Writer) (int64, string, error) {
	s := newSnapshotSink(w)
	err := c.RPC.Snapshot(ctx, endpoint, s.add)
	if err == nil {
		err = s.finish()
	}
	if err != nil {
		return s.tw.n, s.version, fmt.Errorf("%s: snapshot: %w", endpoint, err)
	}
	return s.tw.n, s.version, nil
}

// snapshotSink takes a snapshot stream's chunks, writes them through and
// checks the stream ends where etcd says, with a sha256 that matches.
type snapshotSink struct {
	tw      *trailerWriter
	version string
	last    *uint64 // the last chunk's remaining bytes
}

func newSnapshotSink(w io.Writer) *snapshotSink {
	return &snapshotSink{tw: &trailerWriter{w: w, h: sha256.New()}}
}

func (s *snapshotSink) add(ch etcdrpc.SnapshotChunk) error {
	if ch.Version != "" {
		s.version = ch.Version
	}
	rb := ch.Remaining
	s.last = &rb
	_, err := s.tw.Write(ch.Blob)
	return err
}

func (s *snapshotSink) finish() error {
	if s.last == nil || *s.last != 0 {
		return errors.New("stream ended before the last chunk")
	}
	return s.tw.check()
}

// ErrChecksum is a snapshot whose trailing sha256 does not match its data.
var ErrChecksum = errors.New("snapshot checksum does not match its data")

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
