package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/bootserver"
	"github.com/plinth-dev/plinth/bundle"
	"github.com/plinth-dev/plinth/profiles"
)

func newBundleCmd(g *globals) *cobra.Command {
	var out string
	var o bundle.Options
	c := &cobra.Command{
		Use:   "bundle --out FILE.tar [--artifacts DIR] [--mirror DIR] [--site DIR]",
		Short: "Pack artifacts, a mirror and a site into one verifiable tar for an air-gapped site",
		Long: `Pack built images (every DIR/<name>/ of --artifacts, each checked against its
manifest first), a mirror written by plinth mirror and a site's profiles into
one tar whose first entry, plinth-bundle.json, lists every file with its sha256
and size; FILE.tar.sha256 beside it holds the digest of the whole tar. The bytes
depend only on the inputs: entries sorted, mtimes from SOURCE_DATE_EPOCH,
owner 0:0. Both files are written atomically.

On the far side:  plinth verify FILE.tar
                  plinth serve --bundle FILE.tar [--listen …]`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return errors.New("--out FILE.tar is required")
			}
			if o.Site != "" {
				if _, err := profiles.LoadSite(o.Site); err != nil {
					return err
				}
			}
			epoch, err := sourceDateEpoch()
			if err != nil {
				return err
			}
			o.Epoch, o.Log = epoch, g.log
			m, digest, err := bundle.Write(cmd.Context(), out, o)
			if err != nil {
				return err
			}
			var size int64
			for _, f := range m.Files {
				size += f.Size
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d files, %d images, %.1f MB, %s\n", out, len(m.Files), len(m.Images), float64(size)/1e6, digest)
			return nil
		},
	}
	c.Flags().StringVar(&out, "out", "", "bundle file to write (required); FILE.sha256 is written beside it")
	c.Flags().StringVar(&o.Artifacts, "artifacts", "", "artifacts directory (the builder's --out)")
	c.Flags().StringVar(&o.Mirror, "mirror", "", "mirror directory (plinth mirror --to)")
	c.Flags().StringVar(&o.Site, "site", "", "site profile directory")
	return c
}

// serveBundle verifies a bundle and unpacks its artifacts and site into
// dir (default: the cache's bundles/), then points the server at them.
func serveBundle(cmd *cobra.Command, c *bootserver.Config, file, dir string, log *slog.Logger) error {
	for _, f := range []string{"site", "artifacts"} {
		if cmd.Flags().Changed(f) {
			return fmt.Errorf("--bundle carries the site and the artifacts: drop --%s", f)
		}
	}
	if dir == "" {
		cache, err := cacheDir("")
		if err != nil {
			return err
		}
		dir = filepath.Join(cache, "bundles")
	}
	got, res, err := bundle.Unpack(cmd.Context(), file, dir, bundle.ServeSet)
	if err != nil {
		return err
	}
	if !res.Sidecar {
		log.Warn("no FILE.sha256 beside the bundle: its manifest is not checked against a digest from outside", "bundle", file)
	}
	c.SiteDir = filepath.Join(got, bundle.SiteDir)
	c.ArtifactsDir = filepath.Join(got, bundle.ArtifactsDir)
	if _, err := os.Stat(c.SiteDir); err != nil {
		return fmt.Errorf("bundle %s holds no site: pack one with plinth bundle --site", file)
	}
	log.Info("serving from bundle", "bundle", file, "digest", res.Digest, "images", len(res.Manifest.Images), "dir", got)
	return nil
}
