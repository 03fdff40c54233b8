// Command init is plinth's stage 1, PID 1 in the initramfs: see package
// stage1. On failure it says why on the console, then starts a rescue shell
// (plinth.rescue=1), reboots to try again, or halts when retrying cannot
// help (a root file system that fails its digest).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/initramfs/stage1"
)

func main() {
	ctx := context.Background()
	var console io.Writer = os.Stdout
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		console = f
	}
	s := &stage1.Stage1{
		Sys:   stage1.Linux{},
		Con:   &stage1.Console{W: console},
		Files: os.DirFS("/"),
	}
	s.Fetch = &stage1.Fetcher{Client: stage1.HTTPClient(stage1.CAFile), OnRetry: func(err error, wait time.Duration) {
		fmt.Fprintf(console, "plinth: [retry] %v; again in %s\n", err, wait)
	}}
	err := s.Run(ctx)
	// Run returns only on failure.
	s.Con.Step(ctx, api.StageError, "boot failed: %v", err)
	switch {
	case s.Params.Rescue:
		fmt.Fprintln(console, "plinth: [rescue] starting a shell (plinth.rescue=1)")
		for _, sh := range []string{"/bbin/gosh", "/bin/sh"} {
			if _, err := os.Stat(sh); err == nil {
				cmd := exec.Command(sh)
				cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, console, console
				_ = cmd.Run()
			}
		}
	case stage1.IsPermanent(err):
	default:
		fmt.Fprintln(console, "plinth: [error] rebooting in 15s to try again")
		time.Sleep(15 * time.Second)
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	}
	// PID 1 must not exit: say why, forever.
	for {
		fmt.Fprintf(console, "plinth: [halt] %v\n", err)
		time.Sleep(60 * time.Second)
	}
}
