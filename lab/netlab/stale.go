package netlab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
)

// netnsDir is where ip(8) keeps named namespaces (NETNS_RUN_DIR).
const netnsDir = "/var/run/netns"

func nsPath(ns string) string { return filepath.Join(netnsDir, ns) }

// Exists says whether the named network namespace exists (a lab that
// still runs, or one RemoveStale has not removed yet).
func Exists(ns string) bool {
	if ns == "" || filepath.Base(ns) != ns {
		return false
	}
	_, err := os.Stat(nsPath(ns))
	return err == nil
}

// labNameRE matches formatName's output, and nothing another tool names.
var labNameRE = regexp.MustCompile(`^plinth-nl-([a-z0-9]{1,12})-([1-9][0-9]{0,9})-([0-9a-f]{6})$`)

// formatName is the namespace name of the lab label made by pid.
func formatName(label string, pid int, random string) string {
	return fmt.Sprintf("plinth-nl-%s-%d-%s", label, pid, random)
}

// parseName returns the pid that made the lab namespace ns, or ok=false
// if ns is not a lab's.
func parseName(ns string) (pid int, ok bool) {
	m := labNameRE.FindStringSubmatch(ns)
	if m == nil {
		return 0, false
	}
	pid, err := strconv.Atoi(m[2])
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

// alive says whether a process with this pid exists (EPERM: it does).
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// RemoveStale deletes the namespaces of labs whose process is gone (a
// test binary or a qemu up killed before its cleanup ran), with whatever
// still runs in them, and returns the names it deleted. A recycled pid
// hides a leftover until that process ends; failures are only logged,
// since they do not stop a new lab from working.
func RemoveStale(ctx context.Context, log *slog.Logger) []string {
	var removed []string
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			log.Warn("list namespaces", "err", err)
		}
		return nil
	}
	for _, e := range entries {
		pid, ok := parseName(e.Name())
		if !ok || alive(pid) {
			continue
		}
		ns := e.Name()
		err := stopAll(ctx, ns, nil)
		if err == nil {
			err = ip(ctx, "netns", "del", ns)
		}
		if err != nil {
			log.Warn("remove stale lab", "netns", ns, "err", err)
			continue
		}
		log.Info("removed stale lab", "netns", ns, "pid", pid)
		removed = append(removed, ns)
	}
	return removed
}
