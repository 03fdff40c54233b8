// Package agent is the readiness agent: it runs on the machine after the
// image's init reached multi-user.target, checks that the machine is what
// plinth promised (an immutable squashfs root under a writable overlay, the
// profile's host name, the role's services running) and reports once, on
// the console and to the boot server.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/initramfs/firstboot"
	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/initramfs/stage1/events"
	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// System is what the agent reads from the machine; tests fake it.
type System interface {
	ReadFile(path string) ([]byte, error)
	Hostname() (string, error)
	// ProbeWrite creates and removes a file in dir.
	ProbeWrite(dir string) error
	// Units reports the state of each named unit (systemd's ActiveState,
	// "unknown" when it cannot say) and how often systemd restarted it.
	Units(ctx context.Context, names []string) map[string]UnitState
	// Get fetches url (https with the given CA and client certificate
	// files, or plain http) and returns the body of a 200 answer.
	Get(ctx context.Context, url, ca, cert, key string) (string, error)
	// Journal is the last lines a unit logged, "" when there are none.
	Journal(ctx context.Context, unit string, lines int) string
	// FullJournal is what a unit logged in this boot, with timestamps,
	// for an operator to read (plinth logs).
	FullJournal(ctx context.Context, unit string) []byte
	// PinAPI keeps the API pool the boot server named in the hosts file
	// (pin.go).
	PinAPI(pool api.APIPool, machine string) error
	// PreferLiveAPI puts the pinned API servers that accept connections
	// on port first (pin.go).
	PreferLiveAPI(ctx context.Context, port int) (string, error)
}

// UnitState is one unit as systemd sees it.
type UnitState struct {
	State    string // ActiveState: active, activating, failed, ...
	Restarts int    // NRestarts: automatic restarts since the unit was started
	Status   string // StatusText: what the unit's process last said of itself (sd_notify STATUS=)
}

// Report is what the agent found.
type Report struct {
	Host     string
	Role     string
	Problems []string
	Services map[string]string // unit → state
	// Listen are the ports listened on beyond loopback ("tcp/2379"), and
	// Unexpected those of them the role does not account for.
	Listen, Unexpected []string
	// Logs are the last lines of each unit that is not up, so that the
	// status page says why without a shell on the machine.
	Logs map[string]string
	// Restarts counts each unit's automatic restarts (only those > 0).
	Restarts map[string]int
	// State says where the role's state lives: the state disk step's
	// message, or that it is in RAM and lost at every reboot.
	State string
	// APIPool is the API pool this node has pinned in /etc/hosts
	// ("10.77.0.21 10.77.0.22"), "" when none.
	APIPool string
	// Load is the 1-minute load average and Memory the memory available
	// of the total ("412/1987 MiB"): what a slow machine is short of.
	Load, Memory string
}

// Ready reports whether nothing is wrong.
func (r *Report) Ready() bool { return len(r.Problems) == 0 }

// Line is the one console line the agent prints; QEMU tests and the boot
// server's status page match its ready form exactly.
func (r *Report) Line() string {
	if r.Ready() {
		return fmt.Sprintf("plinth-agent: ready host=%s role=%s root=overlay lower=ro upper=rw", r.Host, r.Role)
	}
	return fmt.Sprintf("plinth-agent: NOT READY host=%s role=%s: %s", r.Host, r.Role, strings.Join(r.Problems, "; "))
}

