package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/plinth-dev/plinth/bootserver"
	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/internal/fsutil"
	"github.com/plinth-dev/plinth/lab/qemu"
	"github.com/plinth-dev/plinth/manifest"
	"github.com/plinth-dev/plinth/profiles"
	"github.com/plinth-dev/plinth/roles"
)

// Config is a lab to bring up: a site's machines netbooting its built
// images.
type Config struct {
	Site      string // the site directory
	Artifacts string // where the site's images are built
	State     string // plinth serve's --state ("" : its default)
	LogDir    string // consoles, the server's log, saved journals
	// Disks is where machines' state disks are kept from run to run
	// (MACHINE.raw; "": LogDir/disks, see DisksDir).
	Disks string
	// Plinth is the plinth binary that serves the lab ("": this program).
	Plinth string
	// Name names the lab's network namespace ("lab" when empty).
	Name string
	// Memory (MiB) and CPUs override every role's (0: the role's).
	Memory, CPUs int
	// Stall is how long a machine not yet ready may show nothing new (boot
	// stage, agent message, unit state) before the wait fails.
	Stall time.Duration
	// Out receives the machines' states as they change (nil: discarded).
	Out io.Writer
	Log *slog.Logger
}

// Cluster is a running lab: the network, the boot server and the VMs.
type Cluster struct {
	Lab    *Lab
	Server string // the boot server's URL inside the lab
	cfg    Config
	start  time.Time
	served *Proc // the boot server (plinth serve)

	// startVM starts a machine's QEMU: qemu.Start, a fake in unit tests.
	startVM func(context.Context, qemu.Config) (machineVM, error)

	mu      sync.Mutex
	vms     map[string]machineVM     // the machine's latest QEMU
	taps    map[string]string        // the machine's netdev, kept for a restart
	lives   map[string]int           // how many QEMUs the machine has had
	disks   map[string]*Disk         // machines with a state disk
	readyAt map[string]time.Duration // since the machine's QEMU start
	upAt    map[string]time.Duration // since the lab started
	last    string
}

// machineVM is what a Cluster needs of a machine's QEMU.
type machineVM interface {
	Exited() bool
	Close() error
	Started() time.Time
	Uptime() time.Duration
}

var _ machineVM = (*qemu.VM)(nil)

func startQEMU(ctx context.Context, cfg qemu.Config) (machineVM, error) {
	return qemu.Start(ctx, nil, cfg)
}

// InfoFile is what Up writes into the log directory while the lab runs:
// where its boot server is, for `plinth qemu logs`.
const InfoFile = "lab.json"

// Info is the content of InfoFile.
type Info struct {
	Netns  string `json:"netns"`
	Server string `json:"server"`
}

// ReadInfo reads the InfoFile of a running lab's log directory.
func ReadInfo(logDir string) (Info, error) {
	var info Info
	p := filepath.Join(logDir, InfoFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return info, fmt.Errorf("no lab is running with log directory %s (no %s there)", logDir, InfoFile)
	}
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("%s: %w", p, err)
	}
	return info, nil
}

