package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/plinth-dev/plinth/builder/compose"
	"github.com/plinth-dev/plinth/builder/kernel"
	"github.com/plinth-dev/plinth/manifest"
	"github.com/plinth-dev/plinth/profiles"
)

// Stage-1 programs compiled into every initramfs.
var (
	initCommands = []string{
		"github.com/plinth-dev/plinth/initramfs/cmd/init",
		"github.com/plinth-dev/plinth/initramfs/cmd/plinth-agent",
	}
	rescueCommands = []string{
		"github.com/u-root/u-root/cmds/core/gosh",
		"github.com/u-root/u-root/cmds/core/ls",
		"github.com/u-root/u-root/cmds/core/cat",
		"github.com/u-root/u-root/cmds/core/ip",
		"github.com/u-root/u-root/cmds/core/dmesg",
		"github.com/u-root/u-root/cmds/core/mount",
	}
)

// InitramfsPackages are the Go packages any initramfs plinth builds may
// compile: the stage-1 programs and the rescue shell's commands. An offline
// mirror carries the modules they need.
func InitramfsPackages() []string {
	return append(slices.Clone(initCommands), rescueCommands...)
}

// Output names of the two initramfs flavours.
const (
	initramfsNetboot  = manifest.Initramfs            // stage 1 only: fetches the rootfs
	initramfsEmbedded = "initramfs-embedded.cpio.zst" // stage 1 + rootfs + profile
)

// initramfsPlan is what the initramfs outputs depend on, known before any
// expensive work so that the build's input hash can be computed up front.
type initramfsPlan struct {
	key     string
	kernel  *kernel.Kernel
	mods    []kernel.Module
	cfg     compose.Config
	site    *profiles.Site
	machine *profiles.Machine
	// mediumMods are the modules of the boot media's initramfs (media.go).
	mediumMods []kernel.Module
}

func (b *build) planInitramfs(ctx context.Context) (*initramfsPlan, error) {
	ks := b.spec.Kernel
	tree, digest, err := b.res.Tree(ctx, ks.Src)
	if err != nil {
		return nil, fmt.Errorf("%s: kernel.source %s: %w", b.spec.File, ks.Source, err)
	}
	k, err := kernel.Find(tree)
	if err != nil {
		return nil, fmt.Errorf("%s: kernel.source %s: %w", b.spec.File, ks.Source, err)
	}
	sel, err := selectKernel(k, ks)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", b.spec.File, err)
	}
	mods, drv, missing, carried := sel.mods, sel.drivers, sel.missing, sel.carried
	if digest == "" {
		// A dir: tree is not content-addressed: hash what the image takes
		// from it, the kernel and the chosen modules.
		if digest, err = kernelDigest(k, carried); err != nil {
			return nil, fmt.Errorf("%s: kernel.source %s: %w", b.spec.File, ks.Source, err)
		}
	}
	b.sources = append(b.sources, manifest.Source{Ref: ks.Source, Use: "kernel", Digest: digest})
	b.kernel = &manifest.Kernel{Version: k.Version, DriversMissing: missing}
	for _, m := range mods {
		b.kernel.Modules = append(b.kernel.Modules, m.Name)
	}
	for _, d := range drv {
		b.kernel.Drivers = append(b.kernel.Drivers, d.Name)
	}
	if len(missing) > 0 {
		b.log.Info("drivers this kernel does not have, left out", "kernel", k.Version, "drivers", strings.Join(missing, " "))
	}
	fw, err := b.firmware(ctx, k, carried)
	if err != nil {
		return nil, err
	}
	for _, f := range fw.found {
		b.kernel.Firmware = append(b.kernel.Firmware, f.Name)
	}
	b.kernel.FirmwareMissing = fw.missing
	if len(fw.missing) > 0 {
		b.log.Info("firmware the drivers may ask for is in neither the kernel source nor stage1.firmware; devices that need it will not work in stage 1",
			"kernel", k.Version, "files", len(fw.missing))
	}
	p := &initramfsPlan{kernel: k, mods: mods}
	cmds := slices.Clone(initCommands)
	var rescue []string
	if b.o.Rescue {
		rescue = rescueCommands
	}
	p.cfg = compose.Config{
		Commands:    cmds,
		Rescue:      rescue,
		ModuleDir:   tree,
		Modules:     mods,
		Drivers:     driverIndex(drv),
		Firmware:    fw.found,
		Cmdline:     b.spec.Stage1.Params,
		Compression: b.spec.Output.Compression,
		Epoch:       b.o.Epoch,
		CacheDir:    filepath.Join(b.o.CacheDir, "initramfs"),
		WorkDir:     b.o.SrcDir,
		GoEnv:       b.o.GoEnv,
		Log:         b.log,
	}
	if b.spec.Stage1.CA != "" {
		ca, err := os.ReadFile(b.spec.Stage1.CA)
		if err != nil {
			return nil, fmt.Errorf("%s: stage1.ca: %w", b.spec.File, err)
		}
		if !strings.Contains(string(ca), "-----BEGIN CERTIFICATE-----") {
			return nil, fmt.Errorf("%s: stage1.ca: %s holds no PEM certificate", b.spec.File, b.spec.Stage1.CA)
		}
		p.cfg.CACert = ca
	}
	h := sha256.New()
	fmt.Fprintf(h, "initramfs v3\n%s\n%s\n%v\n%q\n", digest, b.spec.Output.Compression, b.o.Rescue, p.cfg.Cmdline)
	h.Write(p.cfg.CACert)
	for _, m := range mods {
		fmt.Fprintln(h, m.Name, m.Path)
	}
	if err := p.cfg.Drivers.Write(h); err != nil {
		return nil, fmt.Errorf("%s: kernel.drivers: %w", b.spec.File, err)
	}
	for _, f := range fw.found {
		fmt.Fprintln(h, "firmware", f.Name, f.Digest)
	}
	bb, err := compose.Key(p.cfg)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	fmt.Fprintln(h, bb)
	if b.wants("embedded") || b.wantsMedium() {
		site, err := profiles.LoadSite(b.spec.Output.Site)
		if err != nil {
			return nil, err
		}
		m := site.Machine(b.spec.Output.Machine)
		if m == nil {
			return nil, fmt.Errorf("%s: output.machine: no machine %q in site %s", b.spec.File, b.spec.Output.Machine, b.spec.Output.Site)
		}
		p.site, p.machine = site, m
		fmt.Fprintf(h, "embedded %s %s\n", site.Digest(), m.Name)
	}
	if b.wantsMedium() {
		if err := b.planMedium(ctx, p, h); err != nil {
			return nil, err
		}
	}
	p.key = hex.EncodeToString(h.Sum(nil))
	return p, nil
}

