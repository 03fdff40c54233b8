package firstboot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/profiles/node"
)

// The state disk step runs before any of the role's services, after udev
// has made its links: it finds the disk the profile selects and
//   - mounts nothing itself (the mount units after it do), but checks a
//     disk that carries this machine's state partition (e2fsck);
//   - partitions and formats a blank disk (no partition table, no
//     filesystem or other signature libblkid knows);
//   - never touches a disk that holds anything else, unless the site says
//     for this machine that its disk may be wiped: it stops, and says why
//     on the console, in an event and in StateStatusFile for the agent.
//
// The tools are the image's own util-linux, fdisk and e2fsprogs: sfdisk,
// wipefs, mkfs.ext4, e2fsck and udevadm (the stock base has them).

// StateStatus is what the step found and did (role.StateStatusFile).
type StateStatus struct {
	Status  string `json:"status"` // "mounted", "formatted", "refused"
	Disk    string `json:"disk,omitempty"`
	Part    string `json:"part,omitempty"` // the state partition's device
	Message string `json:"message"`
}

// Disk is a whole disk of the machine.
type Disk struct {
	Name  string            // kernel name, e.g. vdb
	Dev   string            // /dev/vdb
	Size  int64             // bytes
	Props map[string]string // udev properties (ID_SERIAL, ID_WWN, ...)
}

