package stage1

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/profiles/node"
)

// Paths stage 1 reads in the initramfs and uses at run time.
const (
	ModulesList      = "/etc/plinth/modules"
	CmdlineDefaults  = "/etc/plinth/cmdline"
	EmbeddedRootfs   = "/plinth/rootfs.squashfs"
	EmbeddedDigest   = "/plinth/rootfs.digest"
	EmbeddedConfig   = "/plinth/config.json"
	DownloadedRootfs = "/run/plinth/rootfs.squashfs"
	NewRoot          = "/newroot"
)

// System is what stage 1 needs from the kernel; the Linux implementation
// makes the system calls, tests use a fake.
type System interface {
	MountBasics() error
	Cmdline() (string, error)
	LoadModule(path string) error
	// Network brings up the boot NIC (by name or MAC, "" for the first with
	// a link) and configures it by DHCP.
	Network(ctx context.Context, iface string) (*NetInfo, error)
	// MountRoot mounts the squashfs read-only under a tmpfs overlay at newRoot.
	MountRoot(squashfs, newRoot string) error
	SwitchRoot(newRoot, init string) error
	Self() ([]byte, error) // the running binary, for the agent
}

// Stage1 is one run of /init.
type Stage1 struct {
	Sys     System
	Con     *Console
	Fetch   *Fetcher
	Events  *HTTPEvents // set once the server is known
	Files   fs.FS       // the initramfs (os.DirFS("/") on a machine)
	Params  Params
	Net     *NetInfo
	Config  *node.Config
	rootfs  string
	started time.Time
}

// Run performs every phase in order and, on success, does not return
// (switch_root execs the image's init).
func (s *Stage1) Run(ctx context.Context) error {
	s.started = time.Now()
	if err := s.Sys.MountBasics(); err != nil {
		return fmt.Errorf("mount /proc /sys /dev /run: %w", err)
	}
	phases := []struct {
		name string
		run  func(context.Context) error
	}{
		{api.StageInit, s.params},
		{"modules", s.modules},
		{api.StageNetwork, s.network},
		{api.StageProfile, s.profile},
		{api.StageRootfs, s.fetchRootfs},
		{api.StageMount, s.mount},
		{api.StageConfig, s.configure},
	}
	for _, p := range phases {
		if err := p.run(ctx); err != nil {
			return fmt.Errorf("[%s] %w", p.name, err)
		}
	}
	s.Con.Step(ctx, api.StageSwitch, "switch_root to %s (%.1fs in stage 1)", s.Params.Init, time.Since(s.started).Seconds())
	return s.Sys.SwitchRoot(NewRoot, s.Params.Init)
}

func (s *Stage1) readFile(p string) ([]byte, error) {
	return fs.ReadFile(s.Files, strings.TrimPrefix(p, "/"))
}

func (s *Stage1) params(ctx context.Context) error {
	cmdline, err := s.Sys.Cmdline()
	if err != nil {
		return err
	}
	defaults, _ := s.readFile(CmdlineDefaults)
	p, err := ParseParams(string(defaults), cmdline)
	if err != nil {
		return err
	}
	s.Params = p
	mode := "embedded"
	if p.Server != "" {
		mode = "netboot from " + p.Server + " as " + p.Machine
		s.Events = &HTTPEvents{URL: p.Server + api.PathEvents, Machine: p.Machine, Client: s.Fetch.Client}
		s.Con.Events = s.Events
		s.Fetch.Token = p.Token
	}
	s.Con.Step(ctx, api.StageInit, "plinth stage 1 started: %s", mode)
	return nil
}

func (s *Stage1) modules(ctx context.Context) error {
	b, err := s.readFile(ModulesList)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var n int
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if err := s.Sys.LoadModule("/" + line); err != nil {
			return fmt.Errorf("module %s: %w", filepath.Base(line), err)
		}
		n++
	}
	s.Con.Step(ctx, "modules", "%d modules loaded", n)
	return nil
}

