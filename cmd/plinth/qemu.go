package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/lab"
	"github.com/plinth-dev/plinth/lab/netlab"
)

func newQemuCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "qemu", Short: "Run a site's machines as QEMU VMs on this host (a test lab)"}
	var artifacts, logDir, disks string
	var memory, cpus int
	var untilReady bool
	var timeout, stall time.Duration
	up := &cobra.Command{
		Use:   "up SITE_DIR",
		Short: "Netboot every machine of a site in QEMU, with plinth serve as their DHCP and boot server",
		Long: `Make a private L2 network (a network namespace with a bridge at the site's
[dhcp] router address), start plinth serve there answering DHCP, and PXE-boot
one QEMU VM per machine of the site whose image is built in --artifacts. Shows
each machine's boot state until all report ready; then keeps running until
interrupted (or exits with --until-ready). Needs root. Consoles are written to
--log-dir.

A machine with a state disk in the site gets a virtual one: a sparse raw file
--disks/MACHINE.raw (8 GiB, or its min-size if larger), made blank on the first
run and kept from run to run, so its state survives like a real disk's
(plinth qemu down --delete-disks removes them). The selector decides the
device: /dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_S is an NVMe disk with serial S;
/dev/disk/by-id/virtio-S and serial:S a virtio disk with serial S; min-size:N a
virtio disk with serial plinth-MACHINE. The lab cannot make wwn: or
/dev/disk/by-path/ disks.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return qemuUp(cmd.Context(), g, args[0], artifacts, logDir, disks, memory, cpus, untilReady, timeout, stall)
		},
	}
	up.Flags().StringVar(&artifacts, "artifacts", "artifacts", "artifacts directory")
	up.Flags().StringVar(&logDir, "log-dir", "build/lab", "where VM consoles and the server log go")
	up.Flags().StringVar(&disks, "disks", "", "where machines' state disks are kept across runs (default LOG_DIR/disks)")
	up.Flags().IntVar(&memory, "memory", 0, "MiB of RAM per machine (default: by role, etcd 768, master 2048, minion 1536, others 1024)")
	up.Flags().IntVar(&cpus, "cpus", 0, "vCPUs per machine (default: by role, master 2, others 1)")
	up.Flags().BoolVar(&untilReady, "until-ready", false, "stop everything once all machines are ready")
	up.Flags().DurationVar(&stall, "stall", 10*time.Minute, "give up when a machine not yet ready shows nothing new (boot stage, agent message, unit state) for this long")
	up.Flags().DurationVar(&timeout, "timeout", 0, "give up when machines are not all ready by then, progressing or not (0: no limit)")
	var downLogDir, downDisks string
	var deleteDisks bool
	down := &cobra.Command{
		Use:   "down",
		Short: "Remove lab networks left behind by an interrupted qemu up, with what still runs in them",
		Long: `Remove lab networks left behind by an interrupted qemu up, with what still
runs in them. The machines' state disks are kept for the next qemu up unless
--delete-disks is given (refused while the lab of --log-dir runs).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return qemuDown(cmd.Context(), g, cmd.OutOrStdout(), downLogDir, downDisks, deleteDisks)
		},
	}
	down.Flags().StringVar(&downLogDir, "log-dir", "build/lab", "the --log-dir of qemu up")
	down.Flags().StringVar(&downDisks, "disks", "", "the --disks of qemu up (default LOG_DIR/disks)")
	down.Flags().BoolVar(&deleteDisks, "delete-disks", false, "also delete the machines' state disks")
	var logsDir string
	var fresh time.Duration
	logs := &cobra.Command{
		Use:   "logs MACHINE UNIT",
		Short: "Print a unit's journal from a machine of the running lab (plinth logs, inside the lab's network)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			info, err := lab.ReadInfo(logsDir)
			if err != nil {
				return err
			}
			return printJournal(cmd.Context(), lab.ClientIn(info.Netns), cmd.OutOrStdout(), cmd.ErrOrStderr(), info.Server, args[0], args[1], fresh)
		},
	}
	logs.Flags().StringVar(&logsDir, "log-dir", "build/lab", "the --log-dir of the running qemu up")
	logs.Flags().DurationVar(&fresh, "fresh", 45*time.Second, "ask the machine for its journal now and wait this long for it (0: the last one it sent)")
	c.AddCommand(up, down, logs)
	return c
}

func qemuDown(ctx context.Context, g *globals, out io.Writer, logDir, disks string, deleteDisks bool) error {
	for _, ns := range netlab.RemoveStale(ctx, g.log) {
		fmt.Fprintln(out, "removed", ns)
	}
	if !deleteDisks {
		return nil
	}
	dir := lab.DisksDir(logDir, disks)
	removed, err := lab.DeleteDisks(logDir, dir)
	if err != nil {
		return err
	}
	if len(removed) == 0 {
		fmt.Fprintln(out, "no state disks in", dir)
	}
	for _, f := range removed {
		fmt.Fprintln(out, "removed", f)
	}
	return nil
}

func qemuUp(ctx context.Context, g *globals, siteDir, artifacts, logDir, disks string, memory, cpus int, untilReady bool, timeout, stall time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	start := time.Now()
	c, err := lab.Up(ctx, lab.Config{Site: siteDir, Artifacts: artifacts, LogDir: logDir, Disks: disks, Memory: memory, CPUs: cpus,
		Stall: stall, Out: os.Stdout, Log: g.log})
	if c != nil {
		defer c.Close()
	}
	switch {
	case errors.Is(err, context.Canceled):
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("machines not ready after --timeout %s: see %s", timeout, logDir)
	case err != nil:
		return err
	}
	fmt.Printf("all %d machines ready after %.0fs\n", c.Booted(), time.Since(start).Seconds())
	if untilReady {
		return nil
	}
	<-ctx.Done()
	return nil
}
