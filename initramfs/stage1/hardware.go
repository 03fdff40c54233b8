package stage1

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/initramfs/drivers"
)

// Loading drivers by hardware: rounds of scanning /sys for modaliases and
// loading the drivers that match, until a round finds nothing new (a bus
// driver, virtio_pci say, makes the devices the next round's drivers
// drive). maxRounds bounds a driver that keeps making new devices.
const (
	maxRounds   = 8
	roundSettle = 100 * time.Millisecond
)

// ScanModaliases returns the distinct modaliases of the devices under
// sys/devices of fsys (the root file system, with /sys mounted), in walk
// order. Symbolic links are not followed, so each device is seen once.
func ScanModaliases(fsys fs.FS) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	err := fs.WalkDir(fsys, "sys/devices", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == "sys/devices" {
				return err
			}
			return nil // a device gone while walking, or a file root may not read
		}
		if d.IsDir() || d.Name() != "modalias" {
			return nil
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return nil
		}
		if a := strings.TrimSpace(string(b)); a != "" && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
		return nil
	})
	return out, err
}

// notForThisMachine is a module that refused to load because the machine
// lacks what it drives (crc32c_intel on a CPU without SSE 4.2): not a
// failure.
func notForThisMachine(err error) bool {
	return errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENXIO)
}

// driverIndex reads and parses /etc/plinth/drivers once; an initramfs
// without one has an empty index.
func (s *Stage1) driverIndex() (*drivers.Index, error) {
	if s.drivers != nil {
		return s.drivers, nil
	}
	b, err := s.readFile("/" + drivers.File)
	if errors.Is(err, fs.ErrNotExist) {
		s.drivers = &drivers.Index{}
		return s.drivers, nil
	}
	if err != nil {
		return nil, err
	}
	ix, err := drivers.Parse(b)
	if err != nil {
		return nil, err
	}
	s.drivers = ix
	return ix, nil
}

// hardware loads the index's drivers for the devices this machine has.
// loaded holds the module files already inserted.
func (s *Stage1) hardware(ctx context.Context, loaded map[string]bool) {
	ix, err := s.driverIndex()
	if err == nil && len(ix.Drivers) == 0 {
		return
	}
	if err != nil {
		// The listed modules are loaded; a boot that needed a driver
		// fails later with its own message.
		s.Con.Fail(ctx, api.StageModules, "FAILED drivers by hardware: %v", err)
		return
	}
	start := time.Now()
	tried := map[string]bool{}
	var used, failed []string
	rounds, devices := 0, 0
	for rounds < maxRounds {
		aliases, err := ScanModaliases(s.Files)
		if err != nil {
			s.Con.Fail(ctx, api.StageModules, "FAILED scanning /sys/devices: %v", err)
			return
		}
		rounds++
		devices = len(aliases)
		var todo []*drivers.Driver
		for _, a := range aliases {
			for _, d := range ix.Match(a) {
				if !tried[d.Name] {
					tried[d.Name] = true
					todo = append(todo, d)
				}
			}
		}
		if len(todo) == 0 {
			break
		}
		for _, d := range todo {
			ok := true
			for _, p := range d.Load {
				if loaded[p] {
					continue
				}
				loaded[p] = true
				if err := s.loadModule("/" + p); err != nil && !notForThisMachine(err) {
					s.Con.Fail(ctx, api.StageModules, "FAILED %s (for %s): %v", p, d.Name, err)
					ok = false
				}
			}
			if ok {
				used = append(used, d.Name)
			} else {
				failed = append(failed, d.Name)
			}
		}
		if err := sleep(ctx, roundSettle); err != nil {
			return
		}
	}
	slices.Sort(used)
	msg := fmt.Sprintf("hardware: %d devices, drivers %s (%d rounds, %.1fs)", devices, orNone(used), rounds, time.Since(start).Seconds())
	if len(failed) > 0 {
		msg += "; failed: " + strings.Join(failed, ", ")
	}
	s.Con.Step(ctx, api.StageModules, "%s", msg)
}

// loadByName loads the index's drivers by name (a bond's bonding, a
// VLAN's 8021q), reporting one line; a name the index lacks is named.
func (s *Stage1) loadByName(ctx context.Context, stage string, names ...string) {
	ix, err := s.driverIndex()
	if err != nil {
		s.Con.Fail(ctx, stage, "FAILED loading %s: %v", strings.Join(names, ", "), err)
		return
	}
	for _, n := range names {
		i := slices.IndexFunc(ix.Drivers, func(d drivers.Driver) bool { return d.Name == n })
		if i < 0 {
			s.Con.Fail(ctx, stage, "FAILED: %s is not in this initramfs (its kernel lacks it?)", n)
			continue
		}
		for _, p := range ix.Drivers[i].Load {
			if err := s.loadModule("/" + p); err != nil && !notForThisMachine(err) {
				s.Con.Fail(ctx, stage, "FAILED %s (for %s): %v", p, n, err)
			}
		}
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none matched"
	}
	return strings.Join(s, ", ")
}
