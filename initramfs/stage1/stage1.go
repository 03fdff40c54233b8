package stage1

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/initramfs/drivers"
	"github.com/plinth-dev/plinth/initramfs/keys"
	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/initramfs/stage1/events"
	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// Paths stage 1 reads in the initramfs (written by builder/compose).
const (
	ModulesList     = "/etc/plinth/modules"
	CmdlineDefaults = "/etc/plinth/cmdline"
	EmbeddedRootfs  = "/plinth/rootfs.squashfs"
	EmbeddedDigest  = "/plinth/rootfs.digest"
	EmbeddedConfig  = "/plinth/config.json"
)

// Defaults of the run-time paths.
const (
	DefaultRunDir  = "/run/plinth" // tmpfs: downloaded rootfs, lower and upper dirs
	DefaultNewRoot = "/newroot"
)

// Mounter makes the mounts of stage 1 and hands over to the image.
type Mounter interface {
	// MountBasics mounts /proc, /sys, /dev, /dev/pts and /run.
	MountBasics() error
	// MountRoot loop-mounts squashfs read-only under runDir and mounts an
	// overlay of it and a tmpfs at newRoot.
	MountRoot(squashfs, runDir, newRoot string) error
	// SwitchRoot makes newRoot / and execs init; it returns only on failure.
	SwitchRoot(newRoot, init string) error
}

// ModuleLoader inserts a kernel module file with parameters; one already
// loaded is fine.
type ModuleLoader interface {
	LoadModule(path, params string) error
}

// moduleParams are the parameters stage 1 loads a module with, by module
// name. bonding: with its default max_bonds=1 the kernel makes a bond0 of
// its own (round-robin, a random MAC) the moment the module loads, and
// networkd then uses that one "without changing its parameters" — the
// profile's mode and MAC never apply.
var moduleParams = map[string]string{"bonding": "max_bonds=0"}

// loadModule loads a module file with its moduleParams.
func (s *Stage1) loadModule(path string) error {
	name := filepath.Base(path)
	if i := strings.Index(name, ".ko"); i > 0 {
		name = name[:i]
	}
	return s.Modules.LoadModule(path, moduleParams[name])
}

// Network brings up the boot NIC (by name or MAC, "" for the first with a
// link) and configures it by DHCP.
type Network interface {
	Up(ctx context.Context, iface string) (*NetInfo, error)
}

// Kernel is what stage 1 reads from the running system.
type Kernel interface {
	Cmdline() (string, error)
	// Console opens the console once /dev is mounted.
	Console() (io.Writer, error)
	// Self returns the running executable (the busybox holding the agent).
	Self() ([]byte, error)
	// Reboot restarts the machine; it returns only on failure.
	Reboot() error
}

// Rescuer runs a shell on the console until it exits.
type Rescuer interface {
	Shell(ctx context.Context) error
}

// Stage1 is one run of /init.
type Stage1 struct {
	Mounter Mounter
	Modules ModuleLoader
	Net     Network
	Kernel  Kernel
	Rescue  Rescuer // nil: no shell in this initramfs
	Con     *Console
	Fetch   *Fetcher
	Files   fs.FS         // the initramfs (os.DirFS("/") on a machine)
	Roles   role.Registry // nil: role.Builtin()
	RunDir  string        // default DefaultRunDir
	NewRoot string        // default DefaultNewRoot
	// Retry spaces out retries of a failed network, profile or rootfs
	// phase in netboot mode; default 2s doubling to 30s.
	Retry Backoff

	Params Params
	NetCfg *NetInfo
	Config *node.Config
	Events *events.Queue // set once the boot server is known

	rootfs  string
	secure  *Fetcher       // the profile's: over Params.TLS when set (secure.go)
	medium  string         // where the boot medium is mounted (medium.go)
	drivers *drivers.Index // /etc/plinth/drivers, once read (hardware.go)
	started time.Time
}

type phase struct {
	stage string // an api.Stage*: the console tag and the event's stage
	run   func(context.Context) error
	retry bool // in netboot mode: the network or the server may recover
}

