package builder

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/plinth-dev/plinth/builder/compose"
	"github.com/plinth-dev/plinth/builder/kernel"
	"github.com/plinth-dev/plinth/images"
	"github.com/plinth-dev/plinth/initramfs/drivers"
	"github.com/plinth-dev/plinth/manifest"
)

// stage1Needs are the modules stage 1 uses for its own work, whatever the
// spec says: the loop device and squashfs for the root file system, overlay
// for its writable layer, AF_PACKET for DHCP. A kernel without one (as a
// module or built in) cannot boot the image: that is a build error.
var stage1Needs = []string{"loop", "squashfs", "overlay", "af_packet"}

// linkDrivers are carried for what a profile may ask of the network (a
// [[machine.bond]], a [[machine.vlan]]): stage 1 loads them by name when it
// does, whatever modules the image's root has.
var linkDrivers = []string{"bonding", "8021q"}

// companions are modules a driver loads itself with request_module, which
// needs a modprobe stage 1 does not have: they load right after it. mlx4's
// Ethernet ports are mlx4_en's (mlx4_core has the PCI aliases, mlx4_en
// none).
var companions = map[string][]string{"mlx4_core": {"mlx4_en"}}

// withCompanions adds each driver's companions the kernel has to its load
// order.
func withCompanions(k *kernel.Kernel, ds []kernel.Driver) {
	for i, d := range ds {
		for _, c := range companions[d.Name] {
			extra, err := k.Resolve([]string{c})
			if err != nil {
				continue // a kernel without it: the driver alone
			}
			for _, m := range extra {
				if !slices.ContainsFunc(ds[i].Load, func(x kernel.Module) bool { return x.Path == m.Path }) {
					ds[i].Load = append(ds[i].Load, m)
				}
			}
		}
	}
}

// kernelSelection is what an image takes from its kernel tree: the
// modules stage 1 loads in order (the spec's and its own), the drivers it
// loads by hardware, the common drivers the kernel lacks, and every module
// carried.
type kernelSelection struct {
	mods    []kernel.Module
	drivers []kernel.Driver
	missing []string
	carried []kernel.Module
}

func selectKernel(k *kernel.Kernel, ks *images.Kernel) (*kernelSelection, error) {
	if _, err := k.Resolve(stage1Needs); err != nil {
		return nil, fmt.Errorf("kernel.source %s: stage 1 needs %s (as modules or built in): %w", ks.Source, strings.Join(stage1Needs, ", "), err)
	}
	mods, err := k.Resolve(append(slices.Clone(ks.Modules), stage1Needs...))
	if err != nil {
		return nil, fmt.Errorf("kernel.modules: %w", err)
	}
	named, optional := expandDrivers(ks.Drivers)
	optional = append(optional, linkDrivers...)
	drv, missing, err := k.Drivers(named, optional)
	if err != nil {
		return nil, fmt.Errorf("kernel.drivers: %w", err)
	}
	withCompanions(k, drv)
	carried := slices.Clone(mods)
	for _, d := range drv {
		carried = append(carried, d.Load...)
	}
	return &kernelSelection{mods: mods, drivers: drv, missing: missing, carried: carried}, nil
}

// KernelFiles lists, relative to the kernel tree k.Tree, the files a build
// of an image with kernel table ks reads from it besides the kernel image
// and lib/modules' index files: every module it carries and the firmware
// files of the tree those modules ask for. A mirror keeps these and the
// far side's build gives the same bytes.
func KernelFiles(k *kernel.Kernel, ks *images.Kernel) ([]string, error) {
	sel, err := selectKernel(k, ks)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range sel.carried {
		if !slices.Contains(out, m.Path) {
			out = append(out, m.Path)
		}
	}
	names, _ := k.Firmware(sel.carried)
	for _, n := range names {
		f, ok, err := findFirmware([]string{k.Tree}, n)
		if err != nil || !ok {
			continue // the build reports it missing, here and there alike
		}
		rel, err := filepath.Rel(k.Tree, f.Src)
		if err != nil || !filepath.IsLocal(rel) {
			continue
		}
		if rel = filepath.ToSlash(rel); !slices.Contains(out, rel) {
			out = append(out, rel)
		}
	}
	return out, nil
}

// expandDrivers splits a spec's kernel.drivers into the drivers named
// (the kernel must have them) and those of images.CommonDrivers (it may
// lack some).
func expandDrivers(list []string) (named, optional []string) {
	for _, d := range list {
		if d == images.CommonSet {
			optional = append(optional, images.CommonDrivers...)
		} else {
			named = append(named, d)
		}
	}
	return named, optional
}

// driverIndex is what stage 1 reads to load drivers by hardware.
func driverIndex(ds []kernel.Driver) *drivers.Index {
	ix := &drivers.Index{}
	for _, d := range ds {
		e := drivers.Driver{Name: d.Name, Aliases: d.Aliases}
		for _, m := range d.Load {
			e.Load = append(e.Load, m.Path)
		}
		ix.Drivers = append(ix.Drivers, e)
	}
	return ix
}

// firmwareFiles are the firmware files found for an initramfs and the
// names looked for in vain.
type firmwareFiles struct {
	found   []compose.Firmware
	missing []string
}

// firmware finds the firmware files the carried modules ask for: in the
// spec's stage1.firmware source first, then in the kernel source's
// lib/firmware, each as it is or compressed the ways the kernel reads.
func (b *build) firmware(ctx context.Context, k *kernel.Kernel, mods []kernel.Module) (firmwareFiles, error) {
	var out firmwareFiles
	names, unreadable := k.Firmware(mods)
	if len(unreadable) > 0 {
		b.log.Warn("modules whose .modinfo does not read: the firmware they ask for is not known", "kernel", k.Version, "modules", strings.Join(unreadable, " "))
	}
	var roots []string
	if fw := b.spec.Stage1; fw.Firmware != "" {
		tree, digest, err := b.res.Tree(ctx, fw.FirmwareSrc)
		if err != nil {
			return out, fmt.Errorf("%s: stage1.firmware %s: %w", b.spec.File, fw.Firmware, err)
		}
		if digest != "" {
			b.sources = append(b.sources, manifest.Source{Ref: fw.Firmware, Use: "firmware", Digest: digest})
		}
		roots = append(roots, tree)
	}
	roots = append(roots, k.Tree)
	for _, n := range names {
		f, ok, err := findFirmware(roots, n)
		if err != nil {
			return out, fmt.Errorf("%s: firmware %s: %w", b.spec.File, n, err)
		}
		if !ok {
			out.missing = append(out.missing, n)
			continue
		}
		if !slices.ContainsFunc(out.found, func(x compose.Firmware) bool { return x.Name == f.Name }) {
			out.found = append(out.found, f)
		}
	}
	return out, nil
}

// findFirmware looks for lib/firmware/NAME under each root in turn.
func findFirmware(roots []string, name string) (compose.Firmware, bool, error) {
	rel := filepath.Join("lib", "firmware", filepath.FromSlash(name))
	if !filepath.IsLocal(rel) {
		return compose.Firmware{}, false, fmt.Errorf("%q leaves lib/firmware", name)
	}
	for _, root := range roots {
		for _, ext := range []string{"", ".zst", ".xz"} {
			p := filepath.Join(root, rel+ext)
			st, err := os.Stat(p)
			if err != nil || !st.Mode().IsRegular() {
				continue
			}
			d, _, err := manifest.FileDigest(p)
			if err != nil {
				return compose.Firmware{}, false, err
			}
			return compose.Firmware{Name: name + ext, Src: p, Digest: d}, true, nil
		}
	}
	return compose.Firmware{}, false, nil
}
