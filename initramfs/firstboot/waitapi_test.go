package firstboot

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The controller manager and the scheduler wait for what a booting API
// server says on /readyz: a 403 before its RBAC roles exist, a 500 while
// post-start hooks run, then "ok".
func TestWaitReadyWaitsForOK(t *testing.T) {
	answers := []struct {
		code int
		body string
	}{
		{http.StatusForbidden, `{"kind":"Status","message":"forbidden: User \"master-1\" cannot get path \"/readyz\""}`},
		{http.StatusInternalServerError, "[+]ping ok\n[-]poststarthook/rbac/bootstrap-roles failed: reason withheld\nreadyz check failed"},
		{http.StatusOK, "ok"},
	}
	var asked atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		a := answers[min(int(asked.Add(1))-1, len(answers)-1)]
		w.WriteHeader(a.code)
		io.WriteString(w, a.body)
	}))
	defer srv.Close()
	var log strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := waitReady(ctx, slog.New(slog.NewTextHandler(&log, nil)), srv.Client(), srv.URL+"/", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if n := asked.Load(); n != 3 {
		t.Errorf("asked %d times, want 3 (until the ok)", n)
	}
	for _, want := range []string{"403 Forbidden", "500 Internal Server Error: [+]ping ok", "API server ready"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
	}
}

// A server that never gets ready holds the unit until its context ends;
// the error names what it waited for, the log what the server said.
func TestWaitReadyGivesUpWithItsContext(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, "[-]etcd failed: reason withheld\nreadyz check failed")
	}))
	defer srv.Close()
	var log strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := waitReady(ctx, slog.New(slog.NewTextHandler(&log, nil)), srv.Client(), srv.URL, 10*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), srv.URL+"/readyz") {
		t.Errorf("err = %v", err)
	}
	if !strings.Contains(log.String(), "500 Internal Server Error: [-]etcd failed") {
		t.Errorf("log lacks the server's answer:\n%s", log.String())
	}
}
