package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/plinth-dev/plinth/builder/ocitar"
	"github.com/plinth-dev/plinth/builder/source"
	"github.com/plinth-dev/plinth/images"
)

// Mirror is a mirror opened for an offline build.
type Mirror struct {
	Dir   string // absolute
	Index *Index
	tags  map[[2]string]string // (use, source) → tag in the layout
}

// Open reads the mirror at dir. Sources are found through the annotations
// of the layout's index, as any OCI tool sees them.
func Open(dir string) (*Mirror, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(abs, IndexFile))
	if err != nil {
		return nil, fmt.Errorf("mirror %s: not a plinth mirror: %w", dir, err)
	}
	var idx Index
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, fmt.Errorf("mirror %s: %s: %w", dir, IndexFile, err)
	}
	if idx.Schema != Schema {
		return nil, fmt.Errorf("mirror %s: %s schema %d, this plinth reads %d", dir, IndexFile, idx.Schema, Schema)
	}
	p, err := layout.FromPath(abs)
	if err != nil {
		return nil, fmt.Errorf("mirror %s: %w", dir, err)
	}
	ii, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("mirror %s: %w", dir, err)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("mirror %s: index.json: %w", dir, err)
	}
	m := &Mirror{Dir: abs, Index: &idx, tags: map[[2]string]string{}}
	for _, d := range im.Manifests {
		src, use, tag := d.Annotations[AnnotSource], d.Annotations[AnnotUse], d.Annotations[ocitar.RefName]
		if src != "" && use != "" && tag != "" {
			m.tags[[2]string{use, src}] = tag
		}
	}
	return m, nil
}

// Rewrite points every source of spec into the mirror, keeping the string
// the spec wrote (the manifest records that). A dir: kernel is unpacked
// through r's cache and used as a directory, so its digest is computed as
// for the original tree. Every source missing from the mirror is named.
func (m *Mirror) Rewrite(ctx context.Context, spec *images.Spec, r *source.Resolver) error {
	var errs []error
	lookup := func(use string, src images.Source, field string) (images.Source, bool) {
		tag, ok := m.tags[[2]string{use, src.Raw}]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: %s %s: not in mirror %s (run plinth mirror with this spec)", spec.File, field, src.Raw, m.Dir))
			return src, false
		}
		return images.Source{Raw: src.Raw, Kind: images.KindOCI, Path: m.Dir, Tag: tag}, true
	}
	if k := spec.Kernel; k != nil {
		if s, ok := lookup(UseKernel, k.Src, "kernel.source"); ok {
			if k.Src.Kind == images.KindDir {
				tree, _, err := r.Tree(ctx, s)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: kernel.source %s: from mirror: %w", spec.File, k.Src.Raw, err))
				} else {
					s = images.Source{Raw: k.Src.Raw, Kind: images.KindDir, Path: tree}
				}
			}
			k.Src = s
		}
	}
	for i := range spec.Layers {
		if s, ok := lookup(UseLayer, spec.Layers[i].Src, fmt.Sprintf("layer[%d]", i)); ok {
			spec.Layers[i].Src = s
		}
	}
	return errors.Join(errs...)
}

// GoEnv is the environment under which `go` finds the initramfs's modules in
// the mirror and nowhere else, whatever GOPROXY said.
func (m *Mirror) GoEnv() []string {
	proxy := "off"
	if st, err := os.Stat(filepath.Join(m.Dir, GoProxyDir)); err == nil && st.IsDir() {
		proxy = "file://" + filepath.Join(m.Dir, GoProxyDir)
	}
	return []string{"GOPROXY=" + proxy, "GOTOOLCHAIN=local"}
}
