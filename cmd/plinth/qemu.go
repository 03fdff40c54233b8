package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/bootserver"
	"github.com/plinth-dev/plinth/builder/manifest"
	"github.com/plinth-dev/plinth/profiles"
	"github.com/plinth-dev/plinth/qemu-tests/lab"
	"github.com/plinth-dev/plinth/qemu-tests/qemu"
)

func newQemuCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "qemu", Short: "Run a site's machines as QEMU VMs on this host (a test lab)"}
	var artifacts, logDir string
	var memory int
	var untilReady bool
	var timeout time.Duration
	up := &cobra.Command{
		Use:   "up SITE_DIR",
		Short: "Netboot every machine of a site in QEMU, with plinth serve as their DHCP and boot server",
		Long: `Make a private L2 network (a network namespace with a bridge at the site's
[dhcp] router address), start plinth serve there answering DHCP, and PXE-boot
one QEMU VM per machine of the site whose image is built in --artifacts. Shows
each machine's boot state until all report ready; then keeps running until
interrupted (or exits with --until-ready). Needs root. Consoles are written to
--log-dir.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return qemuUp(cmd.Context(), g, args[0], artifacts, logDir, memory, untilReady, timeout)
		},
	}
	up.Flags().StringVar(&artifacts, "artifacts", "artifacts", "artifacts directory")
	up.Flags().StringVar(&logDir, "log-dir", "build/lab", "where VM consoles and the server log go")
	up.Flags().IntVar(&memory, "memory", 0, "MiB of RAM per machine (default: by role, etcd 768, master 2048, minion 1536, others 1024)")
	up.Flags().BoolVar(&untilReady, "until-ready", false, "stop everything once all machines are ready")
	up.Flags().DurationVar(&timeout, "timeout", 15*time.Minute, "give up when machines are not ready by then")
	down := &cobra.Command{
		Use:   "down",
		Short: "Remove lab networks left behind by an interrupted qemu up",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			out, err := exec.Command("ip", "netns", "list").Output()
			if err != nil {
				return err
			}
			for _, line := range strings.Split(string(out), "\n") {
				if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "plinth-nl-lab-") {
					_ = exec.Command("ip", "netns", "pids", f[0]).Run()
					if err := exec.Command("ip", "netns", "del", f[0]).Run(); err == nil {
						fmt.Fprintln(cmd.OutOrStdout(), "removed", f[0])
					}
				}
			}
			return nil
		},
	}
	c.AddCommand(up, down)
	return c
}

func qemuUp(ctx context.Context, g *globals, siteDir, artifacts, logDir string, memory int, untilReady bool, timeout time.Duration) error {
	site, err := profiles.LoadSite(siteDir)
	if err != nil {
		return err
	}
	if site.DHCP.Mode != "server" || site.DHCP.Router == "" || site.DHCP.Netmask == "" {
		return fmt.Errorf("%s: a QEMU lab needs [dhcp] mode = \"server\" with router and netmask (the boot server's address)", siteDir)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	ones := 0
	for _, p := range strings.Split(site.DHCP.Netmask, ".") {
		var n int
		fmt.Sscan(p, &n)
		for ; n > 0; n >>= 1 {
			ones += n & 1
		}
	}
	l, err := lab.New(ctx, "lab", fmt.Sprintf("%s/%d", site.DHCP.Router, ones), g.log)
	if err != nil {
		return err
	}
	defer l.Close()
	serveLog, err := os.Create(filepath.Join(logDir, "serve.log"))
	if err != nil {
		return err
	}
	defer serveLog.Close()
	server := "http://" + l.Server + ":8080"
	if err := l.Start(ctx, serveLog, self, "serve", "--site", siteDir, "--artifacts", artifacts,
		"--listen", l.Server+":8080", "--server-ip", l.Server, "--dhcp-interface", "br0", "--dns", l.Server+":53"); err != nil {
		return err
	}
	// Machines start in the order an operator brings a rack up: etcd
	// members, then masters, then minions and anything else, each group
	// once the one before is ready. All at once works, but on a few host
	// cores under TCG the later machines' boots starve etcd's heartbeats.
	groups := bootGroups(site.Machines, func(m *profiles.Machine) bool {
		if _, err := manifest.Read(filepath.Join(artifacts, m.Image)); err != nil {
			g.log.Warn("not booting: image not built", "machine", m.Name, "image", m.Image)
			return false
		}
		return true
	})
	if len(groups) == 0 {
		return fmt.Errorf("no machine of %s has a built image in %s", siteDir, artifacts)
	}
	start := time.Now()
	deadline := time.After(timeout)
	var booted []string
	var last string
	for i, group := range groups {
		for _, m := range group {
			// The KVM probe (run by the first Start) boots a built image's
			// kernel: a KVM that runs firmware but hangs in the kernel is not used.
			if qemu.ProbeKernel == "" {
				qemu.ProbeKernel = filepath.Join(artifacts, m.Image, manifest.KernelFile)
			}
			netdev, err := l.AddTap(ctx)
			if err != nil {
				return err
			}
			mem := memory
			if mem == 0 {
				mem = roleMemory[m.Role]
			}
			if mem == 0 {
				mem = 1024
			}
			if _, err := qemu.Start(ctx, nil, qemu.Config{Name: m.Name, Memory: mem, Boot: "n", Wrap: l.Wrap(), LogDir: logDir,
				NICs: []qemu.NIC{{MAC: m.MAC, Netdev: netdev}}}); err != nil {
				return err
			}
			booted = append(booted, m.Name)
		}
		fmt.Printf("lab %s: %d of the site's machines netbooting (%s); consoles in %s\n", l.Name(), len(booted), qemu.Accel(ctx), logDir)
		// Wait for every machine started so far.
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-deadline:
				return fmt.Errorf("machines not ready after %s: see %s", timeout, logDir)
			case <-time.After(3 * time.Second):
			}
			b, err := l.Get(ctx, self, server+"/v1/machines")
			if err != nil {
				continue
			}
			var list []bootserver.MachineStatus
			if json.Unmarshal(b, &list) != nil {
				continue
			}
			var sb strings.Builder
			tw := tabwriter.NewWriter(&sb, 2, 4, 2, ' ', 0)
			ready := 0
			for _, st := range list {
				if !slices.Contains(booted, st.Name) {
					continue
				}
				if st.State == "ready" {
					ready++
				}
				event, _, _ := strings.Cut(st.LastEvent, "\n") // a health check's report can run to many lines
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", st.Name, st.Role, st.IP, orWaiting(st.State), event)
			}
			tw.Flush()
			if s := sb.String(); s != last {
				fmt.Printf("[%4.0fs]\n%s", time.Since(start).Seconds(), s)
				last = s
			}
			if ready == len(booted) {
				break
			}
		}
		if i < len(groups)-1 {
			continue
		}
		fmt.Printf("all %d machines ready after %.0fs\n", len(booted), time.Since(start).Seconds())
		if untilReady {
			return nil
		}
		<-ctx.Done()
	}
	return nil
}

// bootGroups orders the machines to boot (those built says can) into the
// groups that start one after the other, in the site's order within each.
func bootGroups(machines []*profiles.Machine, built func(*profiles.Machine) bool) [][]*profiles.Machine {
	var groups [][]*profiles.Machine
	for _, stage := range bootStages {
		var group []*profiles.Machine
		for _, m := range machines {
			if stageOf(m.Role) == stage && built(m) {
				group = append(group, m)
			}
		}
		if len(group) > 0 {
			groups = append(groups, group)
		}
	}
	return groups
}

// bootStages is the order machines start in, by role; stageOf puts a role
// without a stage of its own (none, or one a site adds) with the minions.
var bootStages = []string{"etcd", "master", "minion"}

func stageOf(role string) string {
	if slices.Contains(bootStages, role) {
		return role
	}
	return "minion"
}

// roleMemory is what each role's machine gets, in MiB, unless --memory
// says otherwise: Kubernetes' control plane and a minion's runtimes need
// more than an etcd member.
var roleMemory = map[string]int{"etcd": 768, "master": 2048, "minion": 1536}

func orWaiting(s string) string {
	if s == "" {
		return "waiting"
	}
	return s
}
