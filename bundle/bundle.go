// Package bundle packs what an air-gapped site needs into one tar: the built
// images' artifacts, a source mirror and the site profiles, with a manifest
// of every file (sha256 and size) as the tar's first entry and the sha256 of
// the whole tar beside it (FILE.tar.sha256, in sha256sum's format). Bundles
// are deterministic: entries sorted by name, mtimes from SOURCE_DATE_EPOCH,
// owner 0:0, mode 0644, nothing from the host.
//
// On the far side, Verify checks a bundle in one streaming pass and Unpack
// verifies and unpacks it into a state directory, swapped in atomically.
package bundle

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/internal/fsutil"
	"github.com/plinth-dev/plinth/manifest"
)

// ManifestName is the bundle's first entry: its manifest.
const ManifestName = "plinth-bundle.json"

// Schema is the version of the bundle manifest written by this code.
const Schema = 1

// Top-level folders inside a bundle.
const (
	ArtifactsDir = "artifacts" // artifacts/<image>/{manifest.json, ...}
	MirrorDir    = "mirror"    // a plinth mirror (OCI layout, Go modules, specs)
	SiteDir      = "site"      // one site's profiles
)

// Manifest lists every file of a bundle but itself.
type Manifest struct {
	Schema          int             `json:"schema"`
	SourceDateEpoch int64           `json:"source_date_epoch"`
	Images          []string        `json:"images,omitempty"` // names under artifacts/
	Files           []manifest.File `json:"files"`            // sorted by name; Name is the path in the tar
}

// File returns the entry for name, or nil.
func (m *Manifest) File(name string) *manifest.File {
	i := sort.Search(len(m.Files), func(i int) bool { return m.Files[i].Name >= name })
	if i < len(m.Files) && m.Files[i].Name == name {
		return &m.Files[i]
	}
	return nil
}

// Options say what goes into a bundle. Any of the three directories may be
// empty; at least one must be given.
type Options struct {
	Artifacts string    // a builder's --out: every DIR/<name>/ with a manifest.json
	Mirror    string    // a directory written by plinth mirror
	Site      string    // a site profile directory
	Epoch     time.Time // mtime of every entry
	Log       *slog.Logger
}

// member is one file to pack: where it is on disk and its name in the tar.
type member struct {
	name, src string
}

// Write packs a bundle into out (through a temporary file beside it, renamed
// into place) and writes out.sha256. It returns the manifest and the
// bundle's digest.
func Write(ctx context.Context, out string, o Options) (*Manifest, string, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Artifacts == "" && o.Mirror == "" && o.Site == "" {
		return nil, "", errors.New("bundle: nothing to pack: give artifacts, a mirror or a site")
	}
	m := &Manifest{Schema: Schema, SourceDateEpoch: o.Epoch.Unix()}
	var members []member
	if o.Artifacts != "" {
		imgs, ms, err := artifactMembers(o.Artifacts)
		if err != nil {
			return nil, "", err
		}
		m.Images = imgs
		members = append(members, ms...)
	}
	for _, t := range []struct{ dir, prefix string }{{o.Mirror, MirrorDir}, {o.Site, SiteDir}} {
		if t.dir == "" {
			continue
		}
		ms, err := treeMembers(t.dir, t.prefix)
		if err != nil {
			return nil, "", err
		}
		members = append(members, ms...)
	}
	sort.Slice(members, func(i, j int) bool { return members[i].name < members[j].name })
	// The manifest goes first, so its digests are needed before writing:
	// hash every file, then check each again as it is copied in.
	for _, mb := range members {
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		d, n, err := manifest.FileDigest(mb.src)
		if err != nil {
			return nil, "", fmt.Errorf("bundle: %w", err)
		}
		m.Files = append(m.Files, manifest.File{Name: mb.name, SHA256: d, Size: n})
	}
	digest, err := writeTar(ctx, out, m, members, o.Epoch)
	if err != nil {
		return nil, "", err
	}
	log.Info("bundle written", "file", out, "files", len(m.Files), "digest", digest)
	return m, digest, nil
}

