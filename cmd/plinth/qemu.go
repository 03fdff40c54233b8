package main

import (
	"context"
	"encoding/json"
	"errors"
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
	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/internal/fsutil"
	"github.com/plinth-dev/plinth/lab"
	"github.com/plinth-dev/plinth/lab/qemu"
	"github.com/plinth-dev/plinth/manifest"
	"github.com/plinth-dev/plinth/profiles"
)

func newQemuCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "qemu", Short: "Run a site's machines as QEMU VMs on this host (a test lab)"}
	var artifacts, logDir string
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
--log-dir.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return qemuUp(cmd.Context(), g, args[0], artifacts, logDir, memory, cpus, untilReady, timeout, stall)
		},
	}
	up.Flags().StringVar(&artifacts, "artifacts", "artifacts", "artifacts directory")
	up.Flags().StringVar(&logDir, "log-dir", "build/lab", "where VM consoles and the server log go")
	up.Flags().IntVar(&memory, "memory", 0, "MiB of RAM per machine (default: by role, etcd 768, master 2048, minion 1536, others 1024)")
	up.Flags().IntVar(&cpus, "cpus", 0, "vCPUs per machine (default: by role, master 2, others 1)")
	up.Flags().BoolVar(&untilReady, "until-ready", false, "stop everything once all machines are ready")
	up.Flags().DurationVar(&stall, "stall", 10*time.Minute, "give up when a machine not yet ready shows nothing new (boot stage, agent message, unit state) for this long")
	up.Flags().DurationVar(&timeout, "timeout", 0, "give up when machines are not all ready by then, progressing or not (0: no limit)")
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
	var logsDir string
	var fresh time.Duration
	logs := &cobra.Command{
		Use:   "logs MACHINE UNIT",
		Short: "Print a unit's journal from a machine of the running lab (plinth logs, inside the lab's network)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			info, err := readLabInfo(logsDir)
			if err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			c := exec.CommandContext(cmd.Context(), "ip", "netns", "exec", info.Netns, self, "logs",
				"--server", info.Server, "--fresh", fresh.String(), args[0], args[1])
			c.Stdout, c.Stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
			if err := c.Run(); err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					return exitError(ee.ExitCode())
				}
				return err
			}
			return nil
		},
	}
	logs.Flags().StringVar(&logsDir, "log-dir", "build/lab", "the --log-dir of the running qemu up")
	logs.Flags().DurationVar(&fresh, "fresh", 45*time.Second, "ask the machine for its journal now and wait this long for it (0: the last one it sent)")
	c.AddCommand(up, down, logs)
	return c
}

// labInfo is what plinth qemu logs needs of a running lab: where its
// boot server is. qemu up writes it into its log directory.
type labInfo struct {
	Netns  string `json:"netns"`
	Server string `json:"server"`
}

const labInfoFile = "lab.json"

func writeLabInfo(logDir string, info labInfo) error {
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(logDir, labInfoFile), b, 0o644)
}

func readLabInfo(logDir string) (labInfo, error) {
	var info labInfo
	b, err := os.ReadFile(filepath.Join(logDir, labInfoFile))
	if errors.Is(err, os.ErrNotExist) {
		return info, fmt.Errorf("no lab is running with --log-dir %s (no %s there)", logDir, labInfoFile)
	}
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("%s: %w", filepath.Join(logDir, labInfoFile), err)
	}
	return info, nil
}

func qemuUp(ctx context.Context, g *globals, siteDir, artifacts, logDir string, memory, cpus int, untilReady bool, timeout, stall time.Duration) error {
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
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	w := &labWatch{lab: l, self: self, server: server, logDir: logDir, start: start, progress: lab.NewProgress(stall), readyAt: map[string]time.Duration{}}
	if err := writeLabInfo(logDir, labInfo{Netns: l.Name(), Server: server}); err != nil {
		return err
	}
	defer os.Remove(filepath.Join(logDir, labInfoFile))
	var booted []string
	for _, group := range groups {
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
			mem, n := machineSize(m.Role, memory, cpus)
			if _, err := qemu.Start(ctx, nil, qemu.Config{Name: m.Name, Memory: mem, CPUs: n, Boot: "n", Wrap: l.Wrap(), LogDir: logDir,
				NICs: []qemu.NIC{{MAC: m.MAC, Netdev: netdev}}}); err != nil {
				return err
			}
			booted = append(booted, m.Name)
		}
		fmt.Printf("lab %s: %d of the site's machines netbooting (%s); consoles in %s; a unit's journal: plinth qemu logs MACHINE UNIT\n",
			l.Name(), len(booted), qemu.Accel(ctx), logDir)
		if err := w.untilReady(ctx, booted); err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			if errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("machines not ready after --timeout %s: see %s", timeout, logDir)
			}
			return err
		}
	}
	fmt.Printf("all %d machines ready after %.0fs\n", len(booted), time.Since(start).Seconds())
	if untilReady {
		return nil
	}
	<-ctx.Done()
	return nil
}