// Up makes the lab's network, starts plinth serve in it as the site's DHCP
// and boot server, and netboots every machine of the site whose image is
// built, group by group in the roles' boot order, each group once the one
// before is ready. It returns when all are ready, or with the error of a
// stall; the caller closes the Cluster either way (nil on early errors).
func Up(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Name == "" {
		cfg.Name = "lab"
	}
	cfg.Disks = DisksDir(cfg.LogDir, cfg.Disks)
	if cfg.Plinth == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		cfg.Plinth = self
	}
	site, err := profiles.LoadSite(cfg.Site)
	if err != nil {
		return nil, err
	}
	if site.DHCP.Mode != "server" || site.DHCP.Router == "" || site.DHCP.Netmask == "" {
		return nil, fmt.Errorf("%s: a QEMU lab needs [dhcp] mode = \"server\" with router and netmask (the boot server's address)", cfg.Site)
	}
	mask, err := netip.ParseAddr(site.DHCP.Netmask)
	if err != nil {
		return nil, fmt.Errorf("%s: [dhcp] netmask %q: %w", cfg.Site, site.DHCP.Netmask, err)
	}
	if err := os.MkdirAll(cfg.LogDir, 0o755); err != nil {
		return nil, err
	}
	var mismatched []error
	groups := BootGroups(site.Machines, func(m *profiles.Machine) bool {
		im, err := manifest.Read(filepath.Join(cfg.Artifacts, m.Image))
		if err != nil {
			cfg.Log.Warn("not booting: image not built", "machine", m.Name, "image", m.Image)
			return false
		}
		if err := profiles.CheckImageRole(m.Role, m.Image, im.Role); err != nil {
			mismatched = append(mismatched, fmt.Errorf("%s: machine %s: %w", m.File, m.Name, err))
		}
		return true
	})
	if err := errors.Join(mismatched...); err != nil {
		return nil, err // the boot server would refuse these machines
	}
	if len(groups) == 0 {
		return nil, fmt.Errorf("no machine of %s has a built image in %s", cfg.Site, cfg.Artifacts)
	}
	disks, created, reused, err := PrepareDisks(cfg.Disks, site, slices.Concat(groups...))
	if err != nil {
		return nil, err
	}
	fmt.Fprint(cfg.Out, diskReport(cfg.Disks, created, reused))
	l, err := New(ctx, cfg.Name, fmt.Sprintf("%s/%d", site.DHCP.Router, maskBits(mask)), cfg.Log)
	if err != nil {
		return nil, err
	}
	c := newCluster(cfg)
	c.Lab, c.Server, c.disks = l, "http://"+l.Server+":8080", disks
	if err := c.serve(ctx); err != nil {
		return c, err
	}
	for _, group := range groups {
		var names []string
		for _, m := range group {
			if err := c.boot(ctx, m, disks[m.Name]); err != nil {
				return c, err
			}
			names = append(names, m.Name)
		}
		fmt.Fprintf(cfg.Out, "lab %s: %d of the site's machines netbooting (%s); consoles in %s; a unit's journal: plinth qemu logs MACHINE UNIT\n",
			l.Name(), len(c.vms), qemu.Accel(ctx), cfg.LogDir)
		if err := c.WaitReady(ctx, names...); err != nil {
			return c, err
		}
	}
	return c, nil
}

// newCluster is a Cluster with its maps made, not yet in a lab.
func newCluster(cfg Config) *Cluster {
	return &Cluster{cfg: cfg, start: time.Now(), startVM: startQEMU,
		vms: map[string]machineVM{}, taps: map[string]string{}, lives: map[string]int{}, disks: map[string]*Disk{},
		readyAt: map[string]time.Duration{}, upAt: map[string]time.Duration{}}
}

// maskBits is the prefix length of a dotted netmask.
func maskBits(mask netip.Addr) int {
	n := 0
	for _, b := range mask.AsSlice() {
		for ; b > 0; b <<= 1 {
			n++
		}
	}
	return n
}

