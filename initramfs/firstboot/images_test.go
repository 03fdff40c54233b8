package firstboot

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The image import says, before each archive, which it is, how far along
// and how big, and while it imports how much it has read and for how long:
// systemd keeps that as the unit's status, which the agent reports while
// the unit starts. A failed import is retried.
func TestImportArchivesSaysWhichAndHowFar(t *testing.T) {
	dir := t.TempDir()
	var tars []string
	for name, size := range map[string]int{"a.tar": 10, "b.tar": 3<<20 + 1} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
		tars = append(tars, p)
	}
	slices.Sort(tars)
	var (
		mu       sync.Mutex
		said     []string
		imported []string
	)
	say := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		said = append(said, s)
	}
	saidSoFar := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(said)
	}
	failOnce := true
	imp := func(ctx context.Context, p string, read *atomic.Int64) error {
		if filepath.Base(p) == "b.tar" && failOnce {
			failOnce = false
			return errors.New("containerd not answering yet")
		}
		if filepath.Base(p) == "b.tar" {
			// Half read, then all of it and unpacking: the status says each.
			read.Store(3 << 19)
			waitFor(t, saidSoFar, "2 MiB read")
			read.Store(3<<20 + 1)
			waitFor(t, saidSoFar, "read, unpacking")
		}
		imported = append(imported, filepath.Base(p))
		return nil
	}
	if err := importArchives(context.Background(), slog.New(slog.DiscardHandler), tars, imp, say, time.Minute, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	got := saidSoFar()
	for _, want := range []string{"importing a.tar (1 of 2, 1 MiB)", "importing b.tar (2 of 2, 4 MiB)", "imported 2 archives"} {
		if !slices.Contains(got, want) {
			t.Errorf("never said %q (said %q)", want, got)
		}
	}
	if got[len(got)-1] != "imported 2 archives" {
		t.Errorf("last said %q, want the end", got[len(got)-1])
	}
	if !slices.Equal(imported, []string{"a.tar", "b.tar"}) {
		t.Errorf("imported %q", imported)
	}

	// Each archive has its limit; the error names the archive and why.
	err := importArchives(context.Background(), slog.New(slog.DiscardHandler), tars,
		func(context.Context, string, *atomic.Int64) error { return errors.New("ctr: no") }, func(string) {}, 10*time.Millisecond, time.Hour)
	if err == nil || !strings.Contains(err.Error(), "a.tar") || !strings.Contains(err.Error(), "ctr: no") {
		t.Errorf("an import that never succeeds: %v, want the archive and the last error named", err)
	}
}

// waitFor waits until some status line said so far contains s.
func waitFor(t *testing.T, said func() []string, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if slices.ContainsFunc(said(), func(l string) bool { return strings.Contains(l, s) }) {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("no status line said %q: %q", s, said())
}