func (s *Stage1) network(ctx context.Context) error {
	if s.Params.Server == "" {
		return nil
	}
	start := time.Now()
	var err error
	for attempt := 0; ; attempt++ {
		if s.Net, err = s.Sys.Network(ctx, s.Params.Iface); err == nil {
			break
		}
		if attempt >= 5 {
			return err
		}
		s.Con.Step(ctx, api.StageNetwork, "retrying: %v", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 2 * time.Second):
		}
	}
	s.Con.Step(ctx, api.StageNetwork, "%s %s %s via dhcp (%.1fs)", s.Net.Iface, s.Net.MAC, s.Net.Address, time.Since(start).Seconds())
	return nil
}

func (s *Stage1) profile(ctx context.Context) error {
	var b []byte
	var err error
	src := EmbeddedConfig
	if s.Params.Server != "" {
		src = s.Params.Server + api.ProfilePath(s.Params.Machine)
		b, err = s.Fetch.Get(ctx, src, 4<<20)
	} else {
		b, err = s.readFile(EmbeddedConfig)
	}
	if err != nil {
		return fmt.Errorf("profile %s: %w", src, err)
	}
	c, err := node.Decode(b)
	if err != nil {
		return fmt.Errorf("profile %s: %w", src, err)
	}
	s.Config = c
	s.Con.Step(ctx, api.StageProfile, "machine %s host %s role %q", c.Machine, c.Hostname, c.Role)
	return nil
}

func (s *Stage1) fetchRootfs(ctx context.Context) error {
	want := s.Params.Rootfs
	if s.Params.Server == "" {
		if want == "" {
			b, err := s.readFile(EmbeddedDigest)
			if err != nil {
				return fmt.Errorf("no %s on the command line and no %s: %w", api.ParamRootfs, EmbeddedDigest, err)
			}
			want = strings.TrimSpace(string(b))
		}
		start := time.Now()
		if err := VerifyFile(EmbeddedRootfs, want); err != nil {
			s.Con.Step(ctx, api.StageRootfs, "REFUSED: %v", err)
			return permanent{err}
		}
		s.rootfs = EmbeddedRootfs
		s.Con.Step(ctx, api.StageRootfs, "embedded %s verified (%.1fs)", want, time.Since(start).Seconds())
		return nil
	}
	hexd := strings.TrimPrefix(want, "sha256:")
	url := s.Params.Server + api.ArtifactPath(hexd)
	if err := os.MkdirAll(filepath.Dir(DownloadedRootfs), 0o755); err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		start := time.Now()
		n, err := s.Fetch.Download(ctx, url, DownloadedRootfs, want)
		if err == nil {
			s.rootfs = DownloadedRootfs
			s.Con.Step(ctx, api.StageRootfs, "%s fetched and verified, %d MB in %.1fs", want, n>>20, time.Since(start).Seconds())
			return nil
		}
		if errors.Is(err, ErrDigest) {
			s.Con.Step(ctx, api.StageRootfs, "REFUSED: %v (attempt %d)", err, attempt)
		} else {
			s.Con.Step(ctx, api.StageRootfs, "download failed: %v (attempt %d)", err, attempt)
		}
		if attempt >= 5 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt) * 3 * time.Second):
		}
	}
}

func (s *Stage1) mount(ctx context.Context) error {
	if err := s.Sys.MountRoot(s.rootfs, NewRoot); err != nil {
		return err
	}
	s.Con.Step(ctx, api.StageMount, "squashfs read-only at /run/plinth/lower, tmpfs overlay at /")
	return nil
}

func (s *Stage1) configure(ctx context.Context) error {
	root := role.DirRoot(NewRoot)
	if err := Render(root, s.Config, s.Net); err != nil {
		return err
	}
	self, err := s.Sys.Self()
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if err := InstallAgent(root, self); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	msg, err := ConfigureRole(ctx, root, s.Config)
	if err != nil {
		// The image still boots: say loudly that its role was not applied.
		msg = "WARNING " + err.Error()
	}
	s.Con.Step(ctx, api.StageConfig, "hostname %s, %d profile files, agent installed, %s", s.Config.Hostname, len(s.Config.Files), msg)
	return nil
}

// permanent marks an error that retrying cannot fix.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// IsPermanent reports whether retrying the boot cannot help.
func IsPermanent(err error) bool {
	var p permanent
	return errors.As(err, &p)
}
