package lab

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/plinth-dev/plinth/profiles"
)

// Start boots the named machines of the site as it is now, without
// waiting for them (Boot and WaitReady wait). A machine the lab booted
// before must have been killed: it comes back with its MAC, its tap and
// its disk file as they are. A machine with a state disk whose file is
// missing gets a blank one. Its ReadyAfter then measures from the new
// start.
func (c *Cluster) Start(ctx context.Context, names ...string) error {
	site, err := profiles.LoadSite(c.cfg.Site)
	if err != nil {
		return err
	}
	// Check every name before starting any.
	var ms []*profiles.Machine
	var errs []error
	for _, n := range names {
		m := site.Machine(n)
		switch {
		case m == nil:
			errs = append(errs, fmt.Errorf("no machine %q in %s", n, c.cfg.Site))
		case c.running(n):
			errs = append(errs, fmt.Errorf("start %s: it is running (Kill it first)", n))
		default:
			ms = append(ms, m)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	disks, created, _, err := PrepareDisks(c.cfg.Disks, site, ms)
	if err != nil {
		return err
	}
	if len(created) > 0 {
		fmt.Fprint(c.cfg.Out, diskReport(c.cfg.Disks, created, nil))
	}
	for _, m := range ms {
		if err := c.boot(ctx, m, disks[m.Name]); err != nil {
			return err
		}
	}
	return nil
}

// Kill cuts the named machines' power: SIGKILL to their QEMU, no
// shutdown, all at once. It returns when they are gone. A machine
// already down is no error.
func (c *Cluster) Kill(names ...string) error {
	vms := map[string]machineVM{}
	var errs []error
	for _, n := range names {
		if vm := c.vm(n); vm != nil {
			vms[n] = vm
		} else {
			errs = append(errs, fmt.Errorf("kill %s: the lab has not booted it", n))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return killAll(vms)
}

// PowerCut kills every machine of the lab at once, as a power cut would.
func (c *Cluster) PowerCut() error {
	c.mu.Lock()
	vms := maps.Clone(c.vms)
	c.mu.Unlock()
	return killAll(vms)
}

// killAll closes the VMs concurrently, so that none outlives another by
// more than the time to send a signal, and waits for all of them.
func killAll(vms map[string]machineVM) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, n := range slices.Sorted(maps.Keys(vms)) {
		wg.Go(func() {
			if err := vms[n].Close(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("kill %s: %w", n, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// running says whether the named machine's QEMU runs.
func (c *Cluster) running(name string) bool {
	vm := c.vm(name)
	return vm != nil && !vm.Exited()
}

// ReplaceDisk gives the named machine a new blank state disk in place of
// its file, as an operator swaps a failed disk. The machine must be down
// (Kill it first); Start boots it with the new disk.
func (c *Cluster) ReplaceDisk(name string) error {
	if c.running(name) {
		return fmt.Errorf("replace the disk of %s: it is running (Kill it first)", name)
	}
	c.mu.Lock()
	d := c.disks[name]
	c.mu.Unlock()
	if d == nil {
		return fmt.Errorf("replace the disk of %s: it has no state disk in the lab", name)
	}
	return d.blank()
}

// DiskPath is the file of the named machine's state disk; "" when the
// lab has not given it one.
func (c *Cluster) DiskPath(name string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.disks[name]; d != nil {
		return d.Drive.Path
	}
	return ""
}
