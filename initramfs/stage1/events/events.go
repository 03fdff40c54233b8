// Package events posts boot events to the boot server, best effort: boot
// and the readiness agent never wait long for the operator's screen.
package events

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
)

// Sink receives boot events; Post must return promptly.
type Sink interface {
	Post(ctx context.Context, e api.Event)
}

// Poster sends each event at once with a short timeout and reports the
// error; callers that must not wait use a Queue.
type Poster struct {
	URL     string // the server's base URL + api.PathEvents
	Machine string
	Client  *http.Client
	Timeout time.Duration // per event; default 2s
}

// Send posts one event, stamping the machine (and the time if unset).
func (p *Poster) Send(ctx context.Context, e api.Event) error {
	e.Machine = p.Machine
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("event: %w", err)
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL, bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("event: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	c := p.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("post event: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("post event: %s", resp.Status)
	}
	return nil
}

// Queue holds events until Open (the network is up) and then posts them in
// order from one goroutine. Post never blocks: when the buffer is full the
// event is dropped and counted, since the console already shows it.
type Queue struct {
	p       *Poster
	ch      chan api.Event
	open    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	pending int
	idle    *sync.Cond
	dropped int
	failed  int
}

// NewQueue returns a queue of up to size events in front of p.
func NewQueue(p *Poster, size int) *Queue {
	q := &Queue{p: p, ch: make(chan api.Event, size), open: make(chan struct{})}
	q.idle = sync.NewCond(&q.mu)
	go q.run()
	return q
}

// Post queues e.
func (q *Queue) Post(_ context.Context, e api.Event) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	select {
	case q.ch <- e:
		q.pending++
	default:
		q.dropped++
	}
}

// Open starts sending; events posted before it wait in the buffer.
func (q *Queue) Open() { q.once.Do(func() { close(q.open) }) }

func (q *Queue) run() {
	<-q.open
	for e := range q.ch {
		// A background context: a Post's caller may be gone; Send has its
		// own timeout.
		err := q.p.Send(context.Background(), e)
		q.mu.Lock()
		if err != nil {
			q.failed++
		}
		q.pending--
		q.idle.Broadcast()
		q.mu.Unlock()
	}
}

// Flush waits until every queued event was tried or ctx is done, and
// returns how many events were dropped or failed so far.
func (q *Queue) Flush(ctx context.Context) (lost int) {
	done := make(chan struct{})
	go func() {
		q.mu.Lock()
		for q.pending > 0 && ctx.Err() == nil {
			q.idle.Wait()
		}
		q.mu.Unlock()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		// Wake the waiter so it sees ctx.Err and exits.
		q.mu.Lock()
		q.idle.Broadcast()
		q.mu.Unlock()
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dropped + q.failed + q.pending
}
