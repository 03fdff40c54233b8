package builder

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/internal/fsutil"
	"github.com/plinth-dev/plinth/manifest"
)

// publish assembles the output directory beside outDir from cached files and
// the manifest, then swaps it into place in one atomic rename, so a reader
// (or the boot server) sees either the old build or the new one, never a mix.
func (b *build) publish(outDir string, files map[string]string, m *manifest.Manifest) error {
	parent := filepath.Dir(outDir)
	stage, err := os.MkdirTemp(parent, "."+filepath.Base(outDir)+".new-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage) // after a swap it holds the old build
	m.Files = m.Files[:0]
	for _, name := range sortedKeys(files) {
		dst := filepath.Join(stage, name)
		if err := linkOrCopy(files[name], dst); err != nil {
			return fmt.Errorf("publish %s: %w", name, err)
		}
		d, n, err := b.digest(files[name])
		if err != nil {
			return err
		}
		m.Files = append(m.Files, manifest.File{Name: name, SHA256: d, Size: n})
	}
	data, err := m.Encode()
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(stage, manifest.FileName), data, 0o644); err != nil {
		return err
	}
	if err := os.Chmod(stage, 0o755); err != nil {
		return err
	}
	if err := fsutil.SyncDir(stage); err != nil {
		return err
	}
	// RENAME_EXCHANGE swaps the two names atomically when outDir exists.
	err = unix.Renameat2(unix.AT_FDCWD, stage, unix.AT_FDCWD, outDir, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.ENOENT) {
		err = os.Rename(stage, outDir)
	}
	if err != nil {
		return fmt.Errorf("publish %s: %w", outDir, err)
	}
	return fsutil.SyncDir(parent)
}

// linkOrCopy hard-links src to dst (cache and output on one file system) or
// copies it. Cached files are never modified in place, so sharing is safe.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
