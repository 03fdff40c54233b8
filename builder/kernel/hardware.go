package kernel

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// Alias is one line of modules.alias: a device whose modalias matches
// Pattern (a shell glob, as kmod matches it) is driven by Module.
type Alias struct {
	Pattern string
	Module  string // canonical name
}

// Softdep is a module's soft dependencies: modules (or aliases) to load
// before and after it that it does not link against — libcrc32c asks the
// crypto API for crc32c, r8169 wants its PHY driver first.
type Softdep struct {
	Pre, Post []string
}

// eachFields calls fn with the number and the fields of each line of r
// that is neither blank nor a # comment.
func eachFields(r io.Reader, fn func(line int, f []string) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if err := fn(line, f); err != nil {
			return err
		}
	}
	return sc.Err()
}

// parseAliases parses modules.alias: "alias PATTERN MODULE" per line.
func parseAliases(r io.Reader) ([]Alias, error) {
	var out []Alias
	err := eachFields(r, func(line int, f []string) error {
		if len(f) != 3 || f[0] != "alias" {
			return fmt.Errorf("line %d: %q is not \"alias PATTERN MODULE\"", line, strings.Join(f, " "))
		}
		if _, err := path.Match(f[1], ""); err != nil {
			return fmt.Errorf("line %d: pattern %q: %w", line, f[1], err)
		}
		out = append(out, Alias{Pattern: f[1], Module: canon(f[2])})
		return nil
	})
	return out, err
}

// parseSoftdeps parses modules.softdep (and modprobe.d's softdep lines):
// "softdep MODULE pre: A B post: C". Names before any pre: or post: are
// ignored, as kmod ignores them (Debian's depmod writes a few such lines).
func parseSoftdeps(r io.Reader) (map[string]Softdep, error) {
	out := map[string]Softdep{}
	err := eachFields(r, func(line int, f []string) error {
		if len(f) < 2 || f[0] != "softdep" {
			return fmt.Errorf("line %d: %q is not \"softdep MODULE pre: ... post: ...\"", line, strings.Join(f, " "))
		}
		n := canon(f[1])
		sd := out[n]
		addSoftdep(&sd, f[2:])
		out[n] = sd
		return nil
	})
	return out, err
}

// addSoftdep adds the names of tokens ("pre:", names, "post:", names) to sd.
func addSoftdep(sd *Softdep, tokens []string) {
	var into *[]string
	for _, t := range tokens {
		switch t {
		case "pre:":
			into = &sd.Pre
		case "post:":
			into = &sd.Post
		default:
			if into != nil {
				*into = append(*into, t)
			}
		}
	}
}

// hwIndex is what matching hardware and soft dependencies read: the
// kernel's modules.alias and modules.softdep, or, for a tree without them,
// each module's own .modinfo as it is needed.
type hwIndex struct {
	aliases  []Alias            // nil: read from .modinfo
	softdeps map[string]Softdep // nil: read from .modinfo
	modinfo  map[string][]byte  // canonical name → .modinfo, when read
}

