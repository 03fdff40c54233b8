package firstboot

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The image import says, before each archive, which it is, how far along
// and how big: systemd keeps that as the unit's status, which the agent
// reports while the unit starts. A failed import is retried.
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
	var said, imported []string
	failOnce := true
	imp := func(_ context.Context, p string) error {
		if filepath.Base(p) == "b.tar" && failOnce {
			failOnce = false
			return errors.New("containerd not answering yet")
		}
		imported = append(imported, filepath.Base(p))
		return nil
	}
	err := importArchives(context.Background(), slog.New(slog.DiscardHandler), tars, imp, func(s string) { said = append(said, s) })
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"importing a.tar (1 of 2, 1 MiB)", "importing b.tar (2 of 2, 4 MiB)", "imported 2 archives"}
	if !slices.Equal(said, want) {
		t.Errorf("said %q, want %q", said, want)
	}
	if !slices.Equal(imported, []string{"a.tar", "b.tar"}) {
		t.Errorf("imported %q", imported)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = importArchives(ctx, slog.New(slog.DiscardHandler), tars, func(context.Context, string) error { return errors.New("ctr: no") },
		func(string) {})
	if err == nil || !strings.Contains(err.Error(), "a.tar") || !strings.Contains(err.Error(), "ctr: no") {
		t.Errorf("an import that never succeeds: %v, want the archive and the last error named", err)
	}
}
