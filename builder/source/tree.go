package source

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/plinth-dev/plinth/builder/flatten"
	"github.com/plinth-dev/plinth/images"
)

// Tree makes a source available as a directory, for inputs that are read as
// files rather than stacked as layers (a kernel and its modules). A dir:
// source is used in place; any other is flattened and unpacked once into the
// cache under its digest. The digest is "" for dir: sources: their users
// hash the files they take.
func (r *Resolver) Tree(ctx context.Context, s images.Source) (string, string, error) {
	if s.Kind == images.KindDir {
		st, err := os.Stat(s.Path)
		if err != nil {
			return "", "", err
		}
		if !st.IsDir() {
			return "", "", fmt.Errorf("dir:%s: not a directory", s.Path)
		}
		return s.Path, "", nil
	}
	if r.CacheDir == "" {
		return "", "", errors.New("a cache directory is needed to unpack " + s.Raw)
	}
	img, err := r.Image(ctx, s)
	if err != nil {
		return "", "", err
	}
	d, err := img.Digest()
	if err != nil {
		return "", "", err
	}
	dir := filepath.Join(r.CacheDir, "trees", d.Hex)
	if _, err := os.Stat(dir); err == nil {
		return dir, d.String(), nil
	}
	layers, err := img.Layers()
	if err != nil {
		return "", "", err
	}
	// A private temporary name: two builds may unpack the same source at
	// once, and the first rename wins.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), d.Hex+".tmp-")
	if err != nil {
		return "", "", err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", "", err
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := flatten.Flatten(ctx, layers, pw, flatten.Options{Epoch: r.Epoch, Spool: r.tmpDir()})
		pw.CloseWithError(err)
	}()
	err = unpack(pr, tmp)
	pr.CloseWithError(err)
	if err != nil {
		os.RemoveAll(tmp)
		return "", "", fmt.Errorf("unpack %s: %w", s.Raw, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if _, serr := os.Stat(dir); serr == nil {
			return dir, d.String(), nil // unpacked meanwhile by another build
		}
		return "", "", err
	}
	r.log().Debug("unpacked source tree", "source", s.Raw, "digest", d.String())
	return dir, d.String(), nil
}

// unpack writes directories, regular files, symlinks and hardlinks of a
// flattened tar under dst; device nodes and the like are not needed here.
func unpack(r io.Reader, dst string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(h.Name)
		if name == "." {
			continue
		}
		if name == ".." || strings.HasPrefix(name, "../") || filepath.IsAbs(name) {
			return fmt.Errorf("%s: path leaves the tree", h.Name)
		}
		p := filepath.Join(dst, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode&0o777)|0o200)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		case tar.TypeLink:
			if err := os.Link(filepath.Join(dst, filepath.Clean(h.Linkname)), p); err != nil {
				return err
			}
		}
	}
}