func (d Disk) String() string {
	s := fmt.Sprintf("%s (%s", d.Dev, node.FormatSize(d.Size))
	if v := cmpOr(d.Props["ID_SERIAL_SHORT"], d.Props["ID_SERIAL"]); v != "" {
		s += ", serial " + v
	}
	return s + ")"
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// DiskOS is what the step needs of the machine; tests give it a root of
// their own and loop devices.
type DiskOS struct {
	Sys string // sysfs, "/sys"
	Run func(ctx context.Context, name string, args ...string) ([]byte, error)
	// Include says which block devices (kernel names) may be state
	// disks; nil: all but loop, RAM, optical, floppy, md, dm and nbd ones.
	Include func(name string) bool
}

// HostDisks is the machine itself.
var HostDisks = DiskOS{Sys: "/sys", Run: runTool}

func runTool(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return []byte(out.String()), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return []byte(out.String()), nil
}

// skipDisk is true for block devices that are never state disks.
func skipDisk(name string) bool {
	for _, p := range []string{"loop", "ram", "zram", "sr", "fd", "md", "dm-", "nbd", "mtdblock"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Disks lists the machine's whole, writable, fixed disks by kernel name.
func (o DiskOS) Disks(ctx context.Context) ([]Disk, error) {
	ents, err := os.ReadDir(filepath.Join(o.Sys, "block"))
	if err != nil {
		return nil, err
	}
	var out []Disk
	for _, e := range ents {
		n := e.Name()
		if o.Include != nil && !o.Include(n) || o.Include == nil && skipDisk(n) {
			continue
		}
		d, ok := o.disk(ctx, n)
		if ok {
			out = append(out, d)
		}
	}
	return out, nil
}

func (o DiskOS) sysInt(name, attr string) int64 {
	b, err := os.ReadFile(filepath.Join(o.Sys, "block", name, attr))
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// disk reads one whole disk; false for removable, read-only or empty ones.
func (o DiskOS) disk(ctx context.Context, name string) (Disk, bool) {
	if o.sysInt(name, "removable") == 1 || o.sysInt(name, "ro") == 1 {
		return Disk{}, false
	}
	sectors := o.sysInt(name, "size")
	if sectors <= 0 {
		return Disk{}, false
	}
	d := Disk{Name: name, Dev: "/dev/" + name, Size: sectors * 512, Props: map[string]string{}}
	if out, err := o.Run(ctx, "udevadm", "info", "--query=property", "--name="+d.Dev); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if k, v, ok := strings.Cut(l, "="); ok {
				d.Props[k] = v
			}
		}
	}
	return d, true
}

// Select finds the disk sel names. For min-size it prefers the disk that
// already holds partUUID's partition, then the first blank disk big
// enough, by kernel name.
func (o DiskOS) Select(ctx context.Context, sel node.DiskSelector, partUUID string) (Disk, error) {
	switch sel.Kind {
	case node.DiskPath:
		dev, err := filepath.EvalSymlinks(sel.Value)
		if err != nil {
			return Disk{}, fmt.Errorf("no disk at %s", sel.Value)
		}
		name := filepath.Base(dev)
		if _, err := os.Stat(filepath.Join(o.Sys, "block", name)); err != nil {
			return Disk{}, fmt.Errorf("%s is %s, a partition or not a disk: the state disk is a whole disk", sel.Value, dev)
		}
		d, ok := o.disk(ctx, name)
		if !ok {
			return Disk{}, fmt.Errorf("%s is %s, which is removable, read-only or empty", sel.Value, dev)
		}
		return d, nil
	case node.DiskSerial, node.DiskWWN:
		disks, err := o.Disks(ctx)
		if err != nil {
			return Disk{}, err
		}
		keys := []string{"ID_SERIAL_SHORT", "ID_SERIAL", "ID_SCSI_SERIAL"}
		if sel.Kind == node.DiskWWN {
			keys = []string{"ID_WWN", "ID_WWN_WITH_EXTENSION"}
		}
		var hits []Disk
		for _, d := range disks {
			if slices.ContainsFunc(keys, func(k string) bool { return d.Props[k] != "" && d.Props[k] == sel.Value }) {
				hits = append(hits, d)
			}
		}
		switch len(hits) {
		case 0:
			return Disk{}, fmt.Errorf("no disk has %s %s (disks: %s)", sel.Kind, sel.Value, listDisks(disks))
		case 1:
			return hits[0], nil
		}
		return Disk{}, fmt.Errorf("%d disks have %s %s: %s", len(hits), sel.Kind, sel.Value, listDisks(hits))
	case node.DiskMinSize:
		disks, err := o.Disks(ctx)
		if err != nil {
			return Disk{}, err
		}
		var seen []string
		var blank *Disk
		for i, d := range disks {
			c, err := o.Classify(ctx, d, partUUID)
			if err != nil {
				return Disk{}, err
			}
			if c.Kind == DiskOurs {
				return d, nil
			}
			seen = append(seen, d.String()+": "+c.What)
			if c.Kind == DiskBlank && d.Size >= sel.Bytes && blank == nil {
				blank = &disks[i]
			}
		}
		if blank != nil {
			return *blank, nil
		}
		return Disk{}, fmt.Errorf("no disk holds this machine's state and none of at least %s is blank; disks not plinth's, left untouched: %s",
			node.FormatSize(sel.Bytes), strings.Join(orNone(seen), "; "))
	}
	return Disk{}, fmt.Errorf("state disk selector %q: nothing to select", sel.Kind)
}

func orNone(s []string) []string {
	if len(s) == 0 {
		return []string{"none"}
	}
	return s
}

func listDisks(ds []Disk) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.String())
	}
	return strings.Join(orNone(s), ", ")
}

// What a disk holds.
const (
	DiskOurs    = "ours"    // this machine's state partition
	DiskBlank   = "blank"   // no partition table, no signature
	DiskForeign = "foreign" // anything else, another machine's state included
)

// Contents is what Classify found on a disk.
type Contents struct {
	Kind string
	What string // for people: "blank", "ext4, gpt", ...
	Part string // DiskOurs: the partition's device
}

type sfdiskDump struct {
	PartitionTable struct {
		Label      string `json:"label"`
		Partitions []struct {
			Node string `json:"node"`
			Type string `json:"type"`
			UUID string `json:"uuid"`
			Name string `json:"name"`
		} `json:"partitions"`
	} `json:"partitiontable"`
}

type wipefsDump struct {
	Signatures []struct {
		Offset string `json:"offset"`
		Type   string `json:"type"`
	} `json:"signatures"`
}

