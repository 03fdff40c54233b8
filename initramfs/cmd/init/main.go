// Command init is plinth's stage 1, PID 1 in the initramfs: see package
// stage1. It returns only when boot stopped for good, and then halts,
// repeating why on the console (PID 1 exiting would panic the kernel).
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/initramfs/stage1"
)

func main() {
	// u-root's packages log their own progress; the console shows one
	// line per step, written by stage1.
	log.SetOutput(io.Discard)
	ctx := context.Background()
	con := &stage1.Console{W: os.Stdout}
	linux := stage1.Linux{}
	s := &stage1.Stage1{
		Mounter: linux,
		Modules: linux,
		Net:     linux,
		Kernel:  linux,
		Rescue:  linux,
		Con:     con,
		Files:   os.DirFS("/"),
	}
	s.Fetch = &stage1.Fetcher{
		Client:  stage1.HTTPClient(stage1.CAFile),
		Backoff: stage1.Backoff{Initial: 500 * time.Millisecond, Max: 10 * time.Second},
		OnRetry: func(err error, wait time.Duration) {
			con.Step(ctx, api.StageRetry, "%v; again in %s", err, wait)
		},
	}
	err := s.Run(ctx)
	s.Halt(ctx, err)
	for {
		// Halt returns only if ctx ends, which it does not here.
		fmt.Fprintln(os.Stdout, "plinth: [halt]")
		time.Sleep(time.Hour)
	}
}
