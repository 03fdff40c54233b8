package compose

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/builder/kernel"
)

const testInit = "github.com/plinth-dev/plinth/builder/compose/testdata/init"

// cacheDir holds the busybox archives compiled during this test run.
var cacheDir string

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "compose-cache-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cacheDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

func srcDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// logRecorder keeps the "initramfs busybox" log records.
type logRecorder struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	hits []bool
}

func (r *logRecorder) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(writerFunc(func(b []byte) (int, error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		var rec struct {
			Msg      string `json:"msg"`
			CacheHit *bool  `json:"cache_hit"`
		}
		if json.Unmarshal(b, &rec) == nil && rec.Msg == "initramfs busybox" && rec.CacheHit != nil {
			r.hits = append(r.hits, *rec.CacheHit)
		}
		return r.buf.Write(b)
	}), nil))
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// testConfig composes the test init with two fake modules from a tree in a
// fresh directory, so that two configs share no paths.
func testConfig(t *testing.T, log *slog.Logger) Config {
	t.Helper()
	tree := t.TempDir()
	mods := []kernel.Module{
		{Name: "llc", Path: "lib/modules/6.1.0-test/kernel/net/llc/llc.ko"},
		{Name: "stp", Path: "lib/modules/6.1.0-test/kernel/net/802/stp.ko"},
	}
	for _, m := range mods {
		p := filepath.Join(tree, m.Path)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("\x7fELF "+m.Name), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return Config{
		Commands:  []string{testInit},
		ModuleDir: tree,
		Modules:   mods,
		Cmdline:   "plinth.rescue=0 plinth.server=http://10.0.2.2:8080",
		CACert:    []byte("-----BEGIN CERTIFICATE-----\n"),
		Epoch:     time.Unix(1700000000, 0),
		CacheDir:  cacheDir,
		WorkDir:   srcDir(),
		Log:       log,
	}
}

func withEmbedded(t *testing.T, c Config) Config {
	t.Helper()
	root := filepath.Join(t.TempDir(), "rootfs.squashfs")
	if err := os.WriteFile(root, bytes.Repeat([]byte("hsqs"), 3001), 0o644); err != nil {
		t.Fatal(err)
	}
	c.Embedded = &Embedded{Rootfs: root, RootfsDigest: "sha256:" + strings.Repeat("ab", 32), Config: []byte(`{"hostname":"a"}`)}
	return c
}

// compiles skips tests that run gobusybox (about 10 s) under -short.
func compiles(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("compiles a busybox with gobusybox")
	}
}

// primed records the first build of the run, whichever test makes it: it
// starts from the empty cacheDir, so it must compile.
var primed struct {
	once sync.Once
	hits []bool
	err  error
}

func primeCache(t *testing.T) {
	t.Helper()
	primed.once.Do(func() {
		var rec logRecorder
		c := testConfig(t, rec.logger())
		primed.err = Build(context.Background(), c, filepath.Join(t.TempDir(), "first"))
		primed.hits = rec.hits
	})
	if primed.err != nil {
		t.Fatal(primed.err)
	}
}

