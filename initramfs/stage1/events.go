package stage1

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
)

// HTTPEvents posts events to the boot server, best effort: a short timeout,
// errors dropped, boot never waits long for the operator's screen.
type HTTPEvents struct {
	URL     string
	Machine string
	Client  *http.Client
}

// Post sends one event.
func (h *HTTPEvents) Post(ctx context.Context, e api.Event) {
	if h == nil || h.URL == "" {
		return
	}
	e.Machine = h.Machine
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	c := h.Client
	if c == nil {
		c = &http.Client{Timeout: 2 * time.Second}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(b))
	if err != nil {
		return
	}
	req.Header.Set("Content-Type", "application/json")
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
	}
}