// Check examines the machine. The config is nil when it could not be read.
func Check(ctx context.Context, sys System) (*Report, *node.Config) {
	r := &Report{Role: "none", Services: map[string]string{}, Logs: map[string]string{}, Restarts: map[string]int{}}
	host, err := sys.Hostname()
	if err != nil {
		r.Problems = append(r.Problems, "host name: "+err.Error())
	}
	r.Host = host
	var cfg *node.Config
	if b, err := sys.ReadFile(role.ConfigPath); err != nil {
		r.Problems = append(r.Problems, "no profile: "+err.Error())
	} else if cfg, err = node.Decode(b); err != nil {
		r.Problems = append(r.Problems, role.ConfigPath+": "+err.Error())
		cfg = nil
	} else {
		if cfg.Role != "" {
			r.Role = cfg.Role
		}
		if host != cfg.Hostname {
			r.Problems = append(r.Problems, fmt.Sprintf("host name is %q, the profile says %q", host, cfg.Hostname))
		}
	}
	if b, err := sys.ReadFile("/proc/self/mountinfo"); err != nil {
		r.Problems = append(r.Problems, err.Error())
	} else if ms, err := ParseMountinfo(strings.NewReader(string(b))); err != nil {
		r.Problems = append(r.Problems, err.Error())
	} else {
		r.Problems = append(r.Problems, CheckMounts(ms)...)
	}
	if err := sys.ProbeWrite("/"); err != nil {
		r.Problems = append(r.Problems, "/ is not writable: "+err.Error())
	}
	if b, err := sys.ReadFile(HostsFile); err == nil {
		r.APIPool = strings.Join(PinnedAddrs(b), " ")
	}
	if cfg != nil {
		msg, refused := stateOf(sys, cfg)
		if r.State = msg; refused {
			r.Problems = append(r.Problems, msg)
		}
	}
	services, err := readServices(sys)
	if err != nil {
		r.Problems = append(r.Problems, err.Error())
	}
	// The agent starts early, to report while the machine boots; ready
	// also means systemd reached its default target (one call with the
	// role's units: a process per check counts on a slow machine).
	states := sys.Units(ctx, append([]string{bootTarget}, services...))
	if st := states[bootTarget].State; st != "active" {
		r.Problems = append(r.Problems, "boot not finished ("+bootTarget+" is "+orUnknown(st)+")")
	}
	for _, s := range services {
		u, ok := states[s]
		if !ok {
			u.State = "unknown"
		}
		r.Services[s] = u.State
		if u.Restarts > 0 {
			r.Restarts[s] = u.Restarts
		}
		if u.State != "active" {
			p := s + " is " + u.State
			if u.Status != "" {
				// A long step's progress (first boot's image import).
				p += " (" + u.Status + ")"
			}
			r.Problems = append(r.Problems, p)
			r.Logs[s] = sys.Journal(ctx, s, logLines)
		}
	}
	if len(r.Problems) == 0 && cfg != nil {
		problems, unit := probeRole(ctx, sys, cfg)
		if len(problems) > 0 {
			r.Problems = append(r.Problems, problems...)
			r.Logs[unit] = sys.Journal(ctx, unit, logLines)
		}
	}
	r.Load, r.Memory = loadAndMemory(sys)
	r.Listen, err = Listening(sys)
	if err != nil {
		r.Problems = append(r.Problems, err.Error())
	}
	allowed := roles.Get(r.Role).ListenPorts(cfg)
	for _, l := range r.Listen {
		if !slices.Contains(allowed, l) {
			r.Unexpected = append(r.Unexpected, l)
		}
	}
	return r, cfg
}

// stateOf says where a role that keeps state keeps it: what the state
// disk step reported (refused: the role cannot start), or that it lives in
// RAM.
func stateOf(sys System, cfg *node.Config) (msg string, refused bool) {
	dirs := roles.Get(cfg.Role).State
	if len(dirs) == 0 {
		return "", false
	}
	if cfg.State == nil {
		return "no state disk: " + strings.Join(dirs, ", ") + " in RAM, lost at every reboot", false
	}
	b, err := sys.ReadFile(role.StateStatusFile)
	if err != nil {
		return "state disk " + cfg.State.Disk + ": not prepared yet", false
	}
	var st struct{ Status, Message string }
	if err := json.Unmarshal(b, &st); err != nil {
		return role.StateStatusFile + ": " + err.Error(), true
	}
	return st.Message, st.Status == "refused"
}

// bootTarget is the unit whose activation ends systemd's boot.
const bootTarget = "default.target"

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// logLines is how much of a failing unit's journal a report carries.
const logLines = 4

// fields are the report as an event's fields: each service's state, the
// ports listened on and any the role does not account for.
func (r *Report) fields() map[string]string {
	f := map[string]string{}
	for k, v := range r.Services {
		f[k] = v
	}
	for u, l := range r.Logs {
		if l != "" {
			f["log "+u] = l
		}
	}
	for u, n := range r.Restarts {
		f["restarts "+u] = strconv.Itoa(n)
	}
	if r.Load != "" {
		f["load"] = r.Load
	}
	if r.Memory != "" {
		f["memory"] = r.Memory
	}
	if r.State != "" {
		f["state"] = r.State
	}
	if r.APIPool != "" {
		f["api_pool"] = r.APIPool
	}
	f["listen"] = strings.Join(r.Listen, " ")
	if len(r.Unexpected) > 0 {
		f["unexpected"] = strings.Join(r.Unexpected, " ")
	}
	return f
}

