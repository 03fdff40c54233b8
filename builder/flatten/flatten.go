// Package flatten merges the layers of an OCI image into one tar stream, the
// way a container runtime would mount them, with OCI whiteouts applied.
//
// It walks the layers itself instead of using go-containerregistry's
// mutate.Extract, which drops relative symlinks pointing outside the root
// (Debian has many), emits upper layers first so a hardlink can precede its
// target, and in older versions ignored opaque directories.
//
// Layers are read top-down once: the first layer to provide a path wins,
// whiteouts and opaque markers hide what lies below them, and the content of
// the visible regular files is spooled to a temporary directory, so memory
// holds headers only and hidden content costs no disk. The output is then written in path order, parents first, with every
// mtime set to the epoch and hardlinked files emitted once.
package flatten

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Options tune the output.
type Options struct {
	Epoch time.Time // every entry's mtime
	Spool string    // directory for spooled contents; default os.TempDir()
	// InMemory keeps spooled contents in memory instead: for layers known
	// to be small (the fuzz target, where a temporary directory and a
	// file per entry cost more than the flattening itself).
	InMemory bool
}

// Stats count what was written.
type Stats struct {
	Files, Dirs, Links, Other int64
	Bytes                     int64 // file content
	Whiteouts                 int64 // whiteout markers applied
	DroppedLinks              int64 // hardlinks to nothing visible, left out
	Spooled                   int64 // bytes of content spooled to disk on the way
}

const (
	whPrefix = ".wh."
	whOpaque = ".wh..wh..opq"
)

// entry is one visible path of the merged filesystem.
type entry struct {
	hdr   *tar.Header
	spool string // regular files and hardlinks: the spooled content
	layer int
}

type state struct {
	entries map[string]*entry
	// hidden holds paths deleted by whiteouts in layers above the one being
	// read; opaque holds directories whose lower contents are hidden.
	hidden, opaque map[string]bool
	// wanted holds visible hardlinks whose target is a regular file of a
	// lower layer, by target path: its content is spooled for them.
	wanted   map[string][]*entry
	spoolDir string
	mem      map[string][]byte // Options.InMemory: spooled contents by name
	nspool   int
	stats    Stats
}

