// Package agent is the readiness agent: it runs on the machine after the
// image's init reached its default target, checks that the machine is what
// plinth promised (an immutable root under a writable overlay, the
// profile's host name, the role's services running) and reports to the
// console and the boot server.
package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/initramfs/stage1"
	"github.com/plinth-dev/plinth/profiles/node"
)

// Mount is one line of /proc/self/mountinfo.
type Mount struct {
	Point   string
	FSType  string
	Options map[string]bool // per-mount and super-block options together
}

// ParseMountinfo reads /proc/self/mountinfo's format.
func ParseMountinfo(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 6 || len(f) < sep+3 {
			return nil, fmt.Errorf("mountinfo: malformed line %q", sc.Text())
		}
		m := Mount{Point: unescape(f[4]), FSType: f[sep+1], Options: map[string]bool{}}
		for _, o := range strings.Split(f[5]+","+f[sep+3], ",") {
			m.Options[o] = true
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// last returns the last mount at point (the one visible there).
func last(ms []Mount, point string) *Mount {
	var found *Mount
	for i := range ms {
		if ms[i].Point == point {
			found = &ms[i]
		}
	}
	return found
}

// Report is what the agent found.
type Report struct {
	Host     string
	Role     string
	Problems []string
	Services map[string]string
}

// Line is the one console line the agent prints.
func (r Report) Line() string {
	if len(r.Problems) > 0 {
		return fmt.Sprintf("plinth-agent: NOT READY host=%s role=%s: %s", r.Host, r.Role, strings.Join(r.Problems, "; "))
	}
	var svc []string
	for _, k := range sortedKeys(r.Services) {
		svc = append(svc, k+"="+r.Services[k])
	}
	line := fmt.Sprintf("plinth-agent: ready host=%s role=%s root=overlay lower=ro upper=rw", r.Host, orNone(r.Role))
	if len(svc) > 0 {
		line += " services=" + strings.Join(svc, ",")
	}
	return line
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func sortedKeys(m map[string]string) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	sort.Strings(k)
	return k
}

// CheckMounts checks the immutable-root promise in a mount table.
func CheckMounts(ms []Mount) []string {
	var p []string
	if root := last(ms, "/"); root == nil || root.FSType != "overlay" {
		p = append(p, "/ is not an overlay")
	}
	lower := last(ms, "/run/plinth/lower")
	switch {
	case lower == nil:
		p = append(p, "no squashfs at /run/plinth/lower")
	case lower.FSType != "squashfs":
		p = append(p, "/run/plinth/lower is "+lower.FSType+", not squashfs")
	case !lower.Options["ro"]:
		p = append(p, "/run/plinth/lower is not read-only")
	}
	return p
}

// Check examines this machine.
func Check(ctx context.Context, services []string) (Report, *node.Config) {
	var r Report
	r.Services = map[string]string{}
	r.Host, _ = os.Hostname()
	b, err := os.ReadFile(stage1.ConfigPath)
	var cfg *node.Config
	if err != nil {
		r.Problems = append(r.Problems, "no profile: "+err.Error())
	} else if cfg, err = node.Decode(b); err != nil {
		r.Problems = append(r.Problems, err.Error())
	} else {
		r.Role = cfg.Role
		if r.Host != cfg.Hostname {
			r.Problems = append(r.Problems, fmt.Sprintf("host name is %q, the profile says %q", r.Host, cfg.Hostname))
		}
	}
	if f, err := os.Open("/proc/self/mountinfo"); err != nil {
		r.Problems = append(r.Problems, err.Error())
	} else {
		ms, err := ParseMountinfo(f)
		f.Close()
		if err != nil {
			r.Problems = append(r.Problems, err.Error())
		}
		r.Problems = append(r.Problems, CheckMounts(ms)...)
	}
	probe := "/var/lib/plinth/.write-probe"
	if err := os.MkdirAll("/var/lib/plinth", 0o755); err != nil {
		r.Problems = append(r.Problems, "/ is not writable: "+err.Error())
	} else if err := os.WriteFile(probe, []byte("x"), 0o600); err != nil {
		r.Problems = append(r.Problems, "/ is not writable: "+err.Error())
	} else {
		os.Remove(probe)
	}
	for _, s := range services {
		out, _ := exec.CommandContext(ctx, "systemctl", "is-active", s).Output()
		state := strings.TrimSpace(string(out))
		r.Services[s] = state
		if state != "active" {
			r.Problems = append(r.Problems, s+" is "+state)
		}
	}
	return r, cfg
}

// Main runs the agent once and returns the process exit status.
func Main() int {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var services []string
	if b, err := os.ReadFile("/etc/plinth/services"); err == nil {
		services = strings.Fields(string(b))
	}
	r, cfg := Check(ctx, services)
	fmt.Println(r.Line())
	if cfg != nil && cfg.Cluster != nil && cfg.Cluster.BootServer != "" {
		stage := api.StageReady
		if len(r.Problems) > 0 {
			stage = api.StageError
		}
		ev := &stage1.HTTPEvents{URL: cfg.Cluster.BootServer + api.PathEvents, Machine: cfg.Machine}
		ev.Post(ctx, api.Event{Stage: stage, Message: r.Line(), Time: time.Now().UTC(), Fields: r.Services})
	}
	if len(r.Problems) > 0 {
		return 1
	}
	return 0
}
