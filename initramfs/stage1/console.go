package stage1

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
)

// Console prints one line per step, "plinth: [stage] message", and forwards
// each line as an event when a sink is set.
type Console struct {
	mu     sync.Mutex
	W      io.Writer
	Events EventSink
}

// EventSink receives boot events; Post must not block boot for long.
type EventSink interface {
	Post(ctx context.Context, e api.Event)
}

// Step prints a step's line and posts it.
func (c *Console) Step(ctx context.Context, stage, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	c.mu.Lock()
	fmt.Fprintf(c.W, "plinth: [%s] %s\n", stage, msg)
	c.mu.Unlock()
	if c.Events != nil {
		c.Events.Post(ctx, api.Event{Stage: stage, Message: msg, Time: time.Now().UTC()})
	}
}