// Flatten writes the merged filesystem of layers (bottom first) to w.
func Flatten(ctx context.Context, layers []v1.Layer, w io.Writer, o Options) (Stats, error) {
	st := &state{entries: map[string]*entry{}, hidden: map[string]bool{}, opaque: map[string]bool{},
		wanted: map[string][]*entry{}}
	if o.InMemory {
		st.mem = map[string][]byte{}
	} else {
		spool, err := os.MkdirTemp(o.Spool, "plinth-flatten-")
		if err != nil {
			return Stats{}, err
		}
		defer os.RemoveAll(spool)
		st.spoolDir = spool
	}
	for i := len(layers) - 1; i >= 0; i-- {
		if err := st.readLayer(ctx, i, layers[i]); err != nil {
			return st.stats, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	if err := st.write(ctx, w, o.Epoch); err != nil {
		return st.stats, err
	}
	return st.stats, nil
}

// clean normalises a tar entry name to a relative slash path, "" for the root.
func clean(name string) string {
	p := path.Clean("/" + name)
	return strings.TrimPrefix(p, "/")
}

// coveredAbove reports whether a path is hidden by what upper layers did:
// a whiteout of it or of an ancestor, an opaque ancestor, or an ancestor
// that is something other than a directory (in an upper layer, or earlier in
// this one: a tar whose "lib" symlink precedes "lib/x" must not write
// through the link).
func (s *state) coveredAbove(p string) bool {
	if s.hidden[p] {
		return true
	}
	for d := parentDir(p); ; d = parentDir(d) {
		if (d != "" && s.hidden[d]) || s.opaque[d] {
			return true
		}
		if e, ok := s.entries[d]; ok && e.hdr.Typeflag != tar.TypeDir {
			return true
		}
		if d == "" {
			return false
		}
	}
}

func parentDir(p string) string {
	if i := strings.LastIndex(p, "/"); i >= 0 {
		return p[:i]
	}
	return ""
}

func (s *state) readLayer(ctx context.Context, idx int, l v1.Layer) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	spooled := map[string]string{}   // regular files of this layer whose content is spooled
	unspooled := map[string]bool{}   // regular files of this layer that are hidden, so not spooled
	rereads := map[string][]*entry{} // unspooled files that visible hardlinks of this layer need
	newHidden, newOpaque := map[string]bool{}, map[string]bool{}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		p := clean(h.Name)
		base := path.Base(p)
		dir := parentDir(p)
		switch {
		case base == whOpaque:
			newOpaque[dir] = true
			s.stats.Whiteouts++
			continue
		case strings.HasPrefix(base, whPrefix):
			newHidden[path.Join(dir, strings.TrimPrefix(base, whPrefix))] = true
			s.stats.Whiteouts++
			continue
		}
		visible := true
		if prev, ok := s.entries[p]; ok && prev.layer != idx {
			visible = false // an upper layer provides this path
		} else if p != "" && s.coveredAbove(p) {
			visible = false
		}
		var e *entry
		if visible {
			e = &entry{hdr: h, layer: idx}
			s.entries[p] = e
		}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeRegA:
			h.Typeflag = tar.TypeReg
			waiting := s.wanted[p]
			delete(s.wanted, p)
			if !visible && len(waiting) == 0 {
				// Hidden content is not spooled; a hardlink later in this
				// layer may still need it, which costs a second read.
				unspooled[p] = true
				delete(spooled, p)
				if _, err := io.Copy(io.Discard, tr); err != nil {
					return err
				}
				continue
			}
			sp, err := s.spoolFile(tr)
			if err != nil {
				return err
			}
			spooled[p] = sp
			delete(unspooled, p)
			if e != nil {
				e.spool = sp
			}
			for _, w := range waiting {
				w.spool = sp
			}
		case tar.TypeLink:
			if e == nil {
				continue
			}
			target := clean(h.Linkname)
			switch {
			case spooled[target] != "":
				e.spool = spooled[target]
			case unspooled[target]:
				rereads[target] = append(rereads[target], e)
			default:
				// The target is not a regular file of this layer: another
				// kind of entry, or a file of a lower layer (whose content
				// is then spooled when that layer is read).
				s.wanted[target] = append(s.wanted[target], e)
			}
		}
	}
	if len(rereads) > 0 {
		if err := s.reread(ctx, l, rereads); err != nil {
			return err
		}
	}
	for p := range newHidden {
		s.hidden[p] = true
	}
	for p := range newOpaque {
		s.opaque[p] = true
	}
	return nil
}

// reread reads a layer again to spool hidden files that visible hardlinks of
// the same layer refer to: the rare case of a link surviving its target.
func (s *state) reread(ctx context.Context, l v1.Layer, need map[string][]*entry) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for len(need) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err != nil {
			return fmt.Errorf("reading again for hardlink targets: %w", err)
		}
		p := clean(h.Name)
		es, ok := need[p]
		if !ok || (h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeRegA) {
			continue
		}
		sp, err := s.spoolFile(tr)
		if err != nil {
			return err
		}
		for _, e := range es {
			e.spool = sp
		}
		delete(need, p)
	}
	return nil
}

func (s *state) spoolFile(r io.Reader) (string, error) {
	s.nspool++
	if s.mem != nil {
		name := fmt.Sprint(s.nspool)
		b, err := io.ReadAll(r)
		s.stats.Spooled += int64(len(b))
		s.mem[name] = b
		return name, err
	}
	name := filepath.Join(s.spoolDir, fmt.Sprint(s.nspool))
	f, err := os.Create(name)
	if err != nil {
		return "", err
	}
	n, err := io.Copy(f, r)
	s.stats.Spooled += n
	if err != nil {
		f.Close()
		return "", err
	}
	return name, f.Close()
}

