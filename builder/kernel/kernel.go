// Package kernel finds a kernel and its modules in a tree laid out the way
// Debian's linux-image packages install them (boot/vmlinuz-V,
// lib/modules/V/), and resolves module names to files in load order.
package kernel

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Kernel is one kernel in a tree.
type Kernel struct {
	Version    string
	Tree       string // the tree's root
	Image      string // path of the kernel image, boot/vmlinuz-<version> in Tree
	ModulesDir string // path of lib/modules/<version> in Tree

	tables *tables // read once, on first use
}

// tables are the tree's index files, read once per Kernel: a build resolves
// every carried driver on its own, and modules.alias alone is ~26 000 lines.
type tables struct {
	ix      *index
	builtin map[string]bool
	hw      *hwIndex
}

func (k *Kernel) load() (*tables, error) {
	if k.tables != nil {
		return k.tables, nil
	}
	ix, err := k.index()
	if err != nil {
		return nil, err
	}
	builtin, err := k.readBuiltin()
	if err != nil {
		return nil, err
	}
	hw, err := k.hwIndex()
	if err != nil {
		return nil, err
	}
	k.tables = &tables{ix, builtin, hw}
	return k.tables, nil
}

// Module is one module file to load.
type Module struct {
	Name string // canonical name, underscores (e.g. virtio_net)
	Path string // relative to the tree, e.g. lib/modules/V/kernel/fs/squashfs/squashfs.ko
}

// Find locates the one kernel of tree: a boot/vmlinuz-V with a
// lib/modules/V directory beside it.
func Find(tree string) (*Kernel, error) {
	all, err := filepath.Glob(filepath.Join(tree, "boot", "vmlinuz-*"))
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	var imgs, lone []string
	for _, p := range all {
		v := strings.TrimPrefix(filepath.Base(p), "vmlinuz-")
		if st, err := os.Stat(filepath.Join(tree, "lib", "modules", v)); err == nil && st.IsDir() {
			imgs = append(imgs, p)
		} else {
			// A checksum or a kernel without modules: name it in the error
			// in case it was the one meant.
			lone = append(lone, "boot/"+filepath.Base(p))
		}
	}
	switch len(imgs) {
	case 1:
	case 0:
		if len(lone) > 0 {
			return nil, fmt.Errorf("kernel: %s: no boot/vmlinuz-V with a lib/modules/V (found only %s)", tree, strings.Join(lone, ", "))
		}
		return nil, fmt.Errorf("kernel: %s: no boot/vmlinuz-* kernel", tree)
	default:
		rel := make([]string, len(imgs))
		for i, p := range imgs {
			rel[i] = "boot/" + filepath.Base(p)
		}
		return nil, fmt.Errorf("kernel: %s: %d kernels (%s): a kernel source must hold exactly one", tree, len(imgs), strings.Join(rel, ", "))
	}
	v := strings.TrimPrefix(filepath.Base(imgs[0]), "vmlinuz-")
	return &Kernel{Version: v, Tree: tree, Image: imgs[0], ModulesDir: filepath.Join(tree, "lib", "modules", v)}, nil
}

// canon makes a module name canonical the way modprobe does: '-' and '_' are one.
func canon(n string) string { return strings.ReplaceAll(n, "-", "_") }

// moduleExts are the module file suffixes kmod loads, longest first.
var moduleExts = []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"}

// nameOf is the canonical module name of a module file path.
func nameOf(path string) string {
	b := path[strings.LastIndexByte(path, '/')+1:]
	for _, ext := range moduleExts {
		if strings.HasSuffix(b, ext) {
			return canon(strings.TrimSuffix(b, ext))
		}
	}
	return canon(b)
}

func isModuleFile(name string) bool {
	for _, ext := range moduleExts {
		if strings.HasSuffix(name, ext) && len(name) > len(ext) {
			return true
		}
	}
	return false
}

// index maps module names to files and dependencies. With modules.dep the
// dependencies are all known up front (and transitive); without it they are
// read from each module's .modinfo when first needed, so that resolving a
// dozen modules does not decompress thousands.
type index struct {
	paths map[string]string   // canonical name → path relative to ModulesDir
	deps  map[string][]string // canonical name → dependencies, when known
	read  func(rel string) ([]string, error)
}

func (ix *index) depsOf(n string) ([]string, error) {
	if d, ok := ix.deps[n]; ok || ix.read == nil {
		return d, nil
	}
	d, err := ix.read(ix.paths[n])
	if err != nil {
		return nil, err
	}
	ix.deps[n] = d
	return d, nil
}

