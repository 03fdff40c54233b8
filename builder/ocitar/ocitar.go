// Package ocitar makes OCI layers from directories and tar files and writes
// images into OCI image layouts: the local, registry-free path by which
// fixtures and air-gapped sites bring their content to plinth.
package ocitar

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

// RefName is the annotation that names an image inside a layout.
const RefName = "org.opencontainers.image.ref.name"

// WriteDirTar writes the tree at dir to w as a tar: entries in lexical order,
// mtimes set to epoch, numeric owners as on disk, hardlinks detected by
// inode (the first path carries the content), device nodes, fifos and
// extended attributes kept.
func WriteDirTar(dir string, epoch time.Time, w io.Writer) error {
	tw := tar.NewWriter(w)
	seen := map[[2]uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		h.Name = rel
		if fi.IsDir() {
			h.Name += "/"
		}
		h.ModTime, h.AccessTime, h.ChangeTime = epoch, time.Time{}, time.Time{}
		h.Uname, h.Gname = "", ""
		h.Format = tar.FormatPAX
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			h.Uid, h.Gid = int(st.Uid), int(st.Gid)
			if fi.Mode().IsRegular() && st.Nlink > 1 {
				key := [2]uint64{st.Dev, st.Ino}
				if first, ok := seen[key]; ok {
					h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
				} else {
					seen[key] = rel
				}
			}
		}
		if x, err := xattrs(p); err != nil {
			return err
		} else if len(x) > 0 {
			h.PAXRecords = x
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if h.Typeflag == tar.TypeReg && h.Size > 0 {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// xattrs returns a file's extended attributes as PAX records.
func xattrs(p string) (map[string]string, error) {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		return nil, nil // no xattr support on this file system: nothing to keep
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, nil
	}
	out := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		vsz, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			continue
		}
		val := make([]byte, vsz)
		vsz, err = unix.Lgetxattr(p, name, val)
		if err != nil {
			continue
		}
		out["SCHILY.xattr."+name] = string(val[:vsz])
	}
	return out, nil
}

// LayerFromDir makes a zstd-compressed layer of the tree at dir, spooling the
// tar to a temporary file in tmpDir ("" for the default).
func LayerFromDir(dir, tmpDir string, epoch time.Time) (v1.Layer, error) {
	f, err := os.CreateTemp(tmpDir, "plinth-dirlayer-*.tar")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := WriteDirTar(dir, epoch, bw); err != nil {
		os.Remove(f.Name())
		return nil, fmt.Errorf("dir:%s: %w", dir, err)
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	return LayerFromTar(f.Name())
}

// LayerFromTar makes a layer of a tar file, plain or compressed with gzip or
// zstd; a plain tar is compressed with zstd.
func LayerFromTar(path string) (v1.Layer, error) {
	magic := make([]byte, 4)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	_, _ = io.ReadFull(f, magic)
	f.Close()
	var opts []tarball.LayerOption
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		opts = append(opts, tarball.WithMediaType(types.OCILayer))
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		opts = append(opts, tarball.WithMediaType(types.OCILayerZStd))
	default:
		opts = append(opts, tarball.WithMediaType(types.OCILayerZStd), tarball.WithCompressedCaching)
	}
	l, err := tarball.LayerFromFile(path, opts...)
	if err != nil {
		return nil, fmt.Errorf("tar:%s: %w", path, err)
	}
	return l, nil
}

// ImageFromLayers makes a linux/amd64 image of layers with a fixed creation time.
func ImageFromLayers(epoch time.Time, layers ...v1.Layer) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: epoch}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, err
	}
	return mutate.CreatedAt(img, v1.Time{Time: epoch})
}

// WriteLayout adds img to the OCI image layout at dir (created if needed)
// under tag, replacing any image that had that tag, so packing again is
// idempotent.
func WriteLayout(dir, tag string, img v1.Image) error {
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return fmt.Errorf("layout %s: %w", dir, err)
		}
	}
	if err := p.RemoveDescriptors(func(d v1.Descriptor) bool {
		return d.Annotations[RefName] == tag
	}); err != nil {
		return fmt.Errorf("layout %s: %w", dir, err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{RefName: tag})); err != nil {
		return fmt.Errorf("layout %s: %w", dir, err)
	}
	return nil
}