// serve starts plinth serve in the lab and waits until it answers.
func (c *Cluster) serve(ctx context.Context) error {
	// Appended to: a restarted server's log follows the one before.
	logf, err := os.OpenFile(filepath.Join(c.cfg.LogDir, "serve.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	// A lab makes its site's CA on its first start (--init-ca, logged as a
	// new CA), in the lab's own state directory.
	args := []string{"serve", "--init-ca", "--site", c.cfg.Site, "--artifacts", c.cfg.Artifacts,
		"--listen", c.Lab.Server + ":8080", "--server-ip", c.Lab.Server, "--dhcp-interface", "br0", "--dns", c.Lab.Server + ":53"}
	if c.cfg.State != "" {
		args = append(args, "--state", c.cfg.State)
	}
	p, err := c.Lab.StartProc(ctx, logf, c.cfg.Plinth, args...)
	if err != nil {
		logf.Close()
		return err
	}
	c.served = p
	// The file stays open for the server; the lab's Close ends it.
	for {
		if _, err := c.Lab.Get(ctx, c.Server+api.PathMachines); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("boot server did not answer (log: %s): %w", logf.Name(), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	b, err := json.Marshal(Info{Netns: c.Lab.Name(), Server: c.Server})
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(c.cfg.LogDir, InfoFile), b, 0o644)
}

// boot starts one machine's VM, netbooting from the lab, with its state
// disk d (nil: none) and the tap it had before, if any. The VM replaces
// any earlier one of the machine, and the machine's ready times restart.
func (c *Cluster) boot(ctx context.Context, m *profiles.Machine, d *Disk) error {
	// The KVM probe (run by the first Start) boots a built image's kernel:
	// a KVM that runs firmware but hangs in the kernel is not used.
	if qemu.ProbeKernel == "" {
		qemu.ProbeKernel = filepath.Join(c.cfg.Artifacts, m.Image, manifest.KernelFile)
	}
	c.mu.Lock()
	netdev := c.taps[m.Name]
	c.mu.Unlock()
	if netdev == "" {
		var err error
		if netdev, err = c.Lab.AddTap(ctx); err != nil {
			return err
		}
		c.mu.Lock()
		c.taps[m.Name] = netdev
		c.mu.Unlock()
	}
	mem, cpus := roles.Get(m.Role).MachineSize(c.cfg.Memory, c.cfg.CPUs)
	qc := qemu.Config{Name: m.Name, Memory: mem, CPUs: cpus, Boot: "n", Wrap: c.wrap(), LogDir: c.cfg.LogDir,
		NICs: []qemu.NIC{{MAC: m.MAC, Netdev: netdev}}}
	if d != nil {
		qc.Drives = []qemu.Drive{d.Drive}
	}
	c.mu.Lock()
	life := c.lives[m.Name]
	c.mu.Unlock()
	if life > 0 && c.cfg.LogDir != "" {
		// Keep the console of the machine's life before (a power cut's
		// last words); the new QEMU starts a new one.
		console := filepath.Join(c.cfg.LogDir, m.Name+".console.log")
		if err := os.Rename(console, filepath.Join(c.cfg.LogDir, fmt.Sprintf("%s.console.%d.log", m.Name, life))); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	vm, err := c.startVM(ctx, qc)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.vms[m.Name] = vm
	c.lives[m.Name] = life + 1
	if d != nil {
		c.disks[m.Name] = d
	} else {
		delete(c.disks, m.Name)
	}
	delete(c.readyAt, m.Name)
	delete(c.upAt, m.Name)
	c.mu.Unlock()
	return nil
}

// wrap is the prefix QEMU runs under: inside the lab's network.
func (c *Cluster) wrap() []string {
	if c.Lab == nil {
		return nil // a unit test's cluster, whose VMs are fakes
	}
	return c.Lab.Wrap()
}

// Boot netboots the named machines of the site as it is now (one added
// while the lab runs, or one killed) and waits until they are ready.
func (c *Cluster) Boot(ctx context.Context, names ...string) error {
	if err := c.Start(ctx, names...); err != nil {
		return err
	}
	return c.WaitReady(ctx, names...)
}

// VM is the named machine's latest VM (nil before it booted).
func (c *Cluster) VM(name string) *qemu.VM {
	c.mu.Lock()
	defer c.mu.Unlock()
	vm, _ := c.vms[name].(*qemu.VM)
	return vm
}

// vm is the named machine's latest VM, a fake's too.
func (c *Cluster) vm(name string) machineVM {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.vms[name]
}

// Booted is how many machines the lab has booted.
func (c *Cluster) Booted() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.vms)
}

// ReadyAfter is how long after its latest QEMU start a machine was first
// seen ready (to the 3 s poll); false while it has not been.
func (c *Cluster) ReadyAfter(name string) (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.readyAt[name]
	return d, ok
}

// Machines is the boot server's view of every machine, by name.
func (c *Cluster) Machines(ctx context.Context) (map[string]bootserver.MachineStatus, error) {
	b, err := c.Lab.Get(ctx, c.Server+api.PathMachines)
	if err != nil {
		return nil, err
	}
	var list []bootserver.MachineStatus
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("%s: %w", api.PathMachines, err)
	}
	out := map[string]bootserver.MachineStatus{}
	for _, st := range list {
		out[st.Name] = st
	}
	return out, nil
}

// StopServer stops the boot server (SIGTERM, as a service manager would);
// the machines keep running. StartServer starts it again with the same
// site, artifacts and state.
func (c *Cluster) StopServer() error {
	if c.served == nil {
		return errors.New("the lab's boot server is not running")
	}
	err := c.served.Stop(15 * time.Second)
	c.served = nil
	return err
}

// StartServer starts the boot server again after StopServer and waits
// until it answers.
func (c *Cluster) StartServer(ctx context.Context) error {
	if c.served != nil {
		return errors.New("the lab's boot server is running")
	}
	return c.serve(ctx)
}

// Close stops the VMs and the boot server and deletes the lab's network.
func (c *Cluster) Close() error {
	os.Remove(filepath.Join(c.cfg.LogDir, InfoFile))
	return c.Lab.Close()
}

// WaitReady polls the boot server until every named machine is ready,
// writing their states to the Config's Out whenever they change. It fails
// when a machine not yet ready shows nothing new for the Config's Stall,
// after saving the journals it sent into the log directory, and when a
// machine's QEMU exits.
func (c *Cluster) WaitReady(ctx context.Context, names ...string) error {
	progress := NewProgress(c.cfg.Stall)
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("machines not ready: %w; last states:%s", ctx.Err(), c.last)
		case <-time.After(3 * time.Second):
		}
		byName, err := c.Machines(ctx)
		if err != nil {
			continue
		}
		now := time.Now()
		var waiting []string
		var list []bootserver.MachineStatus
		var sb strings.Builder
		tw := tabwriter.NewWriter(&sb, 2, 4, 2, ' ', 0)
		for _, n := range names {
			st := byName[n]
			st.Name = n
			list = append(list, st)
			vm := c.vm(n)
			if isReady(st, vm) {
				c.mu.Lock()
				if _, ok := c.readyAt[n]; !ok && vm != nil {
					c.readyAt[n] = vm.Uptime()
					c.upAt[n] = now.Sub(c.start)
				}
				c.mu.Unlock()
			} else {
				waiting = append(waiting, n)
				if vm != nil && vm.Exited() {
					return fmt.Errorf("%s: QEMU exited (console: %s)", n, filepath.Join(c.cfg.LogDir, n+".console.log"))
				}
			}
			event, _, _ := strings.Cut(st.LastEvent, "\n") // a health check's report can run to many lines
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", n, st.Role, st.IP, orWaiting(st.State), event)
		}
		tw.Flush()
		if s := sb.String(); s != c.last {
			fmt.Fprintf(c.cfg.Out, "[%4.0fs]\n%s", now.Sub(c.start).Seconds(), s)
			c.last = s
		}
		if len(waiting) == 0 {
			c.mu.Lock()
			for _, n := range names {
				fmt.Fprintf(c.cfg.Out, "  %s ready %.0fs after the lab started\n", n, c.upAt[n].Seconds())
			}
			c.mu.Unlock()
			return nil
		}
		if stalled := progress.Observe(now, waiting, list); len(stalled) > 0 {
			var msgs []string
			for _, n := range stalled {
				st := byName[n]
				st.Name = n
				saved := c.SaveJournals(ctx, st)
				fields, _ := json.Marshal(st.Fields)
				msg := fmt.Sprintf("%s (%s) showed nothing new for %s; last: %s; agent fields: %s", n, orWaiting(st.State), progress.Stall, orWaiting(st.LastEvent), fields)
				if len(saved) > 0 {
					msg += "; journals: " + strings.Join(saved, " ")
				}
				msgs = append(msgs, msg)
			}
			return fmt.Errorf("machines stalled (consoles in %s):\n  %s", c.cfg.LogDir, strings.Join(msgs, "\n  "))
		}
	}
}

