package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/ociart"
)

func newPushCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "push DIR/NAME REF",
		Short: "Publish a built image's artifacts to an OCI registry as one OCI artifact",
		Long: `Publish the artifact directory of one built image (DIR/NAME/ of plinth build
--out DIR: manifest.json, the kernel, initramfs and root file system) to REF, a
registry tag or repository, as one OCI artifact: an OCI image manifest with
artifactType ` + ociart.ArtifactType + `, an empty config and one layer per file,
each layer the file itself, so its digest is the one manifest.json names. The
files are checked against manifest.json first; blobs the registry has are not
sent again. Credentials are your Docker credentials (docker login, DOCKER_CONFIG,
credential helpers); a registry with a private CA is trusted through
SSL_CERT_FILE or the system's CA store.

It prints REF by digest, which is what plinth serve --image takes:
    plinth push artifacts/etcd registry.example/plinth/etcd:v1
    plinth serve --site site --image registry.example/plinth/etcd@sha256:…`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := ociart.Push(cmd.Context(), args[0], args[1], ociart.Options{Log: g.log})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), d.String())
			return nil
		},
	}
}

// pullImages pulls registry references (REPO@sha256:…, as push printed
// them) into $PLINTH_CACHE/registry and returns an artifacts directory
// holding them, for serve --image and bundle --image.
func pullImages(cmd *cobra.Command, refs []string, g *globals) (string, error) {
	cache, err := cacheDir("")
	if err != nil {
		return "", err
	}
	return ociart.PullAll(cmd.Context(), refs, filepath.Join(cache, "registry"), ociart.Options{Log: g.log})
}
