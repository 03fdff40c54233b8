// Package ocitar makes OCI layers from directories and tar files and writes
// images into OCI image layouts: the local, registry-free path by which
// fixtures and air-gapped sites bring their content to plinth.
package ocitar

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/compression"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/internal/fsutil"
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
		if fi.Mode()&fs.ModeSocket != 0 {
			return nil // a socket is made by a running program, not shipped; tar cannot hold one
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

// xattrs returns a file's extended attributes as PAX records. A file
// system without xattr support simply has none; other failures are errors,
// since silently losing security.capability breaks programs like ping.
func xattrs(p string) (map[string]string, error) {
	var buf []byte
	for size := 256; ; size *= 4 {
		buf = make([]byte, size)
		n, err := unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if errors.Is(err, unix.ERANGE) && size < 1<<20 {
			continue // the list grew between calls
		}
		if err != nil {
			return nil, fmt.Errorf("%s: list xattrs: %w", p, err)
		}
		buf = buf[:n]
		break
	}
	if len(buf) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		val, err := getxattr(p, name)
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("%s: xattr %s: %w", p, name, err)
		}
		out["SCHILY.xattr."+name] = string(val)
	}
	return out, nil
}

func getxattr(p, name string) ([]byte, error) {
	for size := 256; ; size *= 4 {
		val := make([]byte, size)
		n, err := unix.Lgetxattr(p, name, val)
		if errors.Is(err, unix.ERANGE) && size < 1<<20 {
			continue
		}
		if err != nil {
			return nil, err
		}
		return val[:n], nil
	}
}

// LayerFromDir makes a zstd-compressed layer of the tree at dir. The
// compressed tar is written once to a temporary file in tmpDir ("" for the
// default) and read from there, so neither the tar nor its compressed form
// is held in memory; the file lives as long as the process may use the layer.
func LayerFromDir(dir, tmpDir string, epoch time.Time) (v1.Layer, error) {
	f, err := os.CreateTemp(tmpDir, "plinth-dirlayer-*.tar.zst")
	if err != nil {
		return nil, err
	}
	f.Close()
	if err := WriteDirLayer(dir, f.Name(), epoch); err != nil {
		os.Remove(f.Name())
		return nil, err
	}
	return LayerFromTar(f.Name())
}

// WriteDirLayer writes the tree at dir as a zstd-compressed tar to out,
// through a temporary file beside it. The encoder runs single-threaded with
// fixed options so the same tree always gives the same bytes.
func WriteDirLayer(dir, out string, epoch time.Time) error {
	err := fsutil.WriteAtomic(out, 0o644, func(f io.Writer) error {
		bw := bufio.NewWriterSize(f, 1<<20)
		zw, err := zstd.NewWriter(bw, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
		if err != nil {
			return err
		}
		err = WriteDirTar(dir, epoch, zw)
		if cerr := zw.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		return bw.Flush()
	})
	if err != nil {
		return fmt.Errorf("dir:%s: %w", dir, err)
	}
	return nil
}

// LayerFromTar makes a layer of a tar file, plain or compressed with gzip or
// zstd (told apart by their magic numbers). A compressed file is the layer
// blob as it is. A plain tar is compressed with zstd each time the blob is
// read rather than kept in memory: plinth itself only reads the uncompressed
// stream, and only pushing or packing a layout needs the blob.
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
		// WithMediaType alone would leave the blob gzip under a zstd label.
		opts = append(opts, tarball.WithMediaType(types.OCILayerZStd), tarball.WithCompression(compression.ZStd))
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