// Run performs every phase in order and, on success, does not return
// (switch_root execs the image's init). A returned error means boot
// stopped: the caller halts (PID 1 must not exit).
func (s *Stage1) Run(ctx context.Context) error {
	s.started = time.Now()
	if s.RunDir == "" {
		s.RunDir = DefaultRunDir
	}
	if s.NewRoot == "" {
		s.NewRoot = DefaultNewRoot
	}
	if s.Retry == (Backoff{}) {
		s.Retry = Backoff{Initial: 2 * time.Second, Max: 30 * time.Second}
	}
	if s.Roles == nil {
		s.Roles = role.Builtin()
	}
	if err := s.Mounter.MountBasics(); err != nil {
		err = fmt.Errorf("mount /proc /sys /dev /run: %w", err)
		s.Con.Fail(ctx, api.StageInit, "FAILED: %v", err)
		return permanent{err}
	}
	if w, err := s.Kernel.Console(); err == nil {
		s.Con.mu.Lock()
		s.Con.W = w
		s.Con.mu.Unlock()
	}
	for _, p := range []phase{
		{api.StageInit, s.params, false},
		{api.StageModules, s.modules, false},
		{api.StageNetwork, s.network, true},
		{api.StageProfile, s.profile, true},
		{api.StageRootfs, s.fetchRootfs, true},
		{api.StageMount, s.mount, false},
		{api.StageConfig, s.configure, false},
	} {
		if err := s.do(ctx, p); err != nil {
			return err
		}
	}
	s.Con.Step(ctx, api.StageSwitch, "switch_root to %s (%.1fs in stage 1)", s.Params.Init, time.Since(s.started).Seconds())
	if s.Events != nil {
		fctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		s.Events.Flush(fctx)
		cancel()
	}
	err := s.Mounter.SwitchRoot(s.NewRoot, s.Params.Init)
	if err == nil {
		err = errors.New("switch_root returned")
	}
	s.Con.Fail(ctx, api.StageSwitch, "FAILED: %v", err)
	return permanent{fmt.Errorf("[%s] %w", api.StageSwitch, err)}
}

// do runs one phase until it succeeds, retrying what may recover, with a
// rescue shell between attempts when plinth.rescue=1.
func (s *Stage1) do(ctx context.Context, p phase) error {
	for attempt := 0; ; attempt++ {
		err := p.run(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrDigest) {
			// The console line the operator (and the tests) look for.
			s.Con.Fail(ctx, p.stage, "REFUSED: %v", err)
		} else {
			s.Con.Fail(ctx, p.stage, "FAILED: %v", err)
		}
		if s.Params.Rescue && s.Rescue != nil {
			s.Con.Step(ctx, api.StageRescue, "plinth.rescue=1: shell on the console; exit it to retry [%s]", p.stage)
			if rerr := s.Rescue.Shell(ctx); rerr == nil {
				continue
			} else {
				s.Con.Step(ctx, api.StageRescue, "no shell: %v", rerr)
			}
		}
		if IsPermanent(err) || !p.retry || s.Params.Server == "" {
			return permanent{fmt.Errorf("[%s] %w", p.stage, err)}
		}
		d := s.Retry.Delay(attempt)
		s.Con.Step(ctx, p.stage, "retrying in %s (attempt %d)", d, attempt+2)
		if err := sleep(ctx, d); err != nil {
			return err
		}
	}
}

// readFile reads an absolute initramfs path from s.Files.
func (s *Stage1) readFile(p string) ([]byte, error) {
	return fs.ReadFile(s.Files, strings.TrimPrefix(p, "/"))
}

func (s *Stage1) params(ctx context.Context) error {
	cmdline, err := s.Kernel.Cmdline()
	if err != nil {
		return permanent{fmt.Errorf("read kernel command line: %w", err)}
	}
	defaults, err := s.readFile(CmdlineDefaults)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return permanent{fmt.Errorf("%s: %w", CmdlineDefaults, err)}
	}
	p, err := ParseParams(string(defaults), cmdline)
	s.Params = p // even when wrong: plinth.rescue still counts
	if err != nil {
		return permanent{err}
	}
	mode := "embedded"
	if s.onMedium() {
		mode = "root on a boot medium"
	}
	if p.Server != "" {
		mode = "netboot from " + p.Server + " as " + p.Machine
		s.Fetch.Token = p.Token
		report, err := s.secureChannel()
		if err != nil {
			return permanent{err}
		}
		s.Events = events.NewQueue(&events.Poster{URL: report + api.PathEvents, Machine: p.Machine, Client: s.secure.Client, Token: p.Token}, 64)
		s.Con.SetEvents(s.Events)
	}
	s.Con.Step(ctx, api.StageInit, "plinth stage 1 started: %s", mode)
	return nil
}

// ReadModuleList parses /etc/plinth/modules: one module file per line,
// relative to / (a leading / is tolerated), blank lines and # comments
// skipped, order kept (dependencies first).
func ReadModuleList(b []byte) ([]string, error) {
	var out []string
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p := "/" + strings.TrimPrefix(line, "/")
		if path.Clean(p) != p || !strings.HasSuffix(p, ".ko") && !strings.Contains(path.Base(p), ".ko.") {
			return nil, fmt.Errorf("%s:%d: %q is not a clean path to a .ko file", ModulesList, i+1, line)
		}
		out = append(out, p)
	}
	return out, nil
}

