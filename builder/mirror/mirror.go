// Package mirror writes everything the image specs of a site build from
// into one directory that can be carried to an air-gapped site, and lets a
// build there find its sources in it.
//
// A mirror is an OCI image layout (oci-layout, index.json, blobs/) holding
// one image per source of the specs, each annotated with the source string
// as the spec wrote it (AnnotSource) and what the spec uses it for
// (AnnotUse); beside it, goproxy/ is a GOPROXY-style module directory with
// the Go modules the initramfs programs compile from, specs/ holds the specs
// themselves and mirror.json says what is where.
//
// Sources are looked up by the string the spec wrote, so a spec moved to
// the far side builds unchanged. go: sources are mirrored as the layer of
// the built binary (the far side needs no module of theirs and gets the same
// digest); a dir: kernel is mirrored as the kernel and the modules the specs
// load, which is all a build takes from it (and all its digest covers).
package mirror

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/builder/ocitar"
	"github.com/plinth-dev/plinth/builder/source"
	"github.com/plinth-dev/plinth/images"
	"github.com/plinth-dev/plinth/ociart"
)

// Annotations on each image of a mirror's index.
const (
	AnnotSource = "dev.plinth.mirror.source" // the source exactly as the spec wrote it
	AnnotUse    = "dev.plinth.mirror.use"    // "layer" or "kernel"
	AnnotSpecs  = "dev.plinth.mirror.specs"  // names of the specs using it, comma-separated
)

// Files and folders of a mirror beside the OCI layout.
const (
	IndexFile  = "mirror.json"
	GoProxyDir = "goproxy"
	SpecsDir   = "specs"
)

// Schema is the version of mirror.json written by this code.
const Schema = 1

// Uses of a source.
const (
	UseLayer  = "layer"
	UseKernel = "kernel"
	// UseImage is a built plinth image (plinth push's artifact), kept for
	// plinth serve --image oci:MIRROR@sha256:… on the far side.
	UseImage = "image"
)

// Index is mirror.json.
type Index struct {
	Schema          int     `json:"schema"`
	SourceDateEpoch int64   `json:"source_date_epoch"`
	Sources         []Entry `json:"sources"`
	// GoVersion is the toolchain the modules were listed with; an
	// initramfs built offline with another one differs in its bytes.
	GoVersion string   `json:"go_version,omitempty"`
	GoModules []string `json:"go_modules,omitempty"` // module@version in goproxy/
	Specs     []string `json:"specs"`                // files in specs/
}

// Entry is one mirrored source.
type Entry struct {
	Source  string   `json:"source"`
	Use     string   `json:"use"`
	Tag     string   `json:"tag"`    // its org.opencontainers.image.ref.name in the layout
	Digest  string   `json:"digest"` // the image's manifest digest
	Specs   []string `json:"specs"`
	Modules []string `json:"modules,omitempty"` // a dir: kernel: the modules the specs name (kept with stage 1's own, the drivers' and their dependencies)
}

// Options configure Write.
type Options struct {
	CacheDir string    // plinth's cache: sources resolve through CacheDir/sources as in a build
	Epoch    time.Time // SOURCE_DATE_EPOCH for layers made from dirs, tars and Go programs
	Log      *slog.Logger
	// SrcDir is the plinth source tree. When set and a spec names a
	// kernel, the Go modules its initramfs programs compile from are
	// written to goproxy/.
	SrcDir string
	// Version and Sum name a released plinth's own module (its build
	// info) when there is no SrcDir: that module is mirrored too, and the
	// modules its initramfs programs compile from.
	Version, Sum string
	// Images are built plinth images in a registry (REPO@sha256:…, as
	// plinth push prints them), copied into the layout as they are.
	Images []string
	// Remote options for registry sources (tests point them at a local registry).
	Remote []remote.Option
}