// Resolve returns the modules named, with everything they depend on, in
// load order: every module after all it depends on, dependencies in the
// order modules.dep lists them (sorted when read from .modinfo), named
// modules in the order given. Soft dependencies (modules.softdep, or the
// module's "softdep=") come along too: "pre:" ones before the module,
// "post:" ones after, each a module name or an alias (every module the
// alias names); one the kernel does not have is skipped, as modprobe skips
// it. Names may use '-' or '_'. Modules built into the kernel
// (modules.builtin) need nothing and are left out. Without a modules.dep
// the tree's module files are scanned and their .modinfo read.
func (k *Kernel) Resolve(names []string) ([]Module, error) {
	t, err := k.load()
	if err != nil {
		return nil, err
	}
	ix, builtin, hw := t.ix, t.builtin, t.hw
	var unknown []string
	for _, raw := range names {
		n := canon(raw)
		if ix.paths[n] == "" && !builtin[n] {
			unknown = append(unknown, raw)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("kernel %s has no module %s (neither in lib/modules/%s nor built in)", k.Version, strings.Join(unknown, ", "), k.Version)
	}
	var out []Module
	done := map[string]bool{}
	var visit func(n, from string) error
	visit = func(n, from string) error {
		if done[n] {
			return nil
		}
		done[n] = true // before the dependencies: a cycle ends here, not in a stack overflow
		if ix.paths[n] == "" {
			if builtin[n] {
				return nil
			}
			return fmt.Errorf("kernel %s: module %s depends on %s, which is neither a module nor built in", k.Version, from, n)
		}
		soft, err := hw.softdepOf(k, n, ix.paths[n])
		if err != nil {
			return err
		}
		for _, s := range soft.Pre {
			for _, m := range hw.lookup(ix, builtin, s) {
				if err := visit(m, n); err != nil {
					return err
				}
			}
		}
		deps, err := ix.depsOf(n)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, n); err != nil {
				return err
			}
		}
		out = append(out, Module{Name: n, Path: "lib/modules/" + k.Version + "/" + ix.paths[n]})
		for _, s := range soft.Post {
			for _, m := range hw.lookup(ix, builtin, s) {
				if err := visit(m, n); err != nil {
					return err
				}
			}
		}
		return nil
	}
	for _, raw := range names {
		if err := visit(canon(raw), ""); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// index reads modules.dep, or scans the tree when there is none.
func (k *Kernel) index() (*index, error) {
	f, err := os.Open(filepath.Join(k.ModulesDir, "modules.dep"))
	if errors.Is(err, fs.ErrNotExist) {
		return k.scan()
	}
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	defer f.Close()
	ix, err := parseDep(f)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: modules.dep: %w", k.Version, err)
	}
	return ix, nil
}

// parseDep parses modules.dep: "path: dep-path dep-path ..." per line.
func parseDep(r io.Reader) (*index, error) {
	ix := &index{paths: map[string]string{}, deps: map[string][]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		mod, rest, ok := strings.Cut(text, ":")
		if !ok || !isModuleFile(mod) {
			return nil, fmt.Errorf("line %d: %q is not \"module.ko: deps\"", line, text)
		}
		n := nameOf(mod)
		if _, dup := ix.paths[n]; dup {
			continue // depmod writes the preferred file first
		}
		ix.paths[n] = mod
		deps := []string{}
		for _, d := range strings.Fields(rest) {
			deps = append(deps, nameOf(d))
		}
		ix.deps[n] = deps
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return ix, nil
}

// scan indexes the module files under ModulesDir. Where two files have one
// name the first in lexical path order wins, so the choice is stable.
func (k *Kernel) scan() (*index, error) {
	ix := &index{paths: map[string]string{}, deps: map[string][]string{}}
	var files []string
	err := filepath.WalkDir(k.ModulesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && isModuleFile(d.Name()) {
			rel, err := filepath.Rel(k.ModulesDir, p)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kernel %s: no modules.dep, scanning modules: %w", k.Version, err)
	}
	sort.Strings(files)
	for _, rel := range files {
		if n := nameOf(rel); ix.paths[n] == "" {
			ix.paths[n] = rel
		}
	}
	ix.read = func(rel string) ([]string, error) {
		deps, err := readModinfoDepends(filepath.Join(k.ModulesDir, filepath.FromSlash(rel)))
		if err != nil {
			return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
		}
		return deps, nil
	}
	return ix, nil
}

// readBuiltin reads modules.builtin; a tree without one has no built-in
// modules worth naming.
func (k *Kernel) readBuiltin() (map[string]bool, error) {
	out := map[string]bool{}
	b, err := os.ReadFile(filepath.Join(k.ModulesDir, "modules.builtin"))
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	for l := range strings.Lines(string(b)) {
		if l = strings.TrimSpace(l); l != "" {
			out[nameOf(l)] = true
		}
	}
	return out, nil
}

// sortedUnique sorts names and drops repeats and empty ones.
func sortedUnique(names []string) []string {
	names = slices.DeleteFunc(names, func(s string) bool { return s == "" })
	slices.Sort(names)
	return slices.Compact(names)
}
