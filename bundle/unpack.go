package bundle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/internal/fsutil"
	"github.com/plinth-dev/plinth/manifest"
)

// Unpack verifies the bundle at file while unpacking the entries keep
// accepts (nil: all) into a new directory under stateDir, and only when
// everything verified renames it into place as stateDir/bundle-<digest
// prefix>, replacing an earlier unpacking of the same bundle in one atomic
// swap. Nothing of a bad bundle (or one trust does not accept) is left
// behind.
func Unpack(ctx context.Context, file, stateDir string, keep func(name string) bool, trust Trust) (string, *Result, error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return "", nil, fmt.Errorf("bundle: state: %w", err)
	}
	tmp, err := os.MkdirTemp(stateDir, ".unpack-*")
	if err != nil {
		return "", nil, fmt.Errorf("bundle: state: %w", err)
	}
	defer os.RemoveAll(tmp) // after a swap it holds the replaced copy
	sink := func(name string) (io.WriteCloser, error) {
		if keep != nil && !keep(name) {
			return nil, nil
		}
		p := filepath.Join(tmp, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, err
		}
		return syncCloser{f}, nil
	}
	res, err := scan(ctx, file, sink, trust)
	if err != nil {
		return "", nil, err
	}
	data, err := json.MarshalIndent(res.Manifest, "", "  ")
	if err != nil {
		return "", nil, err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(tmp, ManifestName), append(data, '\n'), 0o644); err != nil {
		return "", nil, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", nil, err
	}
	hexpart, _ := manifest.ParseDigest(res.Digest)
	final := filepath.Join(stateDir, "bundle-"+hexpart[:16])
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.ENOENT) {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		return "", nil, fmt.Errorf("bundle: unpack into %s: %w", final, err)
	}
	return final, res, nil
}

// ServeSet is the keep filter for a boot server: artifacts and the site,
// not the mirror.
func ServeSet(name string) bool {
	return strings.HasPrefix(name, ArtifactsDir+"/") || strings.HasPrefix(name, SiteDir+"/")
}

type syncCloser struct{ f *os.File }

func (s syncCloser) Write(p []byte) (int, error) { return s.f.Write(p) }

func (s syncCloser) Close() error {
	err := s.f.Sync()
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	return err
}
