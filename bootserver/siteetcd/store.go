package siteetcd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/internal/fsutil"
)

// Files of a Store, under the boot server's state directory.
const (
	ClusterFile  = "cluster.json"
	RestoreFile  = "restore.json"
	SnapshotsDir = "snapshots"
	// SnapshotExt, SumExt and StatusExt name a snapshot and its sidecars:
	// 20260820T151315Z.db, 20260820T151315Z.db.sha256 (sha256sum's format)
	// and 20260820T151315Z.db.status.json (etcdutl snapshot status -w json).
	SnapshotExt = ".db"
	SumExt      = ".sha256"
	StatusExt   = ".status.json"
	// timeName is a snapshot's name: its UTC time, sortable, no colons.
	timeName = "20060102T150405Z"
)

// Store is the etcd part of the boot server's state: <state>/etcd.
type Store struct{ Dir string }

// ClusterRecord is the etcd cluster the boot server last saw.
type ClusterRecord struct {
	ClusterID string    `json:"cluster_id"` // hex, as etcdctl prints it
	Seen      time.Time `json:"seen"`       // last seen (rewritten at most every recordEvery)
	FirstSeen time.Time `json:"first_seen"` // first seen with this ID
}

// RestoreRequest is an operator's request (plinth etcd restore) that the
// site's etcd members restore a snapshot when they find no cluster.
type RestoreRequest struct {
	File      string    `json:"file"`   // absolute path of the snapshot
	SHA256    string    `json:"sha256"` // hex digest of the whole file
	Requested time.Time `json:"requested"`
	// Offered is when the boot server first found no member answering and
	// put the request into the members' profiles; it clears the request
	// only after that, once every member answers again.
	Offered *time.Time `json:"offered,omitempty"`
}

// Cluster reads the cluster record; the zero record when there is none.
func (s Store) Cluster() (ClusterRecord, error) {
	var r ClusterRecord
	err := s.readJSON(ClusterFile, &r)
	if errors.Is(err, fs.ErrNotExist) {
		return ClusterRecord{}, nil
	}
	return r, err
}

// ForgetCluster removes the cluster record (plinth etcd forget); it
// reports whether there was one.
func (s Store) ForgetCluster() (bool, error) {
	err := os.Remove(filepath.Join(s.Dir, ClusterFile))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err == nil {
		err = fsutil.SyncDir(s.Dir)
	}
	return err == nil, err
}

// SaveCluster writes the cluster record atomically.
func (s Store) SaveCluster(r ClusterRecord) error { return s.writeJSON(ClusterFile, r) }

// Restore reads the restore request; nil when there is none.
func (s Store) Restore() (*RestoreRequest, error) {
	var r RestoreRequest
	err := s.readJSON(RestoreFile, &r)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if r.File == "" || !isHexDigest(r.SHA256) {
		return nil, fmt.Errorf("%s: no file or no sha256 digest", filepath.Join(s.Dir, RestoreFile))
	}
	return &r, nil
}

// SaveRestore writes the restore request atomically.
func (s Store) SaveRestore(r RestoreRequest) error { return s.writeJSON(RestoreFile, r) }

// CancelRestore removes the restore request; false when there was none.
func (s Store) CancelRestore() (bool, error) {
	err := os.Remove(filepath.Join(s.Dir, RestoreFile))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, fsutil.SyncDir(s.Dir)
}

func (s Store) readJSON(name string, v any) error {
	b, err := os.ReadFile(filepath.Join(s.Dir, name))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(s.Dir, name), err)
	}
	return nil
}

func (s Store) writeJSON(name string, v any) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(s.Dir, name), append(b, '\n'), 0o600)
}

// SnapshotDir is where the snapshots are kept.
func (s Store) SnapshotDir() string { return filepath.Join(s.Dir, SnapshotsDir) }

// NewSnapshotPath is the path a snapshot taken at t is published at; a
// suffix keeps two taken in the same second apart.
func (s Store) NewSnapshotPath(t time.Time) string {
	base := t.UTC().Format(timeName)
	p := filepath.Join(s.SnapshotDir(), base+SnapshotExt)
	for i := 2; exists(p); i++ {
		p = filepath.Join(s.SnapshotDir(), fmt.Sprintf("%s-%d%s", base, i, SnapshotExt))
	}
	return p
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// Snapshot is one published snapshot.
type Snapshot struct {
	Name   string // file name without .db
	Path   string
	Time   time.Time
	Size   int64
	SHA256 string    // from its .sha256 file; "" when missing
	Status *DBStatus // from its .status.json; nil when etcdutl did not check it
}

// Snapshots lists the published snapshots, oldest first. Sidecars left
// without their .db (a publish cut short) are not listed.
func (s Store) Snapshots() ([]Snapshot, error) {
	ents, err := os.ReadDir(s.SnapshotDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Snapshot
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), SnapshotExt)
		if !ok || !e.Type().IsRegular() || strings.HasPrefix(name, ".") {
			continue
		}
		t, err := time.Parse(timeName, name[:min(len(name), len(timeName))])
		if err != nil {
			continue // not one of ours
		}
		info, err := e.Info()
		if err != nil {
			return nil, err
		}
		p := filepath.Join(s.SnapshotDir(), e.Name())
		sn := Snapshot{Name: name, Path: p, Time: t, Size: info.Size()}
		sn.SHA256, _ = ReadSum(p + SumExt)
		var st DBStatus
		if b, err := os.ReadFile(p + StatusExt); err == nil && json.Unmarshal(b, &st) == nil {
			sn.Status = &st
		}
		out = append(out, sn)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Prune removes all but the newest keep snapshots (with their sidecars),
// never the one at path except, and returns the paths removed. Sidecars
// whose snapshot is gone are removed too.
func (s Store) Prune(keep int, except string) ([]string, error) {
	list, err := s.Snapshots()
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for i := 0; i < len(list)-keep; i++ {
		p := list[i].Path
		if except != "" && sameFile(p, except) {
			continue
		}
		for _, f := range []string{p + SumExt, p + StatusExt, p} {
			if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		removed = append(removed, p)
	}
	ents, _ := os.ReadDir(s.SnapshotDir())
	for _, e := range ents {
		for _, ext := range []string{SumExt, StatusExt} {
			if db, ok := strings.CutSuffix(e.Name(), ext); ok && strings.HasSuffix(db, SnapshotExt) && !exists(filepath.Join(s.SnapshotDir(), db)) {
				os.Remove(filepath.Join(s.SnapshotDir(), e.Name()))
			}
		}
	}
	if len(removed) > 0 {
		errs = append(errs, fsutil.SyncDir(s.SnapshotDir()))
	}
	return removed, errors.Join(errs...)
}

func sameFile(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// Find resolves what an operator named: a path to a file, or the name of a
// published snapshot (with or without .db).
func (s Store) Find(arg string) (string, error) {
	if strings.ContainsRune(arg, filepath.Separator) || exists(arg) {
		if !exists(arg) {
			return "", fmt.Errorf("%s: no such file", arg)
		}
		return filepath.Abs(arg)
	}
	name := strings.TrimSuffix(arg, SnapshotExt)
	p := filepath.Join(s.SnapshotDir(), name+SnapshotExt)
	if !exists(p) {
		return "", fmt.Errorf("%s: neither a file nor a snapshot in %s (plinth etcd snapshots lists them)", arg, s.SnapshotDir())
	}
	return filepath.Abs(p) // the boot server reads it from another directory
}
