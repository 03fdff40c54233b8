package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/bundle"
)

func newVerifyCmd(g *globals) *cobra.Command {
	var unpack string
	var tf trustFlags
	c := &cobra.Command{
		Use:   "verify PATH...",
		Short: "Check a bundle or artifact directories against their manifests",
		Long: `Check each PATH against its manifest and report every damaged file with the
digest expected and the one found. PATH is a bundle (a tar written by plinth
bundle: every file against plinth-bundle.json, every artifact against its
image's manifest.json, the whole tar against FILE.sha256 when present and its
signature FILE.minisig against the --trust keys; an unsigned bundle only with
--unsigned), an
artifact directory (DIR/<name>/ with manifest.json) or an artifacts root.
Exit status 1 when anything does not match.

With --unpack DIR a bundle is unpacked as it is checked into
DIR/bundle-<digest>/, moved into place only when all of it verified (that is
where the mirror is found for plinth build --mirror on the far side).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			trust, err := tf.trust()
			if err != nil {
				return err
			}
			var errs []error
			for _, p := range args {
				st, err := os.Stat(p)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				if st.IsDir() {
					dirs, err := bundle.VerifyArtifacts(p)
					if err != nil {
						errs = append(errs, err)
						continue
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%d images)\n", p, len(dirs))
					continue
				}
				var res *bundle.Result
				var into string
				if unpack != "" {
					into, res, err = bundle.Unpack(cmd.Context(), p, unpack, nil, trust)
				} else {
					res, err = bundle.Verify(cmd.Context(), p, trust)
				}
				if err != nil {
					errs = append(errs, err)
					continue
				}
				if into != "" {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: unpacked into %s\n", p, into)
				}
				side := "checked against " + p + ".sha256"
				if !res.Sidecar {
					side = "no " + p + ".sha256 to check the whole bundle against"
					g.log.Warn("no FILE.sha256 beside the bundle", "bundle", p)
				}
				signed := "signed by key " + res.Signer
				if res.Signer == "" {
					signed = "UNSIGNED (accepted by --unsigned)"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%d files, %d images, %s; %s; %s)\n", p, len(res.Manifest.Files), len(res.Manifest.Images), res.Digest, side, signed)
			}
			return errors.Join(errs...)
		},
	}
	c.Flags().StringVar(&unpack, "unpack", "", "also unpack each bundle into DIR/bundle-<digest>/, only once it verified")
	tf.add(c)
	return c
}
