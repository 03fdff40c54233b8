package node

import (
	"crypto/sha1"
	"fmt"
	"strconv"
	"strings"
)

// State is the machine's state disk: where the role keeps what must
// survive a reboot (etcd's data; containerd's, Docker's and kubelet's
// state). Without one, that state lives in RAM and is lost at every boot.
type State struct {
	// Disk selects the disk; see ParseDiskSelector.
	Disk string `json:"disk"`
	// Wipe lets the machine erase a disk that holds something other than
	// its own state partition. Only a machine's own entry in the site
	// sets it, never a role default.
	Wipe bool `json:"wipe,omitempty"`
	// PartUUID is the GPT partition UUID of this machine's state
	// partition: the state disk step knows its own partition by it, and a
	// plinth state partition with another UUID belongs to another machine.
	PartUUID string `json:"part_uuid"`
}

// StatePartType is the GPT partition type of a plinth state partition.
const StatePartType = "8c8f8d4b-6e5a-4f2a-9d59-706c696e7468"

// StatePartLabel is the GPT partition name of a plinth state partition.
const StatePartLabel = "plinth-state"

// StatePartUUID is the partition UUID of machine's state partition in
// site: a name-based (version 5) UUID, so the boot server renders the same
// one on every boot and for every server of the site.
func StatePartUUID(site, machine string) string {
	// The namespace is StatePartType's bytes.
	ns := []byte{0x8c, 0x8f, 0x8d, 0x4b, 0x6e, 0x5a, 0x4f, 0x2a, 0x9d, 0x59, 0x70, 0x6c, 0x69, 0x6e, 0x74, 0x68}
	h := sha1.New()
	h.Write(ns)
	h.Write([]byte(site + "/" + machine))
	u := h.Sum(nil)[:16]
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// Disk selector kinds.
const (
	DiskPath    = "path"     // a /dev/disk/by-id or /dev/disk/by-path link
	DiskSerial  = "serial"   // udev's ID_SERIAL_SHORT or ID_SERIAL
	DiskWWN     = "wwn"      // udev's ID_WWN
	DiskMinSize = "min-size" // the first blank disk of at least N bytes
	DiskNone    = "none"     // no state disk (a machine opting out of its role's)
)

// DiskSelector is a parsed State.Disk.
type DiskSelector struct {
	Kind  string
	Value string // the path, serial or WWN
	Bytes int64  // DiskMinSize: the least size
}

// ParseDiskSelector reads a state disk selector:
//
//	/dev/disk/by-id/NAME, /dev/disk/by-path/NAME   that link
//	serial:SERIAL                                  the disk with that serial
//	wwn:WWN                                        the disk with that WWN
//	min-size:N[GiB|TiB|MiB]                        this machine's state disk if
//	                                               a disk holds it, else the
//	                                               first blank disk of at least N
//	none                                           no state disk
func ParseDiskSelector(s string) (DiskSelector, error) {
	switch {
	case s == DiskNone:
		return DiskSelector{Kind: DiskNone}, nil
	case strings.HasPrefix(s, "/dev/disk/by-id/"), strings.HasPrefix(s, "/dev/disk/by-path/"):
		name := s[strings.LastIndexByte(s, '/')+1:]
		if name == "" || strings.Count(s, "/") != 4 || name == "." || name == ".." {
			return DiskSelector{}, fmt.Errorf("%q: want /dev/disk/by-id/NAME or /dev/disk/by-path/NAME", s)
		}
		return DiskSelector{Kind: DiskPath, Value: s}, nil
	case strings.HasPrefix(s, "/"):
		return DiskSelector{}, fmt.Errorf("%q: a kernel name such as /dev/sda can change between boots: use /dev/disk/by-id/ or /dev/disk/by-path/", s)
	}
	kind, v, ok := strings.Cut(s, ":")
	if !ok || v == "" {
		return DiskSelector{}, fmt.Errorf("%q: want /dev/disk/by-id/NAME, /dev/disk/by-path/NAME, serial:S, wwn:W, min-size:N (e.g. 8GiB) or none", s)
	}
	switch kind {
	case DiskSerial, DiskWWN:
		if strings.ContainsAny(v, " \t\n/") {
			return DiskSelector{}, fmt.Errorf("%q: %s has a space or a slash", s, kind)
		}
		return DiskSelector{Kind: kind, Value: v}, nil
	case DiskMinSize:
		n, err := parseSize(v)
		if err != nil {
			return DiskSelector{}, fmt.Errorf("%q: %v", s, err)
		}
		return DiskSelector{Kind: DiskMinSize, Bytes: n}, nil
	}
	return DiskSelector{}, fmt.Errorf("%q: unknown selector %q: want serial, wwn, min-size, a /dev/disk/by-id or by-path link, or none", s, kind)
}

// parseSize reads N followed by MiB, GiB or TiB.
func parseSize(v string) (int64, error) {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"MiB", 20}, {"GiB", 30}, {"TiB", 40}} {
		num, ok := strings.CutSuffix(v, u.suffix)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || n <= 0 || n > 1<<(63-u.shift)-1 {
			return 0, fmt.Errorf("size %q: want a positive whole number before %s", v, u.suffix)
		}
		return n << u.shift, nil
	}
	return 0, fmt.Errorf("size %q: want a number and a unit, MiB, GiB or TiB (e.g. 8GiB)", v)
}

// FormatSize writes a byte count for people: 8.0 GiB, 512.0 MiB, 12 B.
func FormatSize(n int64) string {
	for _, u := range []struct {
		unit  string
		shift uint
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if n >= 1<<u.shift {
			return fmt.Sprintf("%.1f %s", float64(n)/float64(int64(1)<<u.shift), u.unit)
		}
	}
	return fmt.Sprintf("%d B", n)
}