// readServices reads role.ServicesPath; none is fine (role "none").
func readServices(sys System) ([]string, error) {
	b, err := sys.ReadFile(role.ServicesPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	s := strings.Fields(string(b))
	sort.Strings(s)
	return s, nil
}

// Run checks the machine once, prints the line to out and posts the
// report to the boot server named by the profile, if any. It returns the
// process's exit status: 1 when not ready.
func Run(ctx context.Context, sys System, out io.Writer, client events.Poster) int {
	r, cfg := Check(ctx, sys)
	fmt.Fprintln(out, r.Line())
	rep := reporter{sys: sys, out: out, client: client}
	rep.post(ctx, cfg, r, stageOf(r), r.Line())
	if !r.Ready() {
		return 1
	}
	return 0
}

func stageOf(r *Report) string {
	if r.Ready() {
		return api.StageReady
	}
	return api.StageError
}

// reporter posts reports to the profile's boot server and sends it the
// journals it asks for, and those of units that are down or slow.
type reporter struct {
	sys    System
	out    io.Writer
	client events.Poster
	// JournalEvery is the least time between two unasked uploads of one
	// unit's journal; 0 uploads with every report.
	journalEvery time.Duration
	sent         map[string]time.Time // unit → last unasked upload
}

// post sends one report as an event, then the journals: those the reply
// asks for, and those of the units the report says are down or slow.
func (p *reporter) post(ctx context.Context, cfg *node.Config, r *Report, stage, msg string) {
	if cfg == nil || cfg.Cluster == nil || cfg.Cluster.BootServer == "" {
		return
	}
	c, err := firstboot.MachinePoster(cfg, p.client)
	if err != nil {
		fmt.Fprintf(p.out, "plinth-agent: %v\n", err)
	}
	reply, err := c.Report(ctx, api.Event{Stage: stage, Message: msg, Time: time.Now().UTC(), Fields: r.fields()})
	if err != nil {
		fmt.Fprintf(p.out, "plinth-agent: report to %s: %v\n", cfg.Cluster.BootServer, err)
		return
	}
	if reply.API != nil {
		if err := p.sys.PinAPI(*reply.API, cfg.Machine); err != nil {
			fmt.Fprintf(p.out, "plinth-agent: API pool: %v\n", err)
		}
	}
	units := map[string]bool{}
	for _, u := range reply.Logs {
		if u, ok := api.UnitName(u); ok {
			units[u] = true
		}
	}
	now := time.Now()
	for u := range r.Logs {
		if p.sent == nil {
			p.sent = map[string]time.Time{}
		}
		if now.Sub(p.sent[u]) >= p.journalEvery {
			units[u] = true
			p.sent[u] = now
		}
	}
	for _, u := range slices.Sorted(maps.Keys(units)) {
		if err := c.Journal(ctx, u, p.sys.FullJournal(ctx, u)); err != nil {
			fmt.Fprintf(p.out, "plinth-agent: %v\n", err)
		}
	}
}

// flapChecks is how many checks in a row must fail before a machine that
// was ready is reported not ready.
const flapChecks = 3

// WatchOptions pace Watch.
type WatchOptions struct {
	// Wait is how long the role's services get to come up before the
	// machine is reported not ready (it may still become ready later).
	Wait time.Duration
	// Every is the pause between checks.
	Every time.Duration
	// Heartbeat is how often an unchanged state is reported again, so
	// the boot server can tell a machine that went away (and can ask it
	// for journals).
	Heartbeat time.Duration
	// JournalEvery is the least time between two uploads of the journal
	// of a unit that is down or slow, unless the server asks for it.
	JournalEvery time.Duration
}

// Watch checks the machine until ctx ends. While the role's services come
// up it prints (and posts, stage "services") what it waits for, each time
// that changes, and posts it again every opts.Heartbeat; then it prints
// the ready (or, after opts.Wait, NOT READY) line, posts it, and from then
// on reports every change at once and the unchanged state every
// opts.Heartbeat.
func Watch(ctx context.Context, sys System, out io.Writer, client events.Poster, opts WatchOptions) {
	deadline := time.Now().Add(opts.Wait)
	rep := reporter{sys: sys, out: out, client: client, journalEvery: opts.JournalEvery}
	var last, waiting string
	var lastPost time.Time
	settled, failures := false, 0
	for {
		r, cfg := Check(ctx, sys)
		line := r.Line()
		switch {
		case !settled && !r.Ready() && time.Now().Before(deadline):
			w := fmt.Sprintf("plinth-agent: waiting host=%s role=%s: %s", r.Host, r.Role, strings.Join(r.Problems, "; "))
			if w != waiting {
				fmt.Fprintln(out, w)
			}
			if w != waiting || time.Since(lastPost) >= opts.Heartbeat {
				rep.post(ctx, cfg, r, api.StageServices, w)
				waiting, lastPost = w, time.Now()
			}
		case settled && !r.Ready() && strings.HasPrefix(last, "plinth-agent: ready") && failures+1 < flapChecks:
			// One slow answer on a busy machine is not an outage: a
			// ready machine is reported down after flapChecks checks
			// in a row say so.
			failures++
		default:
			settled = true
			if r.Ready() {
				failures = 0
			}
			if line != last || time.Since(lastPost) >= opts.Heartbeat {
				if line != last {
					fmt.Fprintln(out, line)
				}
				rep.post(ctx, cfg, r, stageOf(r), line)
				last, lastPost = line, time.Now()
			}
		}
		if port := apiPort(cfg); port != 0 {
			if did, err := sys.PreferLiveAPI(ctx, port); err != nil && !errors.Is(err, fs.ErrNotExist) {
				fmt.Fprintf(out, "plinth-agent: API pool: %v\n", err)
			} else if did != "" {
				fmt.Fprintf(out, "plinth-agent: API pool: %s\n", did)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(opts.Every):
		}
	}
}

// apiPort is the port of the API servers a node with cfg pins, 0 when it
// pins none.
func apiPort(cfg *node.Config) int {
	if cfg == nil || cfg.Cluster == nil || cfg.Cluster.APIName == "" {
		return 0
	}
	return roles.APIPort(cfg)
}

// Main runs the agent on this machine: plinth-agent [STEP ARGS...], where
// a step is one of package firstboot's, run by the roles' units.
func Main() int {
	if len(os.Args) > 1 {
		return firstboot.Main(os.Args[1], os.Args[2:], os.Stderr)
	}
	Watch(context.Background(), OS{}, os.Stdout, events.Poster{Timeout: 10 * time.Second},
		WatchOptions{Wait: 15 * time.Minute, Every: 5 * time.Second, Heartbeat: 30 * time.Second, JournalEvery: time.Minute})
	return 0
}

// OS is the real machine.
type OS struct{}

var _ System = OS{}

// ReadFile reads a file.
func (OS) ReadFile(p string) ([]byte, error) { return os.ReadFile(p) }

// Hostname is the kernel's host name.
func (OS) Hostname() (string, error) { return os.Hostname() }

// ProbeWrite creates, writes and removes a file in dir.
func (OS) ProbeWrite(dir string) error {
	f, err := os.CreateTemp(dir, ".plinth-agent-probe-*")
	if err != nil {
		return err
	}
	name := f.Name()
	_, err = f.WriteString("probe")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(filepath.Clean(name)); err == nil {
		err = rerr
	}
	return err
}

// Journal asks journalctl for a unit's last lines.
func (OS) Journal(ctx context.Context, unit string, lines int) string {
	out, _ := exec.CommandContext(ctx, "journalctl", "--no-pager", "-o", "cat", "-n", strconv.Itoa(lines), "-u", unit).Output()
	return strings.TrimSpace(string(out))
}

// Units asks systemctl for every unit at once: one process per check
// matters on a slow machine.
func (OS) Units(ctx context.Context, names []string) map[string]UnitState {
	args := append([]string{"show", "--property=ActiveState,NRestarts,StatusText", "--"}, names...)
	out, _ := exec.CommandContext(ctx, "systemctl", args...).Output()
	return parseShow(string(out), names)
}

// parseShow reads `systemctl show` output: one block of KEY=VALUE lines
// per unit, in the order asked, blank lines between.
func parseShow(out string, names []string) map[string]UnitState {
	states := map[string]UnitState{}
	blocks := strings.Split(strings.TrimSpace(out), "\n\n")
	if len(blocks) != len(names) {
		return states
	}
	for i, b := range blocks {
		var u UnitState
		for _, line := range strings.Split(b, "\n") {
			k, v, _ := strings.Cut(line, "=")
			switch k {
			case "ActiveState":
				u.State = v
			case "NRestarts":
				u.Restarts, _ = strconv.Atoi(v)
			case "StatusText":
				u.Status = v
			}
		}
		if u.State != "" {
			states[names[i]] = u
		}
	}
	return states
}

// FullJournal asks journalctl for what a unit logged in this boot, the
// newest lines first cut by journalctl and then by the upload's size.
func (OS) FullJournal(ctx context.Context, unit string) []byte {
	out, _ := exec.CommandContext(ctx, "journalctl", "--no-pager", "-b", "-o", "short-precise", "-n", "20000", "-u", unit).Output()
	return out
}

// loadAndMemory reads the 1-minute load average and the memory available.
func loadAndMemory(sys System) (load, memory string) {
	if b, err := sys.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			load = f[0]
		}
	}
	if b, err := sys.ReadFile("/proc/meminfo"); err == nil {
		kb := map[string]int{}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 {
				kb[strings.TrimSuffix(f[0], ":")], _ = strconv.Atoi(f[1])
			}
		}
		if kb["MemTotal"] > 0 {
			memory = fmt.Sprintf("%d/%d MiB", kb["MemAvailable"]/1024, kb["MemTotal"]/1024)
		}
	}
	return load, memory
}
