package netlab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Grace is how long Close waits after SIGTERM before SIGKILL.
const grace = 3 * time.Second

// proc is a command started with Start; the lab reaps it.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Command returns a command that runs name inside the lab (through
// `ip netns exec`, which execs name, so cmd.Process is name itself). It runs
// in its own process group, is killed with its group when ctx is done, and
// gets SIGKILL if the test process dies. Run it with Start to have Close
// stop it, or with Run/Output for a short one; whatever is still running
// in the lab when it closes is killed anyway.
func (l *Lab) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.ns, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// Without it, a grandchild holding the output pipes would keep Wait
	// blocked after the group was killed.
	cmd.WaitDelay = 5 * time.Second
	l.mu.Lock()
	l.created[cmd] = true
	l.mu.Unlock()
	return cmd
}

// Start starts cmd, which must come from l.Command, and reaps it: the
// returned channel receives its exit error (nil on success) once, when it
// ends. Callers must not call cmd.Wait. Close stops it (SIGTERM to its
// group, SIGKILL after a grace period).
func (l *Lab) Start(cmd *exec.Cmd) (<-chan error, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("start in lab %s: lab is closed", l.ns)
	}
	if !l.created[cmd] {
		// Refuse: anything else could run outside the namespace.
		return nil, fmt.Errorf("start in lab %s: %v was not made by this lab's Command", l.ns, cmd.Args)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %v in lab %s: %w", cmd.Args[4:], l.ns, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	result := make(chan error, 1)
	go func() {
		p.err = cmd.Wait()
		close(p.done)
		result <- p.err
	}()
	l.procs = append(l.procs, p)
	l.log.Info("started", "pid", cmd.Process.Pid, "cmd", cmd.Args[4:])
	return result, nil
}

// Do runs f on an OS thread that has entered the lab's namespace, so that
// sockets f creates (net.Listen, net.ListenPacket, a Dialer's connection)
// live in the lab and stay there after f returns. Only what f does on its
// own goroutine is in the lab: goroutines it starts are not. The thread
// returns to its own namespace before any other goroutine may run on it.
func (l *Lab) Do(f func() error) error { return Enter(l.ns, f) }

// Enter runs f on an OS thread that has entered the network namespace ns
// (a name under /run/netns), as Do does for a lab of this process.
//
// The thread is put back in its namespace afterwards and reused, not
// ended: a child started with Pdeathsig (every lab process and VM) gets
// that signal when the thread that forked it exits, and the runtime ends
// the thread of a goroutine that exits locked to it. Ending threads here
// killed the boot server started earlier from the same thread. Only if
// the way back fails is the thread left to end (it must never run
// another goroutine inside the lab).
func Enter(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter lab %s: this thread's namespace: %w", ns, err)
			return
		}
		defer unix.Close(home)
		fd, err := unix.Open(nsPath(ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter lab %s: %w", ns, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter lab %s: setns: %w", ns, err)
			return
		}
		err = f()
		if unix.Setns(home, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Close kills every process in the lab (those from Start first, by process
// group, then anything else still in the namespace: SIGTERM, then SIGKILL
// after a grace period) and deletes the namespace, which destroys br0 and
// the taps. It is idempotent.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs := l.procs
	l.mu.Unlock()

	// The test's context may be done by now; cleanup gets its own.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := stopAll(ctx, l.ns, procs)
	if derr := ip(ctx, "netns", "del", l.ns); derr != nil {
		err = errors.Join(err, derr)
	}
	if err != nil {
		return fmt.Errorf("close lab %s: %w", l.ns, err)
	}
	l.log.Info("lab closed")
	return nil
}

// stopAll signals procs' groups and every process in ns, first SIGTERM and
// then, for what survives grace, SIGKILL; it returns once ns is empty.
func stopAll(ctx context.Context, ns string, procs []*proc) error {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		for _, p := range procs {
			select {
			case <-p.done: // reaped: its pgid may belong to someone else now
			default:
				_ = syscall.Kill(-p.cmd.Process.Pid, sig)
			}
		}
		deadline := time.Now().Add(grace)
		for {
			pids, err := nsPids(ctx, ns)
			if err != nil {
				return err
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, sig)
			}
			if len(pids) == 0 && allDone(procs) {
				return nil
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	pids, _ := nsPids(ctx, ns)
	return fmt.Errorf("processes survive SIGKILL in %s: %v", ns, pids)
}

func allDone(procs []*proc) bool {
	for _, p := range procs {
		select {
		case <-p.done:
		default:
			return false
		}
	}
	return true
}

// nsPids lists the processes in ns (zombies have left it already).
func nsPids(ctx context.Context, ns string) ([]int, error) {
	out, err := ipOutput(ctx, "netns", "pids", ns)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("ip netns pids %s: %q is not a pid", ns, f)
		}
		if pid != os.Getpid() { // Do's threads are not processes, but be safe
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