// wants reports whether the spec asks for an output format.
func (b *build) wants(format string) bool {
	return slices.Contains(b.spec.Output.Formats, format)
}

// initramfs builds (or takes from the cache) the initramfs outputs and the kernel.
func (b *build) initramfs(ctx context.Context, p *initramfsPlan, rootfs, rootDigest string) error {
	b.files[manifest.KernelFile] = p.kernel.Image
	dir := filepath.Join(b.o.CacheDir, "initramfs", "out")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	mk := func(name string, cfg compose.Config, key string) error {
		path := filepath.Join(dir, key+".cpio")
		if _, err := os.Stat(path); err == nil {
			b.files[name] = path
			return nil
		}
		t := b.o.Progress.Start("initramfs "+name, -1)
		defer t.Done()
		if err := compose.Build(ctx, cfg, path); err != nil {
			return fmt.Errorf("initramfs %s: %w", name, err)
		}
		b.files[name] = path
		return nil
	}
	if b.wants("netboot") {
		if err := mk(initramfsNetboot, p.cfg, p.key+"-netboot"); err != nil {
			return err
		}
	}
	if b.wants("embedded") {
		cfgJSON, err := b.nodeConfig(p, rootDigest)
		if err != nil {
			return err
		}
		cfg := p.cfg
		cfg.Embedded = &compose.Embedded{Rootfs: rootfs, RootfsDigest: rootDigest, Config: cfgJSON}
		h := sha256.Sum256(append([]byte(p.key+rootDigest), cfgJSON...))
		if err := mk(initramfsEmbedded, cfg, hex.EncodeToString(h[:])+"-embedded"); err != nil {
			return err
		}
	}
	return nil
}

// nodeConfig renders the profile an embedded image or a boot medium carries.
func (b *build) nodeConfig(p *initramfsPlan, rootDigest string) ([]byte, error) {
	nc, err := p.site.Render(p.machine, "")
	if err != nil {
		return nil, err
	}
	nc.Rootfs = rootDigest
	if b.spec.Role != nil && nc.Role == "" {
		nc.Role = b.spec.Role.Name
	}
	return json.MarshalIndent(nc, "", "  ")
}

// kernelDigest hashes a kernel image and the modules taken from its tree.
func kernelDigest(k *kernel.Kernel, mods []kernel.Module) (string, error) {
	h := sha256.New()
	files := []string{k.Image}
	for _, m := range mods {
		files = append(files, filepath.Join(k.Tree, m.Path))
	}
	for _, f := range files {
		d, n, err := manifest.FileDigest(f)
		if err != nil {
			return "", err
		}
		rel, _ := filepath.Rel(k.Tree, f)
		fmt.Fprintf(h, "%s %d %s\n", rel, n, d)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
