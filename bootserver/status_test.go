package bootserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/internal/testutil"
)

// TestStatusPageUpdatesLiveInABrowser opens the status page in headless
// Chromium, posts an event once the page's Server-Sent Events feed is
// connected, and reads the row back from the live DOM: the row can only
// change through the page's script, since the server rendered the page
// before the event existed. Chromium is driven over --remote-debugging-pipe
// (DevTools protocol, NUL-separated JSON on fds 3 and 4), because
// --dump-dom --virtual-time-budget never returns while an event stream is
// open.
func TestStatusPageUpdatesLiveInABrowser(t *testing.T) {
	chromium := testutil.NeedTool(t, "chromium", "apt-get install -y chromium (make deps does)")
	s, _ := fixture(t, "none")
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := startBrowser(t, ctx, chromium)
	session, eval := b.open(t, ts.URL+"/")

	waitUntil(t, ctx, "the page subscribes to the event stream", func() bool { return subscribers(s) > 0 })
	const row = `(document.getElementById("m-node-1") || {dataset: {}}).dataset.state + "|" + ((document.getElementById("m-node-1") || {}).textContent || "")`
	if got := eval(row); strings.HasPrefix(got, "ready|") {
		t.Fatalf("node-1 is ready before any event: %q", got)
	}
	ev, _ := json.Marshal(api.Event{Machine: "node-1", Stage: api.StageReady, Message: "posted while the page was open",
		Fields: map[string]string{"kubelet": "active", "listen": "tcp/10250"}})
	req, _ := http.NewRequest(http.MethodPost, ts.URL+api.PathEvents, bytes.NewReader(ev))
	resp, err := http.DefaultClient.Do(asMachine(req, "node-1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("event: %s", resp.Status)
	}
	waitUntil(t, ctx, "the page shows node-1 ready", func() bool {
		got := eval(row)
		return strings.HasPrefix(got, "ready|") && strings.Contains(got, "posted while the page was open")
	})
	if got := eval(row); !strings.Contains(got, "kubelet: active") || !strings.Contains(got, "listening tcp/10250") {
		t.Errorf("the row does not show the services the agent reported: %q", got)
	}
	if n := eval(`document.getElementById("machines").dataset.updates || ""`); n == "" || n == "0" {
		t.Errorf("the page counted no updates: %q", n)
	}

	// A journal the machine sends shows as a link that opens it.
	req, _ = http.NewRequest(http.MethodPost, ts.URL+api.LogPath("node-1", "kubelet.service"), strings.NewReader("kubelet: started the journal test\n"))
	resp, err = http.DefaultClient.Do(asMachine(req, "node-1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("journal upload: %s", resp.Status)
	}
	const link = `(document.querySelector('#m-node-1 .journals a') || {href: ""}).href`
	waitUntil(t, ctx, "the page links node-1's kubelet journal", func() bool { return strings.HasSuffix(eval(link), "/v1/machines/node-1/logs/kubelet.service") })
	if _, err := b.call(session, "Runtime.evaluate", map[string]any{"expression": `document.querySelector('#m-node-1 .journals a').click()`}); err != nil {
		t.Fatal(err)
	}
	// The click navigates the tab: until the journal's page has replaced
	// the status page, Chromium may answer an evaluation with "Inspected
	// target navigated or closed" or a destroyed context. That is "not
	// yet", not a failure; any other error still is.
	waitUntil(t, ctx, "the link opens the journal", func() bool {
		res, err := b.call(session, "Runtime.evaluate", map[string]any{"expression": `document.body ? document.body.innerText : ""`, "returnByValue": true})
		if err != nil {
			if strings.Contains(err.Error(), "navigated or closed") || strings.Contains(err.Error(), "context was destroyed") {
				return false
			}
			t.Fatal(err)
		}
		text, _ := res["result"].(map[string]any)["value"].(string)
		return strings.Contains(text, "kubelet: started the journal test")
	})
}

func subscribers(s *Server) int {
	s.state.mu.Lock()
	defer s.state.mu.Unlock()
	return len(s.state.subs)
}

func waitUntil(t *testing.T, ctx context.Context, what string, ok func() bool) {
	t.Helper()
	for !ok() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting until %s: %v", what, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// open opens url in a new tab; eval evaluates a JavaScript expression
// there and returns its string value.
func (b *browser) open(t *testing.T, url string) (session string, eval func(expr string) string) {
	t.Helper()
	target, err := b.call("", "Target.createTarget", map[string]any{"url": url})
	if err != nil {
		t.Fatal(err)
	}
	attached, err := b.call("", "Target.attachToTarget", map[string]any{"targetId": target["targetId"], "flatten": true})
	if err != nil {
		t.Fatal(err)
	}
	session, _ = attached["sessionId"].(string)
	return session, func(expr string) string {
		t.Helper()
		res, err := b.call(session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true})
		if err != nil {
			t.Fatal(err)
		}
		v, _ := res["result"].(map[string]any)["value"].(string)
		return v
	}
}

// browser is a headless Chromium spoken to over its DevTools pipe.
type browser struct {
	w  io.Writer
	r  *bufio.Reader
	id int
}

func startBrowser(t *testing.T, ctx context.Context, chromium string) *browser {
	t.Helper()
	toChrome, ourEnd, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	fromChrome, chromeEnd, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
		"--user-data-dir="+t.TempDir(), "--remote-debugging-pipe", "about:blank")
	cmd.ExtraFiles = []*os.File{toChrome, chromeEnd} // fds 3 and 4
	// Chromium forks renderers that write into the profile: kill the whole
	// group, so nothing outlives the test or races the temp dir's removal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	toChrome.Close()
	chromeEnd.Close()
	t.Cleanup(func() {
		ourEnd.Close()
		_ = cmd.Cancel()
		_ = cmd.Wait()
		fromChrome.Close()
	})
	return &browser{w: ourEnd, r: bufio.NewReader(fromChrome)}
}

// call sends one DevTools command and returns its result, skipping the
// events Chromium sends meanwhile.
func (b *browser) call(session, method string, params any) (map[string]any, error) {
	b.id++
	msg := map[string]any{"id": b.id, "method": method, "params": params}
	if session != "" {
		msg["sessionId"] = session
	}
	out, _ := json.Marshal(msg)
	if _, err := b.w.Write(append(out, 0)); err != nil {
		return nil, fmt.Errorf("%s: %w", method, err)
	}
	for {
		line, err := b.r.ReadBytes(0)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", method, err)
		}
		var reply struct {
			ID     int             `json:"id"`
			Result map[string]any  `json:"result"`
			Error  json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(line[:len(line)-1], &reply); err != nil {
			return nil, fmt.Errorf("%s: %w", method, err)
		}
		if reply.ID != b.id {
			continue
		}
		if reply.Error != nil {
			return nil, fmt.Errorf("%s: %s", method, reply.Error)
		}
		return reply.Result, nil
	}
}

func TestStatusPageAndMachinesShowEachServiceState(t *testing.T) {
	s, _ := fixture(t, "none")
	h := s.Handler()
	ev, _ := json.Marshal(api.Event{Machine: "node-2", Stage: api.StageError, Message: "flanneld is failed",
		Fields: map[string]string{"etcd": "active", "flanneld": "failed", "listen": "tcp/2379 tcp/2380", "unexpected": "tcp/22"}})
	r := asMachine(httptest.NewRequest(http.MethodPost, api.PathEvents, bytes.NewReader(ev)), "node-2")
	r.RemoteAddr = "10.77.0.12:999"
	h.ServeHTTP(httptest.NewRecorder(), r)
	page := getFrom(h, "10.77.0.5", "/").Body.String()
	for _, want := range []string{`data-state="active">etcd: active`, `data-state="failed">flanneld: failed`,
		`listening tcp/2379 tcp/2380`, `class="ports unexpected">unexpected tcp/22`} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	var list []MachineStatus
	if err := json.Unmarshal(getFrom(h, "10.77.0.5", api.PathMachines).Body.Bytes(), &list); err != nil {
		t.Fatal(err)
	}
	for _, st := range list {
		if st.Name == "node-2" && (st.Fields["flanneld"] != "failed" || st.Fields["listen"] != "tcp/2379 tcp/2380") {
			t.Errorf("/v1/machines node-2 fields %v", st.Fields)
		}
	}
}

func TestAgentWaitingForServicesIsAcceptedAndShown(t *testing.T) {
	s, _ := fixture(t, "none")
	ev, _ := json.Marshal(api.Event{Machine: "node-1", Stage: api.StageServices, Message: "waiting for kubelet",
		Fields: map[string]string{"kubelet": "activating"}})
	r := asMachine(httptest.NewRequest(http.MethodPost, api.PathEvents, bytes.NewReader(ev)), "node-1")
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, r)
	if w.Code != http.StatusNoContent {
		t.Fatalf("services event: %d %s", w.Code, w.Body)
	}
	if page := getFrom(s.Handler(), "10.77.0.5", "/").Body.String(); !strings.Contains(page, `data-state="activating">kubelet: activating`) {
		t.Error("the status page does not show the service being waited for")
	}
}