// SaveJournals writes each journal a machine sent into the log directory
// and returns the files written.
func (c *Cluster) SaveJournals(ctx context.Context, st bootserver.MachineStatus) []string {
	var saved []string
	for _, u := range st.Journals {
		b, err := c.Lab.Get(ctx, c.Server+api.LogPath(st.Name, u))
		if err != nil {
			continue
		}
		p := filepath.Join(c.cfg.LogDir, st.Name+"."+u+".log")
		if fsutil.WriteFileAtomic(p, b, 0o644) == nil {
			saved = append(saved, p)
		}
	}
	return saved
}

// isReady says whether the server shows the machine ready in the life of
// its VM vm: a restarted machine's ready from before is stale (its new
// boot shows first when it asks for its boot script).
func isReady(st bootserver.MachineStatus, vm machineVM) bool {
	return st.State == api.StageReady && (vm == nil || !st.LastSeen.Before(vm.Started()))
}

func orWaiting(s string) string {
	if s == "" {
		return "waiting"
	}
	return s
}

// BootGroups orders the machines to boot (those built says can) into the
// groups that start one after the other, by their roles' boot group, in
// the site's order within each. A rack comes up this way: etcd members,
// then masters, then minions and anything else. All at once works, but on
// a few host cores under TCG the later machines' boots starve etcd's
// heartbeats.
func BootGroups(machines []*profiles.Machine, built func(*profiles.Machine) bool) [][]*profiles.Machine {
	var groups [][]*profiles.Machine
	for g := roles.GroupStore; g <= roles.GroupWorkers; g++ {
		var group []*profiles.Machine
		for _, m := range machines {
			if roles.Get(m.Role).Group == g && built(m) {
				group = append(group, m)
			}
		}
		if len(group) > 0 {
			groups = append(groups, group)
		}
	}
	return groups
}