func (s *Stage1) modules(ctx context.Context) error {
	loaded := map[string]bool{}
	defer s.hardware(ctx, loaded)
	b, err := s.readFile(ModulesList)
	if errors.Is(err, fs.ErrNotExist) {
		s.Con.Step(ctx, api.StageModules, "none listed")
		return nil
	}
	if err != nil {
		return err
	}
	mods, err := ReadModuleList(b)
	if err != nil {
		return err
	}
	var failed, skipped []string
	for _, m := range mods {
		loaded[strings.TrimPrefix(m, "/")] = true
		// One bad module is worth a line, not a dead machine: the phase
		// that needs it fails later with its own message.
		err := s.loadModule(m)
		switch {
		case err == nil:
		case notForThisMachine(err):
			skipped = append(skipped, filepath.Base(m))
		default:
			s.Con.Fail(ctx, api.StageModules, "FAILED %s: %v", m, err)
			failed = append(failed, filepath.Base(m))
		}
	}
	msg := fmt.Sprintf("%d modules loaded", len(mods)-len(failed)-len(skipped))
	if len(skipped) > 0 {
		msg += fmt.Sprintf("; not for this machine: %s", strings.Join(skipped, ", "))
	}
	if len(failed) > 0 {
		msg = fmt.Sprintf("%d of %d modules loaded; failed: %s", len(mods)-len(failed)-len(skipped), len(mods), strings.Join(failed, ", "))
	}
	s.Con.Step(ctx, api.StageModules, "%s", msg)
	return nil
}

func (s *Stage1) network(ctx context.Context) error {
	if s.Params.Server == "" {
		return nil
	}
	start := time.Now()
	n, err := s.Net.Up(ctx, s.Params.Iface)
	if err != nil {
		return err
	}
	s.NetCfg = n
	// Events queued so far (init, modules) go out now.
	s.Events.Open()
	s.Con.Step(ctx, api.StageNetwork, "%s %s %s via dhcp (%.1fs)", n.Iface, n.MAC, n.Address, time.Since(start).Seconds())
	return nil
}

func (s *Stage1) profile(ctx context.Context) error {
	var b []byte
	var err error
	src := EmbeddedConfig
	var made *keys.Set
	if s.Params.Server != "" {
		src = s.profileBase() + api.ProfilePath(s.Params.Machine)
		var req []byte
		if made, req, err = s.makeKeys(); err != nil {
			return permanent{fmt.Errorf("keys: %w", err)}
		}
		b, err = s.secure.Post(ctx, src, req, 4<<20)
	} else if s.onMedium() {
		src, b, err = s.mediumConfig(ctx)
	} else if b, err = s.readFile(EmbeddedConfig); err != nil {
		err = permanent{err}
	}
	if err != nil {
		return fmt.Errorf("profile %s: %w", src, err)
	}
	c, err := node.Decode(b)
	if err != nil {
		if s.Params.Server == "" {
			err = permanent{err}
		}
		return fmt.Errorf("profile %s: %w", src, err)
	}
	if err := s.checkProfileCA(c); err != nil {
		return permanent{fmt.Errorf("profile %s: %w", src, err)}
	}
	if made != nil {
		if err := made.Fill(c.TLS, c.Machine); err != nil {
			return permanent{fmt.Errorf("profile %s: %w", src, err)}
		}
	}
	s.Config = c
	note := ""
	if c.Rootfs != "" && s.Params.Rootfs != "" && c.Rootfs != s.Params.Rootfs {
		note = fmt.Sprintf(" (the profile names rootfs %s; booting %s from the command line)", c.Rootfs, s.Params.Rootfs)
	}
	s.Con.Step(ctx, api.StageProfile, "machine %s host %s role %s%s", c.Machine, c.Hostname, roleName(c.Role), note)
	return nil
}

// makeKeys makes this boot's private keys (initramfs/keys) and the
// certificate requests the profile request carries.
func (s *Stage1) makeKeys() (*keys.Set, []byte, error) {
	k, err := keys.New(roles.IdentityNames())
	if err != nil {
		return nil, nil, err
	}
	req, err := k.Requests(s.Params.Machine)
	if err != nil {
		return nil, nil, err
	}
	b, err := json.Marshal(req)
	return k, b, err
}

func roleName(r string) string {
	if r == "" {
		return "none"
	}
	return r
}

