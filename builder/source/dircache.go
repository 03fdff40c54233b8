package source

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/plinth-dev/plinth/builder/ocitar"
)

// dirImage makes a one-layer image of a tree.
func (r *Resolver) dirImage(dir string) (v1.Image, error) {
	return r.cachedLayer("dir", dir, "dirs", func(tmp string) (v1.Layer, error) {
		return ocitar.LayerFromDir(dir, tmp, r.Epoch)
	})
}

// tarImage makes a one-layer image of a tar file, cached like a tree's so
// that a plain tar is not compressed again to learn its digest on every build.
func (r *Resolver) tarImage(p string) (v1.Image, error) {
	return r.cachedLayer("tar", p, "tars", func(string) (v1.Layer, error) {
		return ocitar.LayerFromTar(p)
	})
}

// cachedLayer makes a one-layer image with mk. With a cache, the image is
// kept in an OCI layout under a key made from every entry's name, type,
// mode, owner, size, mtime and link target, so unchanged input is not
// tarred, compressed and hashed again: a layout names its blobs by digest.
func (r *Resolver) cachedLayer(kind, path, subdir string, mk func(tmp string) (v1.Layer, error)) (v1.Image, error) {
	if r.CacheDir == "" {
		l, err := mk("")
		if err != nil {
			return nil, err
		}
		return ocitar.ImageFromLayers(r.Epoch, l)
	}
	key, err := statKey(kind, path, r.Epoch.Unix())
	if err != nil {
		return nil, fmt.Errorf("%s:%s: %w", kind, path, err)
	}
	lay := filepath.Join(r.CacheDir, subdir)
	if img, err := FromLayout(lay, key); err == nil {
		return img, nil
	}
	l, err := mk(r.tmpDir())
	if err != nil {
		return nil, err
	}
	img, err := ocitar.ImageFromLayers(r.Epoch, l)
	if err != nil {
		return nil, err
	}
	if err := ocitar.WriteLayout(lay, key, img); err != nil {
		return nil, fmt.Errorf("cache %s:%s: %w", kind, path, err)
	}
	return FromLayout(lay, key)
}

// statKey hashes what the layer of a tree (or of one file) depends on
// without reading contents.
func statKey(kind, dir string, epoch int64) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s v1 %d\n", kind, epoch)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			link, _ = os.Readlink(p)
		}
		var uid, gid, ino, nlink uint64
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid, ino, nlink = uint64(st.Uid), uint64(st.Gid), st.Ino, uint64(st.Nlink)
		}
		fmt.Fprintf(h, "%q %o %d %d %d %d %q %d %d\n", rel, fi.Mode(), uid, gid, fi.Size(), fi.ModTime().UnixNano(), link, ino, nlink)
		return nil
	})
	if err != nil {
		return "", err
	}
	return kind + "-" + hex.EncodeToString(h.Sum(nil))[:48], nil
}
