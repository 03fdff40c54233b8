package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/builder/mirror"
	"github.com/plinth-dev/plinth/builder/source"
	"github.com/plinth-dev/plinth/images"
)

func newMirrorCmd(g *globals) *cobra.Command {
	var to, cache, src string
	var imgs []string
	c := &cobra.Command{
		Use:   "mirror [SPEC...] [--image REF...] --to DIR",
		Short: "Copy every source of image specs into one OCI layout, for building where there is no network",
		Long: `Resolve every source of the given image specs (registry references, oci:,
docker-archive:, dir:, tar:, go: programs and the kernel) and write them into DIR,
one OCI image layout whose index annotates each image with the source string as
the spec wrote it (dev.plinth.mirror.source) and its use (layer or kernel).
go: sources are stored as the layer of the built program; a dir: kernel as the
kernel and the modules the specs load. Beside the layout: goproxy/, the Go
modules plinth's initramfs compiles from (a file:// GOPROXY), specs/, the specs
themselves, and mirror.json. DIR is replaced whole and atomically; the same
specs and sources give the same bytes.

With --image REPO@sha256:… (repeatable) it also keeps built images pushed with
plinth push, as they are; the far side serves one with
plinth serve --image oci:DIR@sha256:… (the same digest).

On the far side:  plinth build --mirror DIR DIR/specs/NAME.toml
(the same Go version is still needed there to compile the initramfs, and the
plinth source tree unless this plinth is a released one: a released plinth's own
module is mirrored with the others; --mirror makes go use only the mirror's
modules).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && len(imgs) == 0 {
				return errors.New("name at least one spec or --image")
			}
			if to == "" {
				return errors.New("--to DIR is required")
			}
			epoch, err := sourceDateEpoch()
			if err != nil {
				return err
			}
			cacheD, err := cacheDir(cache)
			if err != nil {
				return err
			}
			specs, err := loadSpecs(args)
			if err != nil {
				return err
			}
			o := mirror.Options{CacheDir: cacheD, Epoch: epoch, Log: g.log, Images: imgs}
			if slices.ContainsFunc(specs, func(s *images.Spec) bool { return s.Kernel != nil }) {
				if o.SrcDir, o.Version, o.Sum, err = stage1Origin(src); err != nil {
					return err
				}
			}
			idx, err := mirror.Write(cmd.Context(), specs, to, o)
			if err != nil {
				return err
			}
			for _, e := range idx.Sources {
				fmt.Fprintf(cmd.OutOrStdout(), "%-6s %s %s\n", e.Use, e.Digest, e.Source)
			}
			if len(idx.GoModules) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "go     %d modules for the initramfs (%s)\n", len(idx.GoModules), idx.GoVersion)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "mirror written to %s\n", to)
			return nil
		},
	}
	c.Flags().StringVar(&to, "to", "", "mirror directory (required)")
	c.Flags().StringArrayVar(&imgs, "image", nil, "also keep a built image from a registry (REPO@sha256:… as plinth push printed it), served on the far side with plinth serve --image oci:DIR@sha256:…")
	c.Flags().StringVar(&cache, "cache", "", "cache directory (default $PLINTH_CACHE or ~/.cache/plinth)")
	c.Flags().StringVar(&src, "src", "", "plinth source tree (default $PLINTH_SRC or found from the working directory)")
	return c
}

// loadSpecs loads every spec, reporting all broken ones at once.
func loadSpecs(paths []string) ([]*images.Spec, error) {
	var specs []*images.Spec
	var errs []error
	for _, p := range paths {
		s, err := images.Load(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		specs = append(specs, s)
	}
	return specs, errors.Join(errs...)
}

// useMirror points specs into the mirror at dir for an offline build and
// returns the environment under which go finds modules in the mirror only
// (for builder.Options.GoEnv).
func useMirror(cmd *cobra.Command, dir, cache string, specs []*images.Spec, g *globals) ([]string, error) {
	m, err := mirror.Open(dir)
	if err != nil {
		return nil, err
	}
	r := &source.Resolver{CacheDir: filepath.Join(cache, "sources"), Offline: true, Log: g.log}
	var errs []error
	for _, s := range specs {
		if err := m.Rewrite(cmd.Context(), s, r); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	g.log.Info("building from mirror", "mirror", m.Dir, "sources", len(m.Index.Sources), "go_modules", len(m.Index.GoModules))
	return m.GoEnv(), nil
}