func buildImage(t *testing.T, c Config) string {
	t.Helper()
	primeCache(t)
	out := filepath.Join(t.TempDir(), "initramfs.cpio.zst")
	if err := Build(context.Background(), c, out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestBuildCompilesOnceThenUsesTheCache(t *testing.T) {
	compiles(t)
	primeCache(t)
	var rec logRecorder
	c := testConfig(t, rec.logger())
	c.Modules = c.Modules[:1] // modules are not part of the busybox
	buildImage(t, c)
	if hits := append(slices.Clone(primed.hits), rec.hits...); !slices.Equal(hits, []bool{false, true}) {
		t.Fatalf("cache hits %v, want a compile then a hit\n%s", hits, rec.buf.String())
	}
	c.Commands = append(c.Commands, "github.com/u-root/u-root/cmds/core/true")
	k1, err := Key(testConfig(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	k2, err := Key(c)
	if err != nil {
		t.Fatal(err)
	}
	if k1 == k2 {
		t.Error("another command list has the same busybox key")
	}
}

func TestBuildIsReproducibleAcrossDirectories(t *testing.T) {
	compiles(t)
	a := buildImage(t, withEmbedded(t, testConfig(t, nil)))
	b := buildImage(t, withEmbedded(t, testConfig(t, nil)))
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb) {
		t.Fatalf("two builds of one config in different directories differ (%d and %d bytes)", len(ab), len(bb))
	}
	later := withEmbedded(t, testConfig(t, nil))
	later.Epoch = later.Epoch.Add(time.Second)
	cb, _ := os.ReadFile(buildImage(t, later))
	if bytes.Equal(ab, cb) {
		t.Fatal("the epoch does not reach the archive")
	}
}

// contents reads every file of the image by name (the last entry of a
// name wins, as when the kernel unpacks it).
func contents(t *testing.T, path string) (map[string]Entry, map[string][]byte) {
	t.Helper()
	ents, data := map[string]Entry{}, map[string][]byte{}
	err := Walk(path, func(e Entry, r io.Reader) error {
		ents[e.Name] = e
		if e.Mode.IsRegular() && e.Size < 1<<20 {
			b, err := io.ReadAll(r)
			if err != nil {
				return err
			}
			data[e.Name] = b
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ents, data
}

func TestBuildWritesTheStage1Layout(t *testing.T) {
	compiles(t)
	c := testConfig(t, nil)
	out := buildImage(t, c)
	ents, data := contents(t, out)
	if e := ents["init"]; e.Mode.Type() != fs.ModeSymlink || e.Linkname != "bbin/init" {
		t.Errorf("/init is %v -> %q, want a symlink to bbin/init", e.Mode, e.Linkname)
	}
	for _, name := range []string{"bbin/init", "bbin/bb"} {
		if _, ok := ents[name]; !ok {
			t.Errorf("no %s", name)
		}
	}
	for _, dir := range []string{"dev", "proc", "sys", "tmp"} {
		if !ents[dir].Mode.IsDir() {
			t.Errorf("no directory /%s from u-root's base archive", dir)
		}
	}
	if e := ents["dev/console"]; e.Mode&fs.ModeCharDevice == 0 {
		t.Errorf("/dev/console is %v, want a character device", e.Mode)
	}
	wantOrder := c.Modules[0].Path + "\n" + c.Modules[1].Path + "\n"
	for name, want := range map[string]string{
		ModulesList:       wantOrder,
		CmdlineFile:       c.Cmdline + "\n",
		CACertFile:        string(c.CACert),
		c.Modules[0].Path: "\x7fELF llc",
		c.Modules[1].Path: "\x7fELF stp",
	} {
		if got := string(data[name]); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	// Everything this package writes itself is owned by root, dated the
	// epoch and sorted.
	all, err := Inspect(out)
	if err != nil {
		t.Fatal(err)
	}
	var own []string
	for _, e := range all {
		if e.Part != 0 || e.Archive != 1 {
			continue // u-root's archive, or the embedded part
		}
		own = append(own, e.Name)
		if e.UID != 0 || e.GID != 0 || !e.ModTime.Equal(c.Epoch) {
			t.Errorf("%s: uid %d gid %d mtime %v", e.Name, e.UID, e.GID, e.ModTime)
		}
	}
	if !slices.IsSorted(own) || len(own) < 5 {
		t.Errorf("entries not sorted: %q", own)
	}
	if _, ok := ents[RootfsFile]; ok {
		t.Error("a netboot image carries a rootfs")
	}
}

func TestBuildAppendsTheEmbeddedRootfsUncompressedAndAligned(t *testing.T) {
	compiles(t)
	c := withEmbedded(t, testConfig(t, nil))
	out := buildImage(t, c)
	img, _ := os.ReadFile(out)
	root, _ := os.ReadFile(c.Embedded.Rootfs)
	ents, data := contents(t, out)
	sq := ents[RootfsFile]
	if sq.Part != 1 || sq.Compression != "" || sq.PartOffset%512 != 0 || sq.PartOffset == 0 {
		t.Fatalf("rootfs in part %d (%q) at %d, want the raw second part on a 512-byte boundary", sq.Part, sq.Compression, sq.PartOffset)
	}
	if sq.DataOffset < 0 || !bytes.Equal(img[sq.DataOffset:sq.DataOffset+sq.Size], root) {
		t.Error("the squashfs is not stored verbatim at its data offset")
	}
	if got := string(data[DigestFile]); got != c.Embedded.RootfsDigest+"\n" {
		t.Errorf("digest file %q", got)
	}
	if e := ents[ConfigFile]; e.Mode.Perm() != 0o600 || e.Part != 1 || string(data[ConfigFile]) != string(c.Embedded.Config) {
		t.Errorf("config entry %+v", e)
	}
	if ents["init"].Part != 0 || ents[ModulesList].Part != 0 || ents[ModulesList].Compression != "zstd" {
		t.Error("stage 1 is not in the compressed first part")
	}
}

func TestBuildGzip(t *testing.T) {
	compiles(t)
	c := withEmbedded(t, testConfig(t, nil))
	c.Compression = "gzip"
	ents, _ := contents(t, buildImage(t, c))
	if e := ents[ModulesList]; e.Compression != "gzip" {
		t.Errorf("modules list in %q part", e.Compression)
	}
	if e := ents[RootfsFile]; e.Part != 1 || e.PartOffset%512 != 0 {
		t.Errorf("rootfs %+v", e)
	}
}

func TestBuildRefusesBadConfigs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		error string
	}{
		{"no commands", func(c *Config) { c.Commands = nil }, "no commands"},
		{"unknown compression", func(c *Config) { c.Compression = "lz4" }, "want zstd or gzip"},
		{"malformed rootfs digest", func(c *Config) { c.Embedded.RootfsDigest = "sha256:abc" }, "embedded rootfs"},
		{"a module path leaving the root", func(c *Config) { c.Modules[0].Path = "../etc/shadow" }, "not a clean relative path"},
		{"a missing module file", func(c *Config) { c.Modules[0].Path = "lib/modules/x/nosuch.ko" }, "nosuch.ko"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() && strings.Contains(tc.name, "module") {
				t.Skip("needs the busybox")
			}
			c := withEmbedded(t, testConfig(t, nil))
			tc.edit(&c)
			out := filepath.Join(t.TempDir(), "out")
			err := Build(context.Background(), c, out)
			if err == nil || !strings.Contains(err.Error(), tc.error) {
				t.Fatalf("Build = %v, want an error with %q", err, tc.error)
			}
			if left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), "*")); len(left) > 0 {
				t.Errorf("a failed build left %v", left)
			}
		})
	}
}

// TestGoEnvReachesTheGoCommands gives the go commands, through GoEnv alone,
// an empty module cache and no proxy: listing stage 1's packages must then
// fail for want of its modules, and the process's environment is left as
// it was.
func TestGoEnvReachesTheGoCommands(t *testing.T) {
	c := testConfig(t, nil)
	c.Commands = []string{"github.com/plinth-dev/plinth/initramfs/cmd/init"} // needs modules besides plinth
	if _, err := Key(c); err != nil {
		t.Fatalf("Key without GoEnv: %v", err)
	}
	before := os.Environ()
	c.GoEnv = []string{"GOMODCACHE=" + t.TempDir(), "GOPROXY=off"}
	if _, err := Key(c); err == nil || !strings.Contains(err.Error(), "GOPROXY=off") {
		t.Errorf("Key with an empty module cache and GOPROXY=off in GoEnv: %v, want go's refusal to look modules up", err)
	}
	if after := os.Environ(); !slices.Equal(after, before) {
		t.Error("Key changed the process's environment")
	}
}