// Classify says what d holds: libblkid's signatures (wipefs) decide
// blank; the GPT (sfdisk) finds plinth's partition.
func (o DiskOS) Classify(ctx context.Context, d Disk, partUUID string) (Contents, error) {
	out, err := o.Run(ctx, "wipefs", "--no-act", "--json", d.Dev)
	if err != nil {
		return Contents{}, err
	}
	var w wipefsDump
	if s := strings.TrimSpace(string(out)); s != "" {
		if err := json.Unmarshal([]byte(s), &w); err != nil {
			return Contents{}, fmt.Errorf("wipefs %s: %w", d.Dev, err)
		}
	}
	if len(w.Signatures) == 0 {
		return Contents{Kind: DiskBlank, What: "blank"}, nil
	}
	var types []string
	for _, s := range w.Signatures {
		types = append(types, s.Type+" at "+s.Offset)
	}
	what := strings.Join(slices.Compact(types), ", ")
	if out, err := o.Run(ctx, "sfdisk", "--json", d.Dev); err == nil {
		var t sfdiskDump
		if json.Unmarshal(out, &t) == nil && t.PartitionTable.Label == "gpt" {
			for _, p := range t.PartitionTable.Partitions {
				if !strings.EqualFold(p.Type, node.StatePartType) {
					continue
				}
				if strings.EqualFold(p.UUID, partUUID) {
					return Contents{Kind: DiskOurs, What: "this machine's state partition " + p.Node, Part: p.Node}, nil
				}
				return Contents{Kind: DiskForeign, What: fmt.Sprintf("another machine's plinth state (partition %s, uuid %s; this machine's is %s)", p.Node, strings.ToLower(p.UUID), partUUID)}, nil
			}
			var parts []string
			for _, p := range t.PartitionTable.Partitions {
				parts = append(parts, p.Node)
			}
			if len(parts) > 0 {
				what += "; partitions " + strings.Join(parts, ", ")
			}
		}
	}
	return Contents{Kind: DiskForeign, What: what}, nil
}

// Format partitions d as GPT with one state partition of partUUID over the
// whole disk and makes an ext4 filesystem on it; it returns the
// partition's device.
func (o DiskOS) Format(ctx context.Context, d Disk, partUUID string, wipe bool) (string, error) {
	if wipe {
		if _, err := o.Run(ctx, "wipefs", "--all", "--force", d.Dev); err != nil {
			return "", err
		}
	}
	script := fmt.Sprintf("label: gpt\ntype=%s, uuid=%s, name=%q\n", node.StatePartType, partUUID, node.StatePartLabel)
	cmd := exec.CommandContext(ctx, "sfdisk", "--quiet", "--wipe", "always", "--wipe-partitions", "always", d.Dev)
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("sfdisk %s: %v: %s", d.Dev, err, strings.TrimSpace(string(out)))
	}
	o.Run(ctx, "udevadm", "settle", "--timeout=30")
	out, err := o.Run(ctx, "sfdisk", "--json", d.Dev)
	if err != nil {
		return "", err
	}
	var t sfdiskDump
	if err := json.Unmarshal(out, &t); err != nil || len(t.PartitionTable.Partitions) != 1 {
		return "", fmt.Errorf("sfdisk %s: the new partition table does not read back (%v)", d.Dev, err)
	}
	part := t.PartitionTable.Partitions[0].Node
	for i := 0; ; i++ {
		if _, err := os.Stat(part); err == nil {
			break
		}
		if i == 20 {
			// The kernel did not take the new table when sfdisk asked it
			// to re-read (some loop and container setups): add the
			// partition explicitly.
			o.Run(ctx, "partx", "--update", d.Dev)
		}
		if i == 100 {
			return "", fmt.Errorf("%s: the new partition %s did not appear", d.Dev, part)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := o.Run(ctx, "mkfs.ext4", "-q", "-F", "-L", node.StatePartLabel, "-m", "0", part); err != nil {
		return "", err
	}
	o.Run(ctx, "udevadm", "trigger", "--action=change", d.Dev)
	o.Run(ctx, "udevadm", "settle", "--timeout=30")
	return part, nil
}

// Check runs e2fsck on this machine's state partition before it is
// mounted: what it can fix it fixes; anything else stops the boot.
func (o DiskOS) Check(ctx context.Context, part string) (string, error) {
	cmd := exec.CommandContext(ctx, "e2fsck", "-p", part)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return "clean", nil
	case errors.As(err, &ee) && ee.ExitCode() <= 3:
		return "errors corrected by e2fsck", nil
	}
	return "", fmt.Errorf("e2fsck -p %s: %v: %s (check it by hand: e2fsck %s)", part, err, strings.TrimSpace(string(out)), part)
}

