package siteetcd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/internal/fsutil"
)

// DBStatus is what etcdutl snapshot status -w json prints about a
// snapshot (etcdutl's snapshot.Status).
type DBStatus struct {
	Hash      uint32 `json:"hash"`
	Revision  int64  `json:"revision"`
	TotalKey  int    `json:"totalKey"`
	TotalSize int64  `json:"totalSize"`
	Version   string `json:"version"`
}

// FindEtcdutl returns the etcdutl to check snapshots with: flag when
// given (it must exist), else etcdutl on PATH, else "".
func FindEtcdutl(flag string) (string, error) {
	if flag != "" {
		p, err := exec.LookPath(flag)
		if err != nil {
			return "", fmt.Errorf("--etcdutl: %w", err)
		}
		return p, nil
	}
	p, err := exec.LookPath("etcdutl")
	if err != nil {
		return "", nil
	}
	return p, nil
}

// EtcdutlStatus runs etcdutl snapshot status on file: it opens the
// database and checks its pages. The JSON is returned as etcdutl printed it.
func EtcdutlStatus(ctx context.Context, etcdutl, file string) (DBStatus, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, etcdutl, "snapshot", "status", file, "-w", "json")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return DBStatus{}, nil, fmt.Errorf("etcdutl snapshot status %s: %w: %s", file, err, strings.TrimSpace(stderr.String()))
	}
	out := bytes.TrimSpace(stdout.Bytes())
	var st DBStatus
	if err := json.Unmarshal(out, &st); err != nil {
		return DBStatus{}, nil, fmt.Errorf("etcdutl snapshot status %s: %w", file, err)
	}
	return st, append(out, '\n'), nil
}

// ReadSum reads the digest from a sha256sum-format file.
func ReadSum(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 || !isHexDigest(f[0]) {
		return "", fmt.Errorf("%s: no sha256 digest", path)
	}
	return strings.ToLower(f[0]), nil
}

func isHexDigest(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == sha256.Size
}

// Saved is a snapshot taken and published.
type Saved struct {
	Path     string
	Endpoint string // the member it came from
	Size     int64
	SHA256   string // of the whole file
	Took     time.Duration
	Version  string    // storage version etcd reported
	Status   *DBStatus // nil without etcdutl
}

// Save takes a snapshot from the first of endpoints that gives a whole one
// and publishes it at path with its .sha256 and, when etcdutl is not "",
// its .status.json: all or nothing. The data goes to a temporary file
// beside path first; only a stream whose trailing checksum matches, and
// that etcdutl accepts, is renamed into place, after its sidecars.
func Save(ctx context.Context, c *Client, endpoints []string, path, etcdutl string) (Saved, error) {
	if len(endpoints) == 0 {
		return Saved{}, errors.New("snapshot: no healthy etcd member to take it from")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Saved{}, err
	}
	var errs []error
	for _, ep := range endpoints {
		s, err := save(ctx, c, ep, path, etcdutl)
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return Saved{}, fmt.Errorf("snapshot: %w", errors.Join(errs...))
}

func save(ctx context.Context, c *Client, endpoint, path, etcdutl string) (s Saved, err error) {
	start := time.Now()
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return Saved{}, err
	}
	tmp := f.Name()
	published := false
	defer func() {
		f.Close()
		if !published {
			os.Remove(tmp)
			os.Remove(path + SumExt)
			os.Remove(path + StatusExt)
		}
	}()
	h := sha256.New()
	n, version, err := c.Snapshot(ctx, endpoint, io.MultiWriter(f, h))
	if err != nil {
		return Saved{}, err
	}
	if err := f.Close(); err != nil {
		return Saved{}, err
	}
	s = Saved{Path: path, Endpoint: endpoint, Size: n, SHA256: hex.EncodeToString(h.Sum(nil)), Version: version}
	if etcdutl != "" {
		st, raw, err := EtcdutlStatus(ctx, etcdutl, tmp)
		if err != nil {
			return Saved{}, err
		}
		s.Status = &st
		if err := fsutil.WriteFileAtomic(path+StatusExt, raw, 0o600); err != nil {
			return Saved{}, err
		}
	}
	if err := fsutil.WriteFileAtomic(path+SumExt, []byte(s.SHA256+"  "+filepath.Base(path)+"\n"), 0o600); err != nil {
		return Saved{}, err
	}
	if err := fsutil.CommitFile(tmp, path, 0o600); err != nil {
		return Saved{}, err
	}
	published = true
	s.Took = time.Since(start)
	return s, nil
}

// Checked is what Check found about a snapshot file.
type Checked struct {
	Path   string
	SHA256 string
	Size   int64
	Status *DBStatus // nil without etcdutl
}

// ErrSumMismatch is a snapshot whose content is not what its .sha256 says.
var ErrSumMismatch = errors.New("does not match its .sha256")

// Check verifies a snapshot file before it is offered for a restore: its
// digest against its .sha256 file (which must exist), etcd's own sha256
// trailer inside it, and, when etcdutl is not "", etcdutl's status.
func Check(ctx context.Context, path, etcdutl string) (Checked, error) {
	want, err := ReadSum(path + SumExt)
	if err != nil {
		return Checked{}, fmt.Errorf("%s: %w (a snapshot is checked against its .sha256)", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return Checked{}, err
	}
	defer f.Close()
	h := sha256.New()
	tw := &trailerWriter{w: h, h: sha256.New()}
	if _, err := io.Copy(tw, f); err != nil {
		return Checked{}, fmt.Errorf("%s: %w", path, err)
	}
	c := Checked{Path: path, SHA256: hex.EncodeToString(h.Sum(nil)), Size: tw.n}
	if c.SHA256 != want {
		return Checked{}, fmt.Errorf("%s: sha256 %s %w (%s)", path, c.SHA256, ErrSumMismatch, want)
	}
	if err := tw.check(); err != nil {
		return Checked{}, fmt.Errorf("%s: %w", path, err)
	}
	if etcdutl != "" {
		st, _, err := EtcdutlStatus(ctx, etcdutl, path)
		if err != nil {
			return Checked{}, err
		}
		c.Status = &st
	}
	return c, nil
}
