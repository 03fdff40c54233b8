// Package source resolves the sources of an image spec into OCI images:
// registry references, OCI layouts, docker archives, directories, tar files
// and Go programs, with a content-addressed cache so that a source pinned by
// digest is never fetched (or built) twice.
package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/plinth-dev/plinth/builder/ocitar"
	"github.com/plinth-dev/plinth/images"
)

// ErrOffline is returned for a source that would need the network.
var ErrOffline = errors.New("offline: this source needs the network and is not in the cache")

// Resolver turns sources into images. The zero value works without a cache.
type Resolver struct {
	CacheDir string       // where pulled images and built layers are kept
	Offline  bool         // never touch the network
	Log      *slog.Logger //
	Epoch    time.Time    // timestamp of layers made from dirs, tars and Go programs
	// BaseDir is where go: sources without a version are built (the spec's module).
	BaseDir string
	// GoEnv is added to the environment of `go` for go: sources.
	GoEnv []string
	// Remote options for registry sources (tests point them at a local registry).
	Remote []remote.Option
}

func (r *Resolver) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// Image resolves s into an image.
func (r *Resolver) Image(ctx context.Context, s images.Source) (v1.Image, error) {
	switch s.Kind {
	case images.KindOCI:
		return FromLayout(s.Path, s.Tag)
	case images.KindDockerArchive:
		img, err := tarball.ImageFromPath(s.Path, nil)
		if err != nil {
			return nil, fmt.Errorf("docker-archive:%s: %w", s.Path, err)
		}
		return img, nil
	case images.KindDir:
		st, err := os.Stat(s.Path)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("dir:%s: not a directory", s.Path)
		}
		return r.dirImage(s.Path)
	case images.KindTar:
		return r.tarImage(s.Path)
	case images.KindRegistry:
		return r.registry(ctx, s.Ref)
	case images.KindGo:
		return r.goProgram(ctx, s)
	}
	return nil, fmt.Errorf("source %q: unknown kind %q", s.Raw, s.Kind)
}

func (r *Resolver) tmpDir() string {
	if r.CacheDir == "" {
		return ""
	}
	d := filepath.Join(r.CacheDir, "tmp")
	if os.MkdirAll(d, 0o755) != nil {
		return ""
	}
	return d
}

// FromLayout picks the image tagged tag (its ref.name annotation) from the
// OCI layout at dir, or the only image when tag is empty.
func FromLayout(dir, tag string) (v1.Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("oci:%s: not an OCI image layout: %w", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("oci:%s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("oci:%s: %w", dir, err)
	}
	var tags []string
	var match []v1.Descriptor
	for _, d := range im.Manifests {
		t := d.Annotations[ocitar.RefName]
		tags = append(tags, t)
		if tag == "" || t == tag {
			match = append(match, d)
		}
	}
	sort.Strings(tags)
	switch {
	case len(match) == 0 && tag != "":
		return nil, fmt.Errorf("oci:%s: no image tagged %q (tags: %s)", dir, tag, strings.Join(tags, ", "))
	case len(match) == 0:
		return nil, fmt.Errorf("oci:%s: the layout holds no image", dir)
	case len(match) > 1:
		return nil, fmt.Errorf("oci:%s: %d images, name one with oci:%s:TAG (tags: %s)", dir, len(match), dir, strings.Join(tags, ", "))
	}
	img, err := idx.Image(match[0].Digest)
	if err != nil {
		return nil, fmt.Errorf("oci:%s:%s: %w", dir, tag, err)
	}
	return img, nil
}

// registry pulls ref for linux/amd64 with the user's Docker credentials. A
// ref pinned by digest is served from the cache's layout when present, and
// stored there after the first pull.
func (r *Resolver) registry(ctx context.Context, ref string) (v1.Image, error) {
	pr, err := name.ParseReference(ref, name.StrictValidation)
	if err != nil {
		return nil, err
	}
	dg, pinned := pr.(name.Digest)
	cacheLayout := ""
	if r.CacheDir != "" {
		cacheLayout = filepath.Join(r.CacheDir, "oci")
	}
	if pinned && cacheLayout != "" {
		if img, err := FromLayout(cacheLayout, dg.DigestStr()); err == nil {
			r.log().Debug("registry source from cache", "ref", ref)
			return img, nil
		}
	}
	if r.Offline {
		return nil, fmt.Errorf("%s: %w", ref, ErrOffline)
	}
	opts := append([]remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}),
	}, r.Remote...)
	r.log().Info("pulling", "ref", ref)
	img, err := remote.Image(pr, opts...)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	if pinned && cacheLayout != "" {
		if err := ocitar.WriteLayout(cacheLayout, dg.DigestStr(), img); err != nil {
			return nil, fmt.Errorf("cache %s: %w", ref, err)
		}
		return FromLayout(cacheLayout, dg.DigestStr())
	}
	return img, nil
}