// PrepareState does the step's work on o and returns what it did; a
// refused disk is an error whose status says why.
func PrepareState(ctx context.Context, o DiskOS, st *node.State) (StateStatus, error) {
	sel, err := node.ParseDiskSelector(st.Disk)
	if err != nil {
		return StateStatus{Status: "refused", Message: err.Error()}, err
	}
	d, err := o.Select(ctx, sel, st.PartUUID)
	if err != nil {
		return StateStatus{Status: "refused", Message: "state disk " + st.Disk + ": " + err.Error()}, err
	}
	c, err := o.Classify(ctx, d, st.PartUUID)
	if err != nil {
		return StateStatus{Status: "refused", Disk: d.Dev, Message: err.Error()}, err
	}
	switch {
	case c.Kind == DiskOurs:
		how, err := o.Check(ctx, c.Part)
		if err != nil {
			return StateStatus{Status: "refused", Disk: d.Dev, Message: "state disk " + d.String() + ": " + err.Error()}, err
		}
		return StateStatus{Status: "mounted", Disk: d.Dev, Part: c.Part,
			Message: fmt.Sprintf("state disk %s: this machine's state partition %s (%s), mounted at %s", d, c.Part, how, role.StateDir)}, nil
	case c.Kind == DiskBlank || st.Wipe:
		was := "blank"
		if c.Kind != DiskBlank {
			was = "held " + c.What + ", wiped as the site allows (wipe = true)"
		}
		part, err := o.Format(ctx, d, st.PartUUID, c.Kind != DiskBlank)
		if err != nil {
			return StateStatus{Status: "refused", Disk: d.Dev, Message: "state disk " + d.String() + ": " + err.Error()}, err
		}
		return StateStatus{Status: "formatted", Disk: d.Dev, Part: part,
			Message: fmt.Sprintf("state disk %s: %s; formatted %s as ext4, mounted at %s", d, was, part, role.StateDir)}, nil
	}
	msg := fmt.Sprintf("state disk %s holds %s: not plinth's, left untouched; this machine's role does not start. "+
		"To use this disk, set wipe = true in this machine's state in the site (it erases the disk), or select another disk", d, c.What)
	return StateStatus{Status: "refused", Disk: d.Dev, Message: msg}, errors.New(msg)
}

func stateDisk(ctx context.Context, log *slog.Logger, _ []string) error {
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	if cfg.State == nil {
		return errors.New("the profile has no state disk")
	}
	var st StateStatus
	// Disks may still be appearing (a slow controller, udev's links):
	// a disk that is not found is looked for again for two minutes.
	wait, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for i := 1; ; i++ {
		st, err = PrepareState(ctx, HostDisks, cfg.State)
		if err == nil || st.Disk != "" || wait.Err() != nil {
			break
		}
		log.Info("not yet", "try", i, "err", err)
		select {
		case <-wait.Done():
		case <-time.After(5 * time.Second):
		}
	}
	if b, jerr := json.Marshal(st); jerr == nil {
		if werr := writeAtomic(role.StateStatusFile, string(b)+"\n", 0o644); werr != nil {
			log.Warn("state status not written", "err", werr)
		}
	}
	if err == nil {
		err = linkAtomic(st.Part, role.StatePartLink)
	}
	stage := api.StageState
	if err != nil {
		stage = api.StageError
		fmt.Fprintln(os.Stderr, "plinth: STATE DISK REFUSED: "+st.Message)
	}
	postEvent(ctx, log, cfg, stage, st.Message)
	if err != nil {
		return err
	}
	log.Info("state disk ready", "status", st.Status, "disk", st.Disk, "message", st.Message)
	return nil
}

// linkAtomic points link at target, replacing what was there in one step.
func linkAtomic(target, link string) error {
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return err
	}
	tmp := link + ".new"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, link)
}