// Tag is the name under which a source is kept in the layout.
func Tag(use, src string) string {
	h := sha256.Sum256([]byte(src))
	return use + "-" + hex.EncodeToString(h[:10])
}

// want is one source to mirror, gathered over all specs.
type want struct {
	use     string
	src     images.Source
	specs   []string
	modules []string         // dir: kernels: the modules the specs name
	kernels []*images.Kernel // dir: kernels: the specs' kernel tables
}

// Write resolves every source of specs and writes the mirror to dir: built
// beside it and swapped in whole, so dir is always a complete mirror. An
// existing dir is replaced only if it is a mirror.
func Write(ctx context.Context, specs []*images.Spec, dir string, o Options) (*Index, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(specs) == 0 && len(o.Images) == 0 {
		return nil, errors.New("mirror: no specs and no images")
	}
	if o.CacheDir == "" {
		return nil, errors.New("mirror: a cache directory is needed")
	}
	if st, err := os.Stat(dir); err == nil {
		if _, err := os.Stat(filepath.Join(dir, IndexFile)); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("mirror: %s exists and is not a plinth mirror (no %s): not replacing it", dir, IndexFile)
		}
	}
	wants, err := gather(specs)
	if err != nil {
		return nil, err
	}
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, err
	}
	stage, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".new-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage) // after a swap it holds the old mirror
	if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(o.CacheDir, "mirror-tmp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	p, err := layout.Write(stage, empty.Index)
	if err != nil {
		return nil, fmt.Errorf("mirror: %w", err)
	}
	r := &source.Resolver{CacheDir: filepath.Join(o.CacheDir, "sources"), Log: log, Epoch: o.Epoch, Remote: o.Remote}
	idx := &Index{Schema: Schema, SourceDateEpoch: o.Epoch.Unix()}
	for _, w := range wants {
		start := time.Now()
		var img v1.Image
		if w.use == UseKernel && w.src.Kind == images.KindDir {
			img, err = kernelImage(w.src.Path, w.kernels, tmp, o.Epoch)
		} else {
			img, err = r.Image(ctx, w.src)
		}
		if err != nil {
			return nil, fmt.Errorf("mirror: %s %s (%s): %w", w.use, w.src.Raw, strings.Join(w.specs, ", "), err)
		}
		tag := Tag(w.use, w.src.Raw)
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
			ocitar.RefName: tag,
			AnnotSource:    w.src.Raw,
			AnnotUse:       w.use,
			AnnotSpecs:     strings.Join(w.specs, ","),
		})); err != nil {
			return nil, fmt.Errorf("mirror: %s %s: %w", w.use, w.src.Raw, err)
		}
		d, err := img.Digest()
		if err != nil {
			return nil, err
		}
		idx.Sources = append(idx.Sources, Entry{Source: w.src.Raw, Use: w.use, Tag: tag, Digest: d.String(), Specs: w.specs, Modules: w.modules})
		log.Info("mirrored", "source", w.src.Raw, "use", w.use, "digest", d.String(), "elapsed", time.Since(start).Round(time.Millisecond))
	}
	for _, ref := range o.Images {
		img, err := ociart.Image(ctx, ref, ociart.Options{Remote: o.Remote, Log: log})
		if err != nil {
			return nil, fmt.Errorf("mirror: image %w", err)
		}
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
			ocitar.RefName: Tag(UseImage, ref),
			AnnotSource:    ref,
			AnnotUse:       UseImage,
		})); err != nil {
			return nil, fmt.Errorf("mirror: image %s: %w", ref, err)
		}
		d, err := img.Digest()
		if err != nil {
			return nil, err
		}
		idx.Sources = append(idx.Sources, Entry{Source: ref, Use: UseImage, Tag: Tag(UseImage, ref), Digest: d.String()})
		log.Info("mirrored image", "ref", ref, "serve_as", "oci:"+dir+"@"+d.String())
	}
	if (o.SrcDir != "" || o.Version != "") && slices.ContainsFunc(specs, func(s *images.Spec) bool { return s.Kernel != nil }) {
		start := time.Now()
		ver, mods, err := collectModules(ctx, o.SrcDir, o.Version, o.Sum, filepath.Join(stage, GoProxyDir), tmp)
		if err != nil {
			return nil, fmt.Errorf("mirror: Go modules for the initramfs: %w", err)
		}
		idx.GoVersion, idx.GoModules = ver, mods
		log.Info("mirrored Go modules", "modules", len(mods), "go", ver, "elapsed", time.Since(start).Round(time.Millisecond))
	}
	if err := copySpecs(specs, filepath.Join(stage, SpecsDir), idx); err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(stage, IndexFile), append(data, '\n'), 0o644); err != nil {
		return nil, err
	}
	if err := os.Chmod(stage, 0o755); err != nil {
		return nil, err
	}
	unix.Sync() // blobs are many files: one sync, not one per file
	err = unix.Renameat2(unix.AT_FDCWD, stage, unix.AT_FDCWD, dir, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.ENOENT) {
		err = os.Rename(stage, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("mirror: %s: %w", dir, err)
	}
	return idx, nil
}

