package stage1

import (
	"context"
	"time"
)

// Backoff is an exponential delay between retries: Initial, doubling, never
// more than Max.
type Backoff struct {
	Initial time.Duration // default 500ms
	Max     time.Duration // default 10s
}

// Delay is the wait before retry number attempt (0 for the first retry).
func (b Backoff) Delay(attempt int) time.Duration {
	d, max := b.Initial, b.Max
	if d <= 0 {
		d = 500 * time.Millisecond
	}
	if max <= 0 {
		max = 10 * time.Second
	}
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