// write emits the visible entries sorted by path; within a group of
// hardlinked files the first path carries the content and the rest link to it.
func (s *state) write(ctx context.Context, w io.Writer, epoch time.Time) error {
	// A later entry of a layer may have turned a directory into something
	// else: the contents it had go.
	var orphans []string
	for p := range s.entries {
		for d := parentDir(p); d != ""; d = parentDir(d) {
			if e, ok := s.entries[d]; ok && e.hdr.Typeflag != tar.TypeDir {
				orphans = append(orphans, p)
				break
			}
		}
	}
	for _, p := range orphans {
		delete(s.entries, p)
	}
	// A layer may name a file without its parent directories; squashfs
	// tools and the kernel need them, so they are made 0755 and root-owned.
	for p := range s.entries {
		for d := parentDir(p); d != ""; d = parentDir(d) {
			if _, ok := s.entries[d]; ok {
				break
			}
			s.entries[d] = &entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Mode: 0o755}, layer: -1}
		}
	}
	paths := make([]string, 0, len(s.entries))
	for p := range s.entries {
		paths = append(paths, p)
	}
	// Sort so that a directory comes right before its contents: compare with
	// '/' ranking below every other byte.
	sort.Slice(paths, func(i, j int) bool { return pathLess(paths[i], paths[j]) })
	tw := tar.NewWriter(w)
	linkHead := map[string]string{} // spool file → first path written with it
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return err
		}
		e := s.entries[p]
		h := normalise(e.hdr, p, epoch)
		if h.Typeflag == tar.TypeLink {
			if e.spool == "" {
				// A link to an entry that is not a regular file (a symlink,
				// a device node): a copy of that entry means the same and
				// needs no ordering. A link to nothing visible is dropped.
				t, ok := s.entries[clean(e.hdr.Linkname)]
				if !ok || t.hdr.Typeflag == tar.TypeLink || t.hdr.Typeflag == tar.TypeDir || t.hdr.Typeflag == tar.TypeReg {
					s.stats.DroppedLinks++
					continue
				}
				h = normalise(t.hdr, p, epoch)
				if err := tw.WriteHeader(h); err != nil {
					return fmt.Errorf("%s: %w", p, err)
				}
				s.stats.Other++
				continue
			}
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag == tar.TypeReg {
			if first, ok := linkHead[e.spool]; ok {
				h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
				if err := tw.WriteHeader(h); err != nil {
					return err
				}
				s.stats.Links++
				continue
			}
			linkHead[e.spool] = p
			if err := s.copyContent(tw, h, e.spool); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			s.stats.Dirs++
		default:
			s.stats.Other++
		}
	}
	return tw.Close()
}

func (s *state) copyContent(tw *tar.Writer, h *tar.Header, spool string) error {
	if s.mem != nil {
		b := s.mem[spool]
		h.Size = int64(len(b))
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		n, err := tw.Write(b)
		s.stats.Files++
		s.stats.Bytes += int64(n)
		return err
	}
	f, err := os.Open(spool)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	h.Size = fi.Size()
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	n, err := io.Copy(tw, f)
	s.stats.Files++
	s.stats.Bytes += n
	return err
}

func pathLess(a, b string) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		ca, cb := a[i], b[i]
		if ca == cb {
			continue
		}
		if ca == '/' {
			return true
		}
		if cb == '/' {
			return false
		}
		return ca < cb
	}
	return len(a) < len(b)
}

// normalise builds the output header: numeric owners only, fixed times,
// xattrs kept, nothing of the machine that built the layer.
func normalise(in *tar.Header, p string, epoch time.Time) *tar.Header {
	h := &tar.Header{
		Typeflag: in.Typeflag,
		Name:     p,
		Linkname: in.Linkname,
		Mode:     in.Mode & 0o7777,
		Uid:      in.Uid,
		Gid:      in.Gid,
		ModTime:  epoch,
		Devmajor: in.Devmajor,
		Devminor: in.Devminor,
		Format:   tar.FormatPAX,
	}
	if p == "" {
		h.Name = "./"
	} else if h.Typeflag == tar.TypeDir {
		h.Name = p + "/"
	}
	for k, v := range in.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords[k] = v
		}
	}
	if h.Typeflag != tar.TypeSymlink && h.Typeflag != tar.TypeLink {
		h.Linkname = ""
	}
	return h
}
