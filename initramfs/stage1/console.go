package stage1

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/initramfs/stage1/events"
)

// Console prints one line per step, "plinth: [stage] message", and forwards
// each line as an event when a sink is set.
type Console struct {
	mu     sync.Mutex
	W      io.Writer
	Events events.Sink // nil until the boot server is known
	last   string      // the last failure line, repeated by Halt
}

// Step prints a step's line and posts it as an event of that stage.
func (c *Console) Step(ctx context.Context, stage, format string, args ...any) {
	c.line(ctx, stage, stage, fmt.Sprintf(format, args...))
}

// Fail prints a failure under its stage and posts it as an error event,
// so the boot server's status page shows it in red.
func (c *Console) Fail(ctx context.Context, stage, format string, args ...any) {
	c.line(ctx, stage, api.StageError, fmt.Sprintf(format, args...))
}

func (c *Console) line(ctx context.Context, stage, event, msg string) {
	c.mu.Lock()
	line := fmt.Sprintf("plinth: [%s] %s\n", stage, msg)
	io.WriteString(c.W, line)
	if event == api.StageError {
		c.last = line
	}
	sink := c.Events
	c.mu.Unlock()
	if sink != nil {
		if event == api.StageError && stage != api.StageError {
			msg = "[" + stage + "] " + msg
		}
		sink.Post(ctx, api.Event{Stage: event, Message: msg, Time: time.Now().UTC()})
	}
}

// SetEvents sets the sink for the lines that follow.
func (c *Console) SetEvents(s events.Sink) {
	c.mu.Lock()
	c.Events = s
	c.mu.Unlock()
}
