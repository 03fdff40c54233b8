package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"aead.dev/minisign"
	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/bootserver"
	"github.com/plinth-dev/plinth/bundle"
	"github.com/plinth-dev/plinth/profiles"
)

func newBundleCmd(g *globals) *cobra.Command {
	var out, sign string
	var images []string
	var o bundle.Options
	c := &cobra.Command{
		Use:   "bundle --out FILE.tar [--artifacts DIR | --image REF...] [--mirror DIR] [--site DIR]",
		Short: "Pack artifacts, a mirror and a site into one verifiable tar for an air-gapped site",
		Long: `Pack built images (every DIR/<name>/ of --artifacts, each checked against its
manifest first), a mirror written by plinth mirror and a site's profiles into
one tar whose first entry, plinth-bundle.json, lists every file with its sha256
and size; FILE.tar.sha256 beside it holds the digest of the whole tar. The bytes
depend only on the inputs: entries sorted, mtimes from SOURCE_DATE_EPOCH,
owner 0:0. With --sign KEY (plinth keygen) FILE.tar.minisig holds its
signature (minisign's format). Every file is written atomically.

On the far side, which was given KEY.pub beforehand:
                  plinth verify --trust KEY.pub FILE.tar
                  plinth serve --bundle FILE.tar --trust KEY.pub [--listen …]`,
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
			var key minisign.PrivateKey
			if sign != "" {
				if key, err = bundle.LoadSigningKey(sign); err != nil { // before the long write
					return err
				}
			}
			if len(images) > 0 {
				if o.Artifacts != "" {
					return errors.New("--image takes the artifacts from a registry: drop --artifacts")
				}
				if o.Artifacts, err = pullImages(cmd, images, g); err != nil {
					return err
				}
			}
			o.Epoch, o.Log = epoch, g.log
			m, digest, err := bundle.Write(cmd.Context(), out, o)
			if err != nil {
				return err
			}
			if sign != "" {
				if err := bundle.Sign(out, key); err != nil {
					return err
				}
			} else {
				g.log.Warn("bundle not signed: the far side accepts it only with --unsigned; sign with --sign KEY (plinth keygen)", "bundle", out)
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
	c.Flags().StringArrayVar(&images, "image", nil, "pack an image pulled from an OCI registry instead of --artifacts: REPO@sha256:… as plinth push printed it (repeat for each image)")
	c.Flags().StringVar(&o.Mirror, "mirror", "", "mirror directory (plinth mirror --to)")
	c.Flags().StringVar(&o.Site, "site", "", "site profile directory")
	c.Flags().StringVar(&sign, "sign", "", "sign the bundle with this key (plinth keygen; encrypted keys take $PLINTH_SIGN_PASSWORD): FILE.minisig")
	return c
}

func newKeygenCmd(g *globals) *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "keygen --out KEY",
		Short: "Make a key to sign bundles with (KEY, mode 0600) and its public half (KEY.pub)",
		Long: `Make an Ed25519 signing key in minisign's format: KEY (unencrypted, mode
0600: keep it where your CI keeps secrets) and KEY.pub, which the air-gapped
side is given once, out of band, and passes as --trust KEY.pub. Neither file
is ever overwritten. minisign -Vm FILE.tar -p KEY.pub checks a signature too.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return errors.New("--out KEY is required")
			}
			pub, err := bundle.GenerateKey(out)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "signing key %s, public key %s\n", out, pub)
			return nil
		},
	}
	c.Flags().StringVar(&out, "out", "", "where to write the signing key (KEY and KEY.pub)")
	return c
}

// trustFlags are --trust and --unsigned, for what reads bundles.
type trustFlags struct {
	keys     []string
	unsigned bool
}

func (f *trustFlags) add(c *cobra.Command) {
	c.Flags().StringSliceVar(&f.keys, "trust", nil, "public key (plinth keygen's KEY.pub) whose signature a bundle must carry; repeat for several")
	c.Flags().BoolVar(&f.unsigned, "unsigned", false, "accept a bundle without a signature (one that has a signature is still checked)")
}

func (f *trustFlags) trust() (bundle.Trust, error) {
	keys, err := bundle.LoadTrustedKeys(f.keys)
	return bundle.Trust{Keys: keys, Unsigned: f.unsigned}, err
}

// serveBundle verifies a bundle and unpacks its artifacts and site into
// dir (default: the cache's bundles/), then points the server at them.
func serveBundle(cmd *cobra.Command, c *bootserver.Config, file, dir string, trust bundle.Trust, log *slog.Logger) error {
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
	got, res, err := bundle.Unpack(cmd.Context(), file, dir, bundle.ServeSet, trust)
	if err != nil {
		return err
	}
	if res.Signer == "" {
		log.Warn("serving an unsigned bundle (--unsigned)", "bundle", file)
	}
	if !res.Sidecar {
		log.Warn("no FILE.sha256 beside the bundle: its manifest is not checked against a digest from outside", "bundle", file)
	}
	c.SiteDir = filepath.Join(got, bundle.SiteDir)
	c.ArtifactsDir = filepath.Join(got, bundle.ArtifactsDir)
	if _, err := os.Stat(c.SiteDir); err != nil {
		return fmt.Errorf("bundle %s holds no site: pack one with plinth bundle --site", file)
	}
	log.Info("serving from bundle", "bundle", file, "digest", res.Digest, "signed_by", res.Signer, "images", len(res.Manifest.Images), "dir", got)
	return nil
}
