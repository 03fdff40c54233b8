// Package agent is the readiness agent: it runs on the machine after the
// image's init reached multi-user.target, checks that the machine is what
// plinth promised (an immutable squashfs root under a writable overlay, the
// profile's host name, the role's services running) and reports once, on
// the console and to the boot server.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/initramfs/stage1/events"
	"github.com/plinth-dev/plinth/profiles/node"
)

// System is what the agent reads from the machine; tests fake it.
type System interface {
	ReadFile(path string) ([]byte, error)
	Hostname() (string, error)
	// ProbeWrite creates and removes a file in dir.
	ProbeWrite(dir string) error
	// ServiceState is `systemctl is-active NAME`'s answer.
	ServiceState(ctx context.Context, name string) string
}

// Report is what the agent found.
type Report struct {
	Host     string
	Role     string
	Problems []string
	Services map[string]string // unit → state
}

// Ready reports whether nothing is wrong.
func (r *Report) Ready() bool { return len(r.Problems) == 0 }

// Line is the one console line the agent prints; QEMU tests and the boot
// server's status page match its ready form exactly.
func (r *Report) Line() string {
	if r.Ready() {
		return fmt.Sprintf("plinth-agent: ready host=%s role=%s root=overlay lower=ro upper=rw", r.Host, r.Role)
	}
	return fmt.Sprintf("plinth-agent: NOT READY host=%s role=%s: %s", r.Host, r.Role, strings.Join(r.Problems, "; "))
}

// Check examines the machine. The config is nil when it could not be read.
func Check(ctx context.Context, sys System) (*Report, *node.Config) {
	r := &Report{Role: "none", Services: map[string]string{}}
	host, err := sys.Hostname()
	if err != nil {
		r.Problems = append(r.Problems, "host name: "+err.Error())
	}
	r.Host = host
	var cfg *node.Config
	if b, err := sys.ReadFile(role.ConfigPath); err != nil {
		r.Problems = append(r.Problems, "no profile: "+err.Error())
	} else if cfg, err = node.Decode(b); err != nil {
		r.Problems = append(r.Problems, role.ConfigPath+": "+err.Error())
		cfg = nil
	} else {
		if cfg.Role != "" {
			r.Role = cfg.Role
		}
		if host != cfg.Hostname {
			r.Problems = append(r.Problems, fmt.Sprintf("host name is %q, the profile says %q", host, cfg.Hostname))
		}
	}
	if b, err := sys.ReadFile("/proc/self/mountinfo"); err != nil {
		r.Problems = append(r.Problems, err.Error())
	} else if ms, err := ParseMountinfo(strings.NewReader(string(b))); err != nil {
		r.Problems = append(r.Problems, err.Error())
	} else {
		r.Problems = append(r.Problems, CheckMounts(ms)...)
	}
	if err := sys.ProbeWrite("/"); err != nil {
		r.Problems = append(r.Problems, "/ is not writable: "+err.Error())
	}
	services, err := readServices(sys)
	if err != nil {
		r.Problems = append(r.Problems, err.Error())
	}
	for _, s := range services {
		state := sys.ServiceState(ctx, s)
		r.Services[s] = state
		if state != "active" {
			r.Problems = append(r.Problems, s+" is "+state)
		}
	}
	return r, cfg
}

// readServices reads role.ServicesPath; none is fine (role "none").
func readServices(sys System) ([]string, error) {
	b, err := sys.ReadFile(role.ServicesPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	s := strings.Fields(string(b))
	sort.Strings(s)
	return s, nil
}

// Run checks the machine, prints the line to out and posts the report to
// the boot server named by the profile, if any. It returns the process's
// exit status: 1 when not ready, so systemd shows the unit failed.
func Run(ctx context.Context, sys System, out io.Writer, client events.Poster) int {
	r, cfg := Check(ctx, sys)
	fmt.Fprintln(out, r.Line())
	if cfg != nil && cfg.Cluster != nil && cfg.Cluster.BootServer != "" {
		stage := api.StageReady
		if !r.Ready() {
			stage = api.StageError
		}
		p := client
		p.URL = strings.TrimRight(cfg.Cluster.BootServer, "/") + api.PathEvents
		p.Machine = cfg.Machine
		if err := p.Send(ctx, api.Event{Stage: stage, Message: r.Line(), Time: time.Now().UTC(), Fields: r.Services}); err != nil {
			fmt.Fprintf(out, "plinth-agent: report to %s: %v\n", cfg.Cluster.BootServer, err)
		}
	}
	if !r.Ready() {
		return 1
	}
	return 0
}

// Main runs the agent on this machine.
func Main() int {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return Run(ctx, OS{}, os.Stdout, events.Poster{Timeout: 10 * time.Second})
}

// OS is the real machine.
type OS struct{}

var _ System = OS{}

// ReadFile reads a file.
func (OS) ReadFile(p string) ([]byte, error) { return os.ReadFile(p) }

// Hostname is the kernel's host name.
func (OS) Hostname() (string, error) { return os.Hostname() }

// ProbeWrite creates, writes and removes a file in dir.
func (OS) ProbeWrite(dir string) error {
	f, err := os.CreateTemp(dir, ".plinth-agent-probe-*")
	if err != nil {
		return err
	}
	name := f.Name()
	_, err = f.WriteString("probe")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(filepath.Clean(name)); err == nil {
		err = rerr
	}
	return err
}

// ServiceState asks systemctl; "unknown" when it cannot answer.
func (OS) ServiceState(ctx context.Context, name string) string {
	// is-active exits non-zero for anything but active and still prints
	// the state: the output is the answer, the status is not.
	out, _ := exec.CommandContext(ctx, "systemctl", "is-active", "--", name).Output()
	if s := strings.TrimSpace(string(out)); s != "" {
		return s
	}
	return "unknown"
}
