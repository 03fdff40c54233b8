package events

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/internal/testutil"
)

func recorder(t *testing.T, block chan struct{}) (*httptest.Server, func() []api.Event) {
	var mu sync.Mutex
	var got []api.Event
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if block != nil {
			<-block
		}
		var e api.Event
		json.NewDecoder(r.Body).Decode(&e)
		mu.Lock()
		got = append(got, e)
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	return srv, func() []api.Event { mu.Lock(); defer mu.Unlock(); return append([]api.Event(nil), got...) }
}

func TestQueueHoldsEventsUntilOpenThenSendsThemInOrder(t *testing.T) {
	srv, got := recorder(t, nil)
	q := NewQueue(&Poster{URL: srv.URL + api.PathEvents, Machine: "m1"}, 8)
	for _, s := range []string{api.StageInit, api.StageModules, api.StageNetwork} {
		q.Post(context.Background(), api.Event{Stage: s})
	}
	time.Sleep(20 * time.Millisecond)
	if n := len(got()); n != 0 {
		t.Fatalf("%d events sent before Open", n)
	}
	q.Open()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if lost := q.Flush(ctx); lost != 0 {
		t.Errorf("lost %d", lost)
	}
	ev := got()
	if len(ev) != 3 || ev[0].Stage != api.StageInit || ev[2].Stage != api.StageNetwork || ev[1].Machine != "m1" || ev[1].Time.IsZero() {
		t.Errorf("events %+v", ev)
	}
}

func TestQueuePostNeverBlocksAndFlushHonoursItsDeadline(t *testing.T) {
	block := make(chan struct{})
	srv, _ := recorder(t, block)
	defer close(block)
	q := NewQueue(&Poster{URL: srv.URL, Timeout: 10 * time.Second}, 2)
	q.Open()
	start := time.Now()
	for i := 0; i < 50; i++ {
		q.Post(context.Background(), api.Event{Stage: "x"})
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("50 posts to a stuck server took %v", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if lost := q.Flush(ctx); lost < 47 {
		t.Errorf("lost %d, want the dropped and pending ones counted", lost)
	}
	if time.Since(start) > 2*time.Second {
		t.Error("Flush outlived its context")
	}
}

func TestPosterReportsServerRefusals(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", 403) }))
	defer srv.Close()
	if err := (&Poster{URL: srv.URL}).Send(context.Background(), api.Event{Stage: "x"}); err == nil {
		t.Error("a 403 was taken as delivered")
	}
}

// The agent trusts the CA file stage 1 wrote only if it is the CA the boot
// command line pinned.
func TestTLSClientChecksTheCAFileAgainstThePin(t *testing.T) {
	ca, other := testutil.NewCA(t), testutil.NewCA(t)
	f := TLSFiles{CA: filepath.Join(t.TempDir(), "ca.pem"), Pin: api.CAFingerprint(ca.Cert().Raw)}
	if err := os.WriteFile(f.CA, []byte(ca.CertPEM()), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := TLSClient(f); err != nil {
		t.Errorf("the pinned CA: %v", err)
	}
	if err := os.WriteFile(f.CA, []byte(other.CertPEM()), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := TLSClient(f); err == nil || !strings.Contains(err.Error(), "not the site CA "+api.ParamCA) {
		t.Errorf("another CA under the pin: %v", err)
	}
	if err := os.WriteFile(f.CA, []byte(ca.CertPEM()+other.CertPEM()), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := TLSClient(f); err == nil {
		t.Error("the pinned CA with another beside it was trusted")
	}
}