// Event streams are capped: a host opening them by the hundred cannot
// hold a goroutine and a subscription each. The next one is refused with
// 503, and a status page opened then still follows the fleet, by polling.
func TestEventStreamsAreCappedAndThePagePollsBeyond(t *testing.T) {
	chromium := testutil.NeedTool(t, "chromium", "apt-get install -y chromium (make deps does)")
	s, _ := fixture(t, "none")
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	open := func() *http.Response {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+api.PathEventStream, nil)
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	var held []*http.Response
	defer func() {
		for _, r := range held {
			r.Body.Close()
		}
	}()
	for range maxStreams {
		r := open()
		if r.StatusCode != http.StatusOK {
			t.Fatalf("stream %d: %s", len(held)+1, r.Status)
		}
		held = append(held, r)
	}
	r := open()
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("stream %d: %s %s, want 503", maxStreams+1, r.Status, b)
	}

	_, eval := startBrowser(t, ctx, chromium).open(t, ts.URL+"/")
	waitUntil(t, ctx, "the refused page falls back to polling", func() bool {
		return eval(`(document.getElementById("machines") || {dataset: {}}).dataset.mode || ""`) == "poll"
	})
	ev, _ := json.Marshal(api.Event{Machine: "node-1", Stage: api.StageReady, Message: "seen by polling"})
	req, _ := http.NewRequest(http.MethodPost, ts.URL+api.PathEvents, bytes.NewReader(ev))
	resp, err := http.DefaultClient.Do(asMachine(req, "node-1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	const row = `(document.getElementById("m-node-1") || {dataset: {}}).dataset.state + "|" + ((document.getElementById("m-node-1") || {}).textContent || "")`
	waitUntil(t, ctx, "the polling page shows node-1 ready", func() bool {
		got := eval(row)
		return strings.HasPrefix(got, "ready|") && strings.Contains(got, "seen by polling")
	})
}
