// Package drivers is the index of hardware drivers an initramfs carries,
// written by the builder from the kernel's modules.alias, modules.dep and
// modules.softdep, and read by stage 1, which loads a driver when a device's
// modalias (from /sys) matches one of its patterns. The builder resolves the
// load order (soft dependencies, dependencies, the driver) so that stage 1
// needs no kmod logic of its own.
//
// The file is text, one directive per line:
//
//	driver e1000e
//	load lib/modules/6.1.0-57-amd64/kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko
//	alias pci:v00008086d0000105Esv*sd*bc*sc*i*
//
// "load" and "alias" lines belong to the driver above them; "load" lines
// are in load order. Blank lines and # comments are skipped.
package drivers

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"path"
	"strings"
)

// File is where the index lives in the initramfs.
const File = "etc/plinth/drivers"

// Driver is one driver of the index.
type Driver struct {
	Name    string
	Load    []string // module files, relative to /, in load order
	Aliases []string // modalias patterns (shell globs, as kmod matches them)
}

// Index is the drivers of one initramfs.
type Index struct {
	Drivers []Driver
}

// Write writes the index.
func (ix *Index) Write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintln(bw, "# plinth stage-1 drivers, loaded when a device's modalias matches an alias (written by plinth build)")
	for _, d := range ix.Drivers {
		if err := checkWord("driver", d.Name); err != nil {
			return err
		}
		fmt.Fprintf(bw, "driver %s\n", d.Name)
		for _, l := range d.Load {
			if err := checkPath(l); err != nil {
				return fmt.Errorf("driver %s: %w", d.Name, err)
			}
			fmt.Fprintf(bw, "load %s\n", l)
		}
		for _, a := range d.Aliases {
			if err := checkAlias(a); err != nil {
				return fmt.Errorf("driver %s: %w", d.Name, err)
			}
			fmt.Fprintf(bw, "alias %s\n", a)
		}
	}
	return bw.Flush()
}

// Parse reads an index; errors name the file and line.
func Parse(b []byte) (*Index, error) {
	ix := &Index{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 4096), 64<<10)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		verb, arg, _ := strings.Cut(text, " ")
		arg = strings.TrimSpace(arg)
		var err error
		switch verb {
		case "driver":
			if err = checkWord("driver", arg); err == nil {
				ix.Drivers = append(ix.Drivers, Driver{Name: arg})
			}
		case "load", "alias":
			if len(ix.Drivers) == 0 {
				err = fmt.Errorf("%s before any driver", verb)
				break
			}
			d := &ix.Drivers[len(ix.Drivers)-1]
			if verb == "load" {
				if err = checkPath(arg); err == nil {
					d.Load = append(d.Load, arg)
				}
			} else if err = checkAlias(arg); err == nil {
				d.Aliases = append(d.Aliases, arg)
			}
		default:
			err = fmt.Errorf("unknown directive %q (want driver, load or alias)", verb)
		}
		if err != nil {
			return nil, fmt.Errorf("/%s:%d: %w", File, line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("/%s:%d: %w", File, line+1, err)
	}
	return ix, nil
}

// Match returns the drivers with an alias matching modalias, in index order.
func (ix *Index) Match(modalias string) []*Driver {
	var out []*Driver
	for i := range ix.Drivers {
		for _, a := range ix.Drivers[i].Aliases {
			if ok, _ := path.Match(a, modalias); ok {
				out = append(out, &ix.Drivers[i])
				break
			}
		}
	}
	return out
}

func checkWord(what, s string) error {
	if s == "" || strings.ContainsAny(s, " \t/") {
		return fmt.Errorf("%s %q: want a module name", what, s)
	}
	return nil
}

func checkPath(p string) error {
	if p == "" || path.IsAbs(p) || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") || strings.ContainsAny(p, " \t") {
		return fmt.Errorf("load %q: want a clean relative path", p)
	}
	return nil
}

// checkAlias accepts what path.Match can use; modaliases hold no '/' or
// spaces.
func checkAlias(a string) error {
	if a == "" || strings.ContainsAny(a, " \t") {
		return fmt.Errorf("alias %q: want a pattern without spaces", a)
	}
	if _, err := path.Match(a, ""); err != nil {
		return fmt.Errorf("alias %q: %w", a, err)
	}
	return nil
}
