package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/builder/ocitar"
	"github.com/plinth-dev/plinth/builder/source"
	"github.com/plinth-dev/plinth/images"
)

func newPackCmd(g *globals) *cobra.Command {
	var to, cache string
	c := &cobra.Command{
		Use:   "pack --to oci:DIR:TAG SOURCE...",
		Short: "Pack directories, tars, Go programs or images into a local OCI layout",
		Long: `Pack one or more sources (dir:PATH, tar:FILE, go:PKG@VERSION, docker-archive:FILE,
oci:DIR[:TAG] or a registry reference) into one image, their layers stacked in
the order given, written into the OCI image layout DIR under TAG. Packing
again replaces the image with that tag. This is how content reaches plinth
without a registry: fixtures, air-gapped sites, CI.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, tag, ok := strings.Cut(strings.TrimPrefix(to, "oci:"), ":")
			if !strings.HasPrefix(to, "oci:") || !ok || dir == "" || tag == "" || strings.Contains(tag, "/") {
				return fmt.Errorf("--to %q: want oci:DIR:TAG", to)
			}
			epoch, err := sourceDateEpoch()
			if err != nil {
				return err
			}
			cacheD, err := cacheDir(cache)
			if err != nil {
				return err
			}
			wd, _ := os.Getwd()
			r := &source.Resolver{CacheDir: filepath.Join(cacheD, "sources"), Log: g.log, Epoch: epoch, BaseDir: wd}
			var layers []v1.Layer
			for _, a := range args {
				s, err := images.ParseSource(a, wd)
				if err != nil {
					return err
				}
				si, err := r.Image(cmd.Context(), s)
				if err != nil {
					return err
				}
				ls, err := si.Layers()
				if err != nil {
					return err
				}
				layers = append(layers, ls...)
			}
			img, err := ocitar.ImageFromLayers(epoch, layers...)
			if err != nil {
				return err
			}
			if err := ocitar.WriteLayout(dir, tag, img); err != nil {
				return err
			}
			d, _ := img.Digest()
			fmt.Fprintf(cmd.OutOrStdout(), "oci:%s:%s %s\n", dir, tag, d)
			return nil
		},
	}
	c.Flags().StringVar(&to, "to", "", "destination, oci:DIR:TAG (required)")
	c.Flags().StringVar(&cache, "cache", "", "cache directory (default $PLINTH_CACHE or ~/.cache/plinth)")
	_ = c.MarkFlagRequired("to")
	return c
}