// artifactMembers lists manifest.json and the files it names for every
// image under dir, after checking each image against its manifest: a
// bundle never carries an artifact that is already corrupt.
func artifactMembers(dir string) ([]string, []member, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("bundle: artifacts: %w", err)
	}
	var imgs []string
	var out []member
	var errs []error
	for _, e := range ents {
		sub := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), ".") {
			continue // publish's staging directories start with a dot
		}
		if st, err := os.Stat(sub); err != nil || !st.IsDir() {
			continue // a directory or a link to one (images pulled from a registry)
		}
		if _, err := os.Stat(filepath.Join(sub, manifest.FileName)); err != nil {
			continue
		}
		im, err := manifest.Read(sub)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := manifest.Verify(sub, im); err != nil {
			errs = append(errs, fmt.Errorf("artifacts %s: %w", sub, err))
			continue
		}
		imgs = append(imgs, e.Name())
		out = append(out, member{path.Join(ArtifactsDir, e.Name(), manifest.FileName), filepath.Join(sub, manifest.FileName)})
		for _, f := range im.Files {
			if !validName(f.Name) || strings.Contains(f.Name, "/") {
				errs = append(errs, fmt.Errorf("%s: file name %q is not a plain name", filepath.Join(sub, manifest.FileName), f.Name))
				continue
			}
			out = append(out, member{path.Join(ArtifactsDir, e.Name(), f.Name), filepath.Join(sub, f.Name)})
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	if len(imgs) == 0 {
		return nil, nil, fmt.Errorf("bundle: artifacts %s: no built image (no DIR/<name>/manifest.json)", dir)
	}
	return imgs, out, nil
}

// treeMembers lists every regular file under dir (symlinks followed) as
// prefix/<relative path>.
func treeMembers(dir, prefix string) ([]member, error) {
	var out []member
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s: not a regular file (a bundle holds only files)", p)
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		out = append(out, member{path.Join(prefix, filepath.ToSlash(rel)), p})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bundle: %s: %w", prefix, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("bundle: %s %s: no files", prefix, dir)
	}
	return out, nil
}

// writeTar writes the tar and its .sha256 atomically and returns the
// bundle's digest.
func writeTar(ctx context.Context, out string, m *Manifest, members []member, epoch time.Time) (string, error) {
	mdata, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return "", err
	}
	mdata = append(mdata, '\n')
	h := sha256.New()
	hdr := func(name string, size int64) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: epoch}
	}
	err = fsutil.WriteAtomic(out, 0o644, func(w io.Writer) error {
		bw := bufio.NewWriterSize(io.MultiWriter(w, h), 1<<20)
		tw := tar.NewWriter(bw)
		if err := tw.WriteHeader(hdr(ManifestName, int64(len(mdata)))); err != nil {
			return err
		}
		if _, err := tw.Write(mdata); err != nil {
			return err
		}
		for i, mb := range members {
			if err := ctx.Err(); err != nil {
				return err
			}
			want := m.Files[i]
			if err := tw.WriteHeader(hdr(mb.name, want.Size)); err != nil {
				return fmt.Errorf("%s: %w", mb.name, err)
			}
			src, err := os.Open(mb.src)
			if err != nil {
				return err
			}
			d, n, err := manifest.Digest(io.TeeReader(io.LimitReader(src, want.Size+1), tw))
			src.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", mb.src, err)
			}
			if n != want.Size || d != want.SHA256 {
				return fmt.Errorf("%s changed while being packed (size %d, was %d)", mb.src, n, want.Size)
			}
		}
		if err := tw.Close(); err != nil {
			return err
		}
		return bw.Flush()
	})
	if err != nil {
		return "", fmt.Errorf("bundle: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err := fsutil.WriteFileAtomic(out+".sha256", []byte(sum+"  "+filepath.Base(out)+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("bundle: %w", err)
	}
	return "sha256:" + sum, nil
}

// validName reports whether a name in a bundle is a clean relative path.
func validName(n string) bool {
	return n != "" && path.Clean(n) == n && !path.IsAbs(n) && n != "." && n != ".." && !strings.HasPrefix(n, "../")
}
