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

// dirImage makes a one-layer image of a tree. With a cache, the layer is
// kept in an OCI layout under a key made from every entry's name, type,
// mode, owner, size, mtime and link target, so an unchanged tree is not
// tarred, compressed and hashed again: a layout names its blobs by digest.
func (r *Resolver) dirImage(dir string) (v1.Image, error) {
	if r.CacheDir == "" {
		l, err := ocitar.LayerFromDir(dir, "", r.Epoch)
		if err != nil {
			return nil, err
		}
		return ocitar.ImageFromLayers(r.Epoch, l)
	}
	key, err := statKey("dir", dir, r.Epoch.Unix())
	if err != nil {
		return nil, fmt.Errorf("dir:%s: %w", dir, err)
	}
	lay := filepath.Join(r.CacheDir, "dirs")
	if img, err := FromLayout(lay, key); err == nil {
		return img, nil
	}
	l, err := ocitar.LayerFromDir(dir, r.tmpDir(), r.Epoch)
	if err != nil {
		return nil, err
	}
	img, err := ocitar.ImageFromLayers(r.Epoch, l)
	if err != nil {
		return nil, err
	}
	if err := ocitar.WriteLayout(lay, key, img); err != nil {
		return nil, fmt.Errorf("cache dir:%s: %w", dir, err)
	}
	return FromLayout(lay, key)
}

// tarImage makes a one-layer image of a tar file, cached like a tree's so
// that a plain tar is not compressed again to learn its digest on every build.
func (r *Resolver) tarImage(p string) (v1.Image, error) {
	if r.CacheDir == "" {
		l, err := ocitar.LayerFromTar(p)
		if err != nil {
			return nil, err
		}
		return ocitar.ImageFromLayers(r.Epoch, l)
	}
	key, err := statKey("tar", p, r.Epoch.Unix())
	if err != nil {
		return nil, fmt.Errorf("tar:%s: %w", p, err)
	}
	lay := filepath.Join(r.CacheDir, "tars")
	if img, err := FromLayout(lay, key); err == nil {
		return img, nil
	}
	l, err := ocitar.LayerFromTar(p)
	if err != nil {
		return nil, err
	}
	img, err := ocitar.ImageFromLayers(r.Epoch, l)
	if err != nil {
		return nil, err
	}
	if err := ocitar.WriteLayout(lay, key, img); err != nil {
		return nil, fmt.Errorf("cache tar:%s: %w", p, err)
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
