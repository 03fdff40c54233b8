// Command plinth builds immutable netboot images and boots machines from them.
// It is thin: flags and wiring; the work lives in the packages it calls.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "plinth:", err)
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(int(ee))
		}
		os.Exit(1)
	}
}

// exitError carries a specific exit status.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

type globals struct {
	logFormat string
	logLevel  string
	log       *slog.Logger
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "plinth",
		Short: "Build immutable netboot appliance images and boot racks from them",
		Long: `plinth builds role images (etcd, Kubernetes master, minion) from OCI layers into
a squashfs root filesystem, a kernel and a u-root initramfs, and serves them to
machines over PXE/iPXE with one profile per machine. Nothing on a machine is
configured by hand: each configures itself at first boot from its profile.

Typical use:
  plinth validate images/*.toml profiles/examples/qemu-lab   # check specs and a site
  plinth build --out artifacts images/minion.toml            # build artifacts/minion/
  plinth inspect artifacts/minion                            # what is inside
  plinth serve --site profiles/examples/qemu-lab --artifacts artifacts
  plinth mirror --to mirror images/*.toml                     # air-gapped: every source in one OCI layout
  plinth keygen --out sign.key                                # once; the far side gets sign.key.pub
  plinth bundle --out site.tar --sign sign.key --artifacts artifacts --mirror mirror --site DIR
  plinth serve --bundle site.tar --trust sign.key.pub         # on the far side`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			l, err := newLogger(g.logFormat, g.logLevel, os.Stderr)
			if err != nil {
				return err
			}
			g.log = l
			slog.SetDefault(l)
			return nil
		},
	}
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(
		newBuildCmd(g),
		newValidateCmd(g),
		newInspectCmd(g),
		newLogsCmd(g),
		newPackCmd(g),
		newPushCmd(g),
		newServeCmd(g),
		newCredentialsCmd(g),
		newCACmd(g),
		newQemuCmd(g),
		newMirrorCmd(g),
		newBundleCmd(g),
		newKeygenCmd(g),
		newVerifyCmd(g),
		newEtcdCmd(g),
	)
	return root
}