// A tree with a modules.dep was indexed by depmod, which writes
// modules.alias and modules.softdep beside it: there, a missing one means
// none.
func (k *Kernel) hwIndex() (*hwIndex, error) {
	h := &hwIndex{modinfo: map[string][]byte{}}
	if _, err := os.Stat(filepath.Join(k.ModulesDir, "modules.dep")); err == nil {
		h.aliases, h.softdeps = []Alias{}, map[string]Softdep{}
	}
	if f, err := os.Open(filepath.Join(k.ModulesDir, "modules.alias")); err == nil {
		h.aliases, err = parseAliases(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("kernel %s: modules.alias: %w", k.Version, err)
		}
		if h.aliases == nil {
			h.aliases = []Alias{}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	if f, err := os.Open(filepath.Join(k.ModulesDir, "modules.softdep")); err == nil {
		h.softdeps, err = parseSoftdeps(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("kernel %s: modules.softdep: %w", k.Version, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	return h, nil
}

// info returns module n's .modinfo (rel is its path under ModulesDir).
func (h *hwIndex) info(k *Kernel, n, rel string) ([]byte, error) {
	if b, ok := h.modinfo[n]; ok {
		return b, nil
	}
	b, err := readModinfo(filepath.Join(k.ModulesDir, filepath.FromSlash(rel)))
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	h.modinfo[n] = b
	return b, nil
}

// softdepOf returns module n's soft dependencies.
func (h *hwIndex) softdepOf(k *Kernel, n, rel string) (Softdep, error) {
	if h.softdeps != nil {
		return h.softdeps[n], nil
	}
	b, err := h.info(k, n, rel)
	if err != nil {
		return Softdep{}, err
	}
	var sd Softdep
	for _, v := range modinfoValues(b, "softdep") {
		addSoftdep(&sd, strings.Fields(v))
	}
	return sd, nil
}

// aliasesOf returns the aliases of module n.
func (h *hwIndex) aliasesOf(k *Kernel, n, rel string) ([]Alias, error) {
	if h.aliases != nil {
		var out []Alias
		for _, a := range h.aliases {
			if a.Module == n {
				out = append(out, a)
			}
		}
		return out, nil
	}
	b, err := h.info(k, n, rel)
	if err != nil {
		return nil, err
	}
	var out []Alias
	for _, p := range modinfoValues(b, "alias") {
		if _, err := path.Match(p, ""); err == nil {
			out = append(out, Alias{Pattern: p, Module: n})
		}
	}
	return out, nil
}

// lookup resolves a name as modprobe does: a module by that name, or else
// every module with an alias matching it. Without modules.alias only
// module names resolve (an alias would need every module's .modinfo).
func (h *hwIndex) lookup(ix *index, builtin map[string]bool, name string) []string {
	if n := canon(name); ix.paths[n] != "" || builtin[n] {
		return []string{n}
	}
	var out []string
	for _, a := range h.aliases {
		if ok, _ := path.Match(a.Pattern, name); ok && !slices.Contains(out, a.Module) {
			out = append(out, a.Module)
		}
	}
	return out
}

// Driver is one hardware driver an initramfs carries: the modalias
// patterns it drives and the modules to load, in order, when one matches.
type Driver struct {
	Name    string
	Aliases []string // modalias patterns
	Load    []Module // soft pre-dependencies, dependencies, the driver, soft post-dependencies
}

// Drivers resolves hardware drivers by name: each one's modalias patterns
// from modules.alias and its load order (Resolve). A driver built into the
// kernel needs nothing and is left out. Names unknown to the kernel are an
// error; optional ones (those the kernel may lack) go in optional and are
// returned in missing instead.
func (k *Kernel) Drivers(names, optional []string) (drivers []Driver, missing []string, err error) {
	t, err := k.load()
	if err != nil {
		return nil, nil, err
	}
	ix, builtin, h := t.ix, t.builtin, t.hw
	var want []string
	for _, n := range optional {
		if c := canon(n); ix.paths[c] == "" && !builtin[c] {
			missing = append(missing, n)
		} else if !slices.Contains(want, c) {
			want = append(want, c)
		}
	}
	for _, n := range names {
		if c := canon(n); !slices.Contains(want, c) {
			want = append(want, c)
		}
	}
	if _, err := k.Resolve(want); err != nil {
		return nil, nil, err
	}
	for _, n := range want {
		if ix.paths[n] == "" {
			continue // built in
		}
		as, err := h.aliasesOf(k, n, ix.paths[n])
		if err != nil {
			return nil, nil, err
		}
		load, err := k.Resolve([]string{n})
		if err != nil {
			return nil, nil, err
		}
		d := Driver{Name: n, Load: load}
		for _, a := range as {
			d.Aliases = append(d.Aliases, a.Pattern)
		}
		drivers = append(drivers, d)
	}
	return drivers, missing, nil
}

// Firmware returns the firmware files modules ask for (their .modinfo
// "firmware=" entries), in order, each once. A module whose .modinfo
// cannot be read is named in unreadable, not an error: it would fail to
// load anyway, and says so then.
func (k *Kernel) Firmware(mods []Module) (files, unreadable []string) {
	h := &hwIndex{modinfo: map[string][]byte{}}
	var out []string
	for _, m := range mods {
		b, err := h.info(k, m.Name, strings.TrimPrefix(m.Path, "lib/modules/"+k.Version+"/"))
		if err != nil {
			unreadable = append(unreadable, m.Name)
			continue
		}
		for _, f := range modinfoValues(b, "firmware") {
			if f != "" && !slices.Contains(out, f) {
				out = append(out, f)
			}
		}
	}
	return out, unreadable
}
