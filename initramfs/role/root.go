package role

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// Root is the machine's future root file system, written before switch_root.
// Paths are absolute inside the root.
type Root interface {
	WriteFile(path string, data []byte, mode os.FileMode) error
	Symlink(target, path string) error
	Exists(path string) bool
}

// DirRoot is a Root at a directory (the overlay at /newroot, or a test dir).
// Paths resolve as if the directory were /: an image's absolute symlink
// (/var/run -> /run, /etc/resolv.conf -> /run/...) cannot make a write land
// in the initramfs. It needs openat2 (Linux 5.6).
type DirRoot string

var _ Root = DirRoot("")

// inRoot resolves symlinks, absolute ones included, inside the root.
const inRoot = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

func (d DirRoot) open(p string, flags uint64) (int, error) {
	rootFD, err := unix.Open(string(d), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: string(d), Err: err}
	}
	defer unix.Close(rootFD)
	fd, err := unix.Openat2(rootFD, "."+p, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Resolve: inRoot})
	if err != nil {
		return -1, &os.PathError{Op: "openat2", Path: p, Err: err}
	}
	return fd, nil
}

// split checks p and returns its parent directory and base name.
func split(p string) (string, string, error) {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return "", "", fmt.Errorf("path %q: want an absolute, clean path below /", p)
	}
	return path.Dir(p), path.Base(p), nil
}

// mkdirAll creates dir and its parents inside the root and returns an fd
// of it.
func (d DirRoot) mkdirAll(dir string) (int, error) {
	fd, err := d.open("/", unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return -1, err
	}
	cur := ""
	for _, name := range strings.Split(strings.TrimPrefix(dir, "/"), "/") {
		if name == "" {
			continue
		}
		cur += "/" + name
		next, err := d.open(cur, unix.O_PATH|unix.O_DIRECTORY)
		if errors.Is(err, unix.ENOENT) {
			if err := unix.Mkdirat(fd, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				unix.Close(fd)
				return -1, &os.PathError{Op: "mkdir", Path: cur, Err: err}
			}
			next, err = d.open(cur, unix.O_PATH|unix.O_DIRECTORY)
		}
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// WriteFile writes a file, creating parent directories, through a temporary
// file in the same directory and a rename, so a reader never sees half of it
// and a symlink at path is replaced, not followed.
func (d DirRoot) WriteFile(p string, data []byte, mode os.FileMode) error {
	dir, base, err := split(p)
	if err != nil {
		return err
	}
	dfd, err := d.mkdirAll(dir)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	tmp := "." + base + ".plinth-tmp"
	_ = unix.Unlinkat(dfd, tmp, 0)
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &os.PathError{Op: "create", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	_, err = f.Write(data)
	if err == nil {
		// Fchmod, not the create mode: the umask must not change what the
		// profile asked for.
		err = f.Chmod(mode.Perm() | mode&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(dfd, tmp, dfd, base)
	}
	if err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// Symlink creates (or replaces) a symbolic link at p pointing to target.
func (d DirRoot) Symlink(target, p string) error {
	dir, base, err := split(p)
	if err != nil {
		return err
	}
	dfd, err := d.mkdirAll(dir)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Unlinkat(dfd, base, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "replace", Path: p, Err: err}
	}
	if err := unix.Symlinkat(target, dfd, base); err != nil {
		return &os.PathError{Op: "symlink", Path: p, Err: err}
	}
	return nil
}

// Exists reports whether p exists (a symlink counts, whatever it points to).
func (d DirRoot) Exists(p string) bool {
	fd, err := d.open(p, unix.O_PATH|unix.O_NOFOLLOW)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}