// gather lists the sources of all specs once each, sorted. A source string
// that means different things in two specs (a relative path from two
// folders) cannot be looked up by its string: that is an error.
func gather(specs []*images.Spec) ([]*want, error) {
	byKey := map[[2]string]*want{}
	var errs []error
	add := func(s *images.Spec, use string, src images.Source, ks *images.Kernel) {
		k := [2]string{use, src.Raw}
		w := byKey[k]
		if w == nil {
			w = &want{use: use, src: src}
			byKey[k] = w
		} else if w.src != src {
			errs = append(errs, fmt.Errorf("%s: %s source %q means %s here and %s in spec %s: a mirror finds sources by the string the spec wrote; write one of them differently",
				s.File, use, src.Raw, where(src), where(w.src), w.specs[0]))
			return
		}
		if !slices.Contains(w.specs, s.Name) {
			w.specs = append(w.specs, s.Name)
		}
		if ks != nil {
			w.kernels = append(w.kernels, ks)
			for _, m := range ks.Modules {
				if !slices.Contains(w.modules, m) {
					w.modules = append(w.modules, m)
				}
			}
		}
	}
	for _, s := range specs {
		if s.Kernel != nil {
			var ks *images.Kernel
			if s.Kernel.Src.Kind == images.KindDir {
				ks = s.Kernel
			}
			add(s, UseKernel, s.Kernel.Src, ks)
		}
		for _, l := range s.Layers {
			add(s, UseLayer, l.Src, nil)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := make([]*want, 0, len(byKey))
	for _, w := range byKey {
		sort.Strings(w.specs)
		sort.Strings(w.modules)
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].src.Raw != out[j].src.Raw {
			return out[i].src.Raw < out[j].src.Raw
		}
		return out[i].use < out[j].use
	})
	return out, nil
}

func where(s images.Source) string {
	if s.Path != "" {
		return s.Path
	}
	return s.Raw
}

// copySpecs copies each spec's file, byte for byte (its hash is in every
// manifest built from it), into specs/<name>.toml.
func copySpecs(specs []*images.Spec, dir string, idx *Index) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	seen := map[string]string{}
	for _, s := range specs {
		name := s.Name + ".toml"
		if prev, ok := seen[name]; ok {
			if prev == s.File {
				continue
			}
			return fmt.Errorf("mirror: specs %s and %s are both named %q", prev, s.File, s.Name)
		}
		seen[name] = s.File
		data, err := os.ReadFile(s.File)
		if err != nil {
			return fmt.Errorf("mirror: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
		idx.Specs = append(idx.Specs, filepath.ToSlash(filepath.Join(SpecsDir, name)))
	}
	sort.Strings(idx.Specs)
	return nil
}
