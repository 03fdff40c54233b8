// Package fsutil writes files so that a reader, or a crash, never sees
// half of one. Standard library only: the machine-side code may use it.
package fsutil

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// WriteFileAtomic writes data to path through a temporary file in the same
// directory: written, synced, renamed over path, and the directory synced,
// so that path holds either its old bytes or all of the new ones.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	return WriteAtomic(path, mode, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// WriteAtomic is WriteFileAtomic for contents too large to hold in memory:
// write streams them into the temporary file. If write or any later step
// fails, path is left as it was and the temporary file is removed. Errors
// name path; what write returns is wrapped, so errors.Is still sees it.
func WriteAtomic(path string, mode os.FileMode, write func(w io.Writer) error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	err = write(f)
	if err == nil {
		// Fchmod, not the create mode: the umask must not change it.
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(dir)
}

// CommitFile publishes tmp, a finished file some other writer made (a
// subprocess, a library that wants a path), as path: tmp gets mode, is
// synced and renamed over path, and path's directory is synced. tmp must be
// on the same file system as path. On error tmp is left for the caller to
// remove, as it was the caller's to make.
func CommitFile(tmp, path string, mode os.FileMode) error {
	f, err := os.Open(tmp) // fchmod and fsync need no write access
	if err != nil {
		return fmt.Errorf("commit %s: %w", path, err)
	}
	err = f.Chmod(mode)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("commit %s: %w", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir makes a rename or creation in dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
