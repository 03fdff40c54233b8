package agent

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
)

// Mount is one line of /proc/self/mountinfo.
type Mount struct {
	ID, Parent int
	Point      string
	FSType     string
	Source     string
	Options    map[string]string // per-mount options ("ro", "relatime")
	Super      map[string]string // super-block options ("lowerdir" → path)
}

// ReadOnly reports whether the mount or its super block is read-only.
func (m *Mount) ReadOnly() bool {
	_, a := m.Options["ro"]
	_, b := m.Super["ro"]
	return a || b
}

// ParseMountinfo reads the format of /proc/self/mountinfo (proc(5)): ID,
// parent, major:minor, root, mount point, options, optional fields up to
// "-", then type, source and super-block options.
func ParseMountinfo(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || len(f) < sep+3 {
			return nil, fmt.Errorf("mountinfo line %d: malformed: %q", n, line)
		}
		id, err1 := strconv.Atoi(f[0])
		parent, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("mountinfo line %d: bad mount ids: %q", n, line)
		}
		super := ""
		if len(f) > sep+3 {
			super = f[sep+3]
		}
		out = append(out, Mount{
			ID: id, Parent: parent,
			Point:   unescape(f[4]),
			FSType:  f[sep+1],
			Source:  unescape(f[sep+2]),
			Options: options(f[5]),
			Super:   options(super),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mountinfo: %w", err)
	}
	return out, nil
}

func options(s string) map[string]string {
	m := map[string]string{}
	for _, o := range strings.Split(s, ",") {
		if o == "" {
			continue
		}
		k, v, _ := strings.Cut(o, "=")
		m[k] = unescape(v)
	}
	return m
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// at returns the mount visible at point: the last one mounted there.
func at(ms []Mount, point string) *Mount {
	var found *Mount
	for i := range ms {
		if ms[i].Point == point {
			found = &ms[i]
		}
	}
	return found
}

// containing returns the mount that holds p: the longest mount point that
// is p or a parent of it.
func containing(ms []Mount, p string) *Mount {
	var best *Mount
	for i := range ms {
		mp := ms[i].Point
		if p == mp || mp == "/" || strings.HasPrefix(p, strings.TrimSuffix(mp, "/")+"/") {
			if best == nil || len(mp) >= len(best.Point) {
				best = &ms[i]
			}
		}
	}
	return best
}

// DefaultLower is where stage 1 mounts the squashfs.
const DefaultLower = "/run/plinth/lower"

// CheckMounts checks plinth's promise in a mount table: / is an overlay
// whose lower layer is a read-only squashfs and whose upper layer is on a
// writable tmpfs. It returns what is wrong, nothing on a good machine.
func CheckMounts(ms []Mount) []string {
	root := at(ms, "/")
	if root == nil {
		return []string{"no mount at / in mountinfo"}
	}
	if root.FSType != "overlay" {
		return []string{"/ is " + root.FSType + ", not an overlay"}
	}
	var p []string
	// The overlay names its layers by the paths they had when stage 1
	// mounted it; after switch_root those are the same paths under /run.
	lowers := strings.Split(root.Super["lowerdir"], ":")
	lower := at(ms, path.Clean(lowers[len(lowers)-1]))
	if lower == nil {
		lower = at(ms, DefaultLower)
	}
	switch {
	case lower == nil:
		p = append(p, fmt.Sprintf("overlay lower %q is not a mount and nothing is at %s", root.Super["lowerdir"], DefaultLower))
	case lower.FSType != "squashfs":
		p = append(p, fmt.Sprintf("lower layer %s is %s, not squashfs", lower.Point, lower.FSType))
	case !lower.ReadOnly():
		p = append(p, fmt.Sprintf("lower layer %s is not read-only", lower.Point))
	}
	if up := root.Super["upperdir"]; up == "" {
		p = append(p, "overlay at / has no upper layer")
	} else if m := containing(ms, path.Clean(up)); m != nil && m != root {
		switch {
		case m.FSType != "tmpfs":
			p = append(p, fmt.Sprintf("upper layer %s is on %s, not tmpfs", up, m.FSType))
		case m.ReadOnly():
			p = append(p, fmt.Sprintf("upper layer %s is read-only", up))
		}
	}
	if root.ReadOnly() {
		p = append(p, "/ is mounted read-only")
	}
	return p
}
