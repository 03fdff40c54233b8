// Package kernel finds a kernel and its modules in a tree laid out the way
// Debian's linux-image packages install them (boot/vmlinuz-V,
// lib/modules/V/), and resolves module names to files in load order.
package kernel

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Kernel is one kernel in a tree.
type Kernel struct {
	Version    string
	Tree       string // the tree's root
	Image      string // absolute path of the kernel image
	ModulesDir string // absolute path of lib/modules/<version>
}

// Module is one module file to load.
type Module struct {
	Name string // canonical name, underscores (e.g. virtio_net)
	Path string // relative to the tree, e.g. lib/modules/V/kernel/fs/squashfs/squashfs.ko
}

// Find locates the one kernel of tree.
func Find(tree string) (*Kernel, error) {
	var imgs []string
	all, _ := filepath.Glob(filepath.Join(tree, "boot", "vmlinuz-*"))
	for _, p := range all {
		v := strings.TrimPrefix(filepath.Base(p), "vmlinuz-")
		if st, err := os.Stat(filepath.Join(tree, "lib", "modules", v)); err == nil && st.IsDir() {
			imgs = append(imgs, p) // a kernel with its modules, not a stray file
		}
	}
	switch len(imgs) {
	case 0:
		return nil, fmt.Errorf("%s: no boot/vmlinuz-* kernel", tree)
	case 1:
	default:
		return nil, fmt.Errorf("%s: %d kernels (%s): a kernel source must hold exactly one", tree, len(imgs), strings.Join(imgs, ", "))
	}
	v := strings.TrimPrefix(filepath.Base(imgs[0]), "vmlinuz-")
	k := &Kernel{Version: v, Tree: tree, Image: imgs[0], ModulesDir: filepath.Join(tree, "lib", "modules", v)}
	if st, err := os.Stat(k.ModulesDir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%s: kernel %s has no lib/modules/%s", tree, v, v)
	}
	return k, nil
}

// canon makes a module name canonical the way modprobe does: '-' and '_' are one.
func canon(n string) string { return strings.ReplaceAll(n, "-", "_") }

func nameOf(path string) string {
	b := filepath.Base(path)
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if strings.HasSuffix(b, ext) {
			return canon(strings.TrimSuffix(b, ext))
		}
	}
	return canon(b)
}

// Resolve returns the modules named (with their dependencies, from
// modules.dep) in load order: every module after all it depends on. Modules
// built into the kernel (modules.builtin) need nothing and are left out.
func (k *Kernel) Resolve(names []string) ([]Module, error) {
	deps, paths, err := k.readDep()
	if err != nil {
		return nil, err
	}
	builtin := k.readBuiltin()
	var out []Module
	done := map[string]bool{}
	var visit func(n string)
	visit = func(n string) {
		if done[n] {
			return
		}
		done[n] = true
		for _, d := range deps[n] {
			visit(d)
		}
		out = append(out, Module{Name: n, Path: filepath.ToSlash(filepath.Join("lib", "modules", k.Version, paths[n]))})
	}
	var unknown []string
	for _, raw := range names {
		n := canon(raw)
		switch {
		case paths[n] != "":
			visit(n)
		case builtin[n]:
		default:
			unknown = append(unknown, raw)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("kernel %s has no module %s (neither in modules.dep nor built in)", k.Version, strings.Join(unknown, ", "))
	}
	return out, nil
}

// readDep parses modules.dep: "path: dep-path dep-path ...".
func (k *Kernel) readDep() (deps map[string][]string, paths map[string]string, err error) {
	f, err := os.Open(filepath.Join(k.ModulesDir, "modules.dep"))
	if err != nil {
		return nil, nil, fmt.Errorf("kernel %s: %w (run depmod on the tree)", k.Version, err)
	}
	defer f.Close()
	deps, paths = map[string][]string{}, map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n := nameOf(mod)
		paths[n] = mod
		for _, d := range strings.Fields(rest) {
			deps[n] = append(deps[n], nameOf(d))
		}
	}
	return deps, paths, sc.Err()
}

func (k *Kernel) readBuiltin() map[string]bool {
	out := map[string]bool{}
	b, err := os.ReadFile(filepath.Join(k.ModulesDir, "modules.builtin"))
	if err != nil {
		return out
	}
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" {
			out[nameOf(l)] = true
		}
	}
	return out
}