func (s *Stage1) fetchRootfs(ctx context.Context) error {
	want := s.Params.Rootfs
	start := time.Now()
	if s.onMedium() {
		return s.mediumRootfs(ctx)
	}
	if s.Params.Server == "" {
		if want == "" {
			b, err := s.readFile(EmbeddedDigest)
			if err != nil {
				return permanent{fmt.Errorf("no %s on the command line and no %s: %w", api.ParamRootfs, EmbeddedDigest, err)}
			}
			want = strings.TrimSpace(string(b))
			if err := CheckDigest(want); err != nil {
				return permanent{fmt.Errorf("%s: %w", EmbeddedDigest, err)}
			}
		}
		// Verified before mounting: there is no other copy, so a mismatch
		// stops boot.
		if err := VerifyFile(s.Files, strings.TrimPrefix(EmbeddedRootfs, "/"), want); err != nil {
			return permanent{err}
		}
		s.rootfs = EmbeddedRootfs
		s.Con.Step(ctx, api.StageRootfs, "embedded %s verified (%.1fs)", want, time.Since(start).Seconds())
		return nil
	}
	if err := os.MkdirAll(s.RunDir, 0o755); err != nil {
		return permanent{err}
	}
	dst := filepath.Join(s.RunDir, "rootfs.squashfs")
	url := s.Params.Server + api.ArtifactPath(strings.TrimPrefix(want, "sha256:"))
	n, err := s.Fetch.Download(ctx, url, dst, want)
	if err != nil {
		return err // a digest mismatch is retried too: the file is gone, the server may be fixed
	}
	s.rootfs = dst
	s.Con.Step(ctx, api.StageRootfs, "%s fetched and verified, %d MB in %.1fs", want, n>>20, time.Since(start).Seconds())
	return nil
}

func (s *Stage1) mount(ctx context.Context) error {
	if err := s.Mounter.MountRoot(s.rootfs, s.RunDir, s.NewRoot); err != nil {
		return permanent{err}
	}
	s.Con.Step(ctx, api.StageMount, "squashfs read-only at %s/lower, tmpfs overlay at %s", s.RunDir, s.NewRoot)
	return nil
}

func (s *Stage1) configure(ctx context.Context) error {
	if nw := s.Config.Network; nw != nil {
		// The kernel would ask modprobe for them when networkd makes the
		// links; stage 1 loads them now from the initramfs, so the image's
		// root need not carry its kernel's modules.
		var need []string
		if len(nw.Bonds) > 0 {
			need = append(need, "bonding")
		}
		if len(nw.VLANs) > 0 {
			need = append(need, "8021q")
		}
		if len(need) > 0 {
			s.loadByName(ctx, api.StageConfig, need...)
		}
	}
	root := role.DirRoot(s.NewRoot)
	if err := Render(root, s.Config, s.NetCfg); err != nil {
		return permanent{err}
	}
	msg, err := ConfigureRole(ctx, s.Roles, root, s.Config)
	if err != nil {
		return permanent{err}
	}
	self, err := s.Kernel.Self()
	if err != nil {
		return permanent{fmt.Errorf("agent: %w", err)}
	}
	if err := InstallAgent(root, self); err != nil {
		return permanent{fmt.Errorf("agent: %w", err)}
	}
	s.Con.Step(ctx, api.StageConfig, "hostname %s, %s, agent installed", s.Config.Hostname, msg)
	return nil
}

// Halt is where a boot that stopped ends. PID 1 must not exit (the kernel
// would panic), so it repeats why boot stopped, once a minute, for whoever
// looks at the console, and after Params.Reboot reboots the machine to try
// again (a netbooted machine left halted needs a hand on it). With
// plinth.reboot=off it never returns while ctx lives.
func (s *Stage1) Halt(ctx context.Context, err error) {
	wait := s.Params.Reboot
	var at time.Time
	if wait > 0 {
		at = time.Now().Add(wait)
	}
	for {
		s.Con.mu.Lock()
		io.WriteString(s.Con.W, s.Con.last)
		fmt.Fprintf(s.Con.W, "plinth: [halt] boot stopped: %v\n", err)
		if !at.IsZero() {
			fmt.Fprintf(s.Con.W, "plinth: [halt] rebooting in %s (%s=off keeps the machine halted)\n", time.Until(at).Round(time.Second), api.ParamReboot)
		}
		s.Con.mu.Unlock()
		next := time.Minute
		if !at.IsZero() && time.Until(at) < next {
			next = time.Until(at)
		}
		if sleep(ctx, next) != nil {
			return
		}
		if !at.IsZero() && !time.Now().Before(at) {
			s.Con.mu.Lock()
			io.WriteString(s.Con.W, "plinth: [halt] rebooting\n")
			s.Con.mu.Unlock()
			rerr := s.Kernel.Reboot()
			s.Con.mu.Lock()
			fmt.Fprintf(s.Con.W, "plinth: [halt] reboot failed: %v; staying halted\n", rerr)
			s.Con.mu.Unlock()
			at = time.Time{}
		}
	}
}

// permanent marks an error that retrying cannot fix.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// IsPermanent reports whether retrying the boot cannot help.
func IsPermanent(err error) bool {
	var p permanent
	return errors.As(err, &p)
}