// labWatch follows a lab's machines through the boot server.
type labWatch struct {
	lab          *lab.Lab
	self, server string
	logDir       string
	start        time.Time
	progress     *lab.Progress
	readyAt      map[string]time.Duration // since start
	last         string
}

// untilReady polls the boot server until every machine in names is
// ready, printing their states whenever they change. It fails when a
// machine shows nothing new for the stall time, after saving the journals
// it sent into the log directory.
func (w *labWatch) untilReady(ctx context.Context, names []string) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(3 * time.Second):
		}
		b, err := w.lab.Get(ctx, w.self, w.server+api.PathMachines)
		if err != nil {
			continue
		}
		var list []bootserver.MachineStatus
		if json.Unmarshal(b, &list) != nil {
			continue
		}
		now := time.Now()
		byName := map[string]bootserver.MachineStatus{}
		for _, st := range list {
			byName[st.Name] = st
		}
		var waiting []string
		var sb strings.Builder
		tw := tabwriter.NewWriter(&sb, 2, 4, 2, ' ', 0)
		for _, n := range names {
			st := byName[n]
			if st.State == api.StageReady {
				if _, ok := w.readyAt[n]; !ok {
					w.readyAt[n] = now.Sub(w.start)
				}
			} else {
				waiting = append(waiting, n)
			}
			event, _, _ := strings.Cut(st.LastEvent, "\n") // a health check's report can run to many lines
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", n, st.Role, st.IP, orWaiting(st.State), event)
		}
		tw.Flush()
		if s := sb.String(); s != w.last {
			fmt.Printf("[%4.0fs]\n%s", now.Sub(w.start).Seconds(), s)
			w.last = s
		}
		if len(waiting) == 0 {
			for _, n := range names {
				fmt.Printf("  %s ready %.0fs after the lab started\n", n, w.readyAt[n].Seconds())
			}
			return nil
		}
		if stalled := w.progress.Observe(now, waiting, list); len(stalled) > 0 {
			var msgs []string
			for _, n := range stalled {
				st := byName[n]
				saved := w.saveJournals(ctx, st)
				msg := fmt.Sprintf("%s (%s) showed nothing new for %s; last: %s", n, orWaiting(st.State), w.progress.Stall, orWaiting(st.LastEvent))
				if len(saved) > 0 {
					msg += "; journals: " + strings.Join(saved, " ")
				}
				msgs = append(msgs, msg)
			}
			return fmt.Errorf("machines stalled (consoles in %s):\n  %s", w.logDir, strings.Join(msgs, "\n  "))
		}
	}
}

// saveJournals writes each journal a machine sent into the log directory
// and returns the files written.
func (w *labWatch) saveJournals(ctx context.Context, st bootserver.MachineStatus) []string {
	var saved []string
	for _, u := range st.Journals {
		b, err := w.lab.Get(ctx, w.self, w.server+api.LogPath(st.Name, u))
		if err != nil {
			continue
		}
		p := filepath.Join(w.logDir, st.Name+"."+u+".log")
		if fsutil.WriteFileAtomic(p, b, 0o644) == nil {
			saved = append(saved, p)
		}
	}
	return saved
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

// roleCPUs is each role's vCPUs (default 1). QEMU's TCG runs each vCPU on
// a host thread of its own, so a master with two uses both cores of a
// small host while its API server bootstraps, when the etcd member is idle
// and the minion has not started.
var roleCPUs = map[string]int{"master": 2}

// machineSize is the memory (MiB) and vCPUs a role's machine gets;
// memory or cpus > 0 override the role's.
func machineSize(role string, memory, cpus int) (int, int) {
	mem := memory
	if mem == 0 {
		mem = roleMemory[role]
	}
	if mem == 0 {
		mem = 1024
	}
	if cpus > 0 {
		return mem, cpus
	}
	return mem, max(roleCPUs[role], 1)
}

func orWaiting(s string) string {
	if s == "" {
		return "waiting"
	}
	return s
}
