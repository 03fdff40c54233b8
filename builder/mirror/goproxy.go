package mirror

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/mod/module"

	"github.com/plinth-dev/plinth/builder"
)

// initramfsPackages are what plinth compiles into an initramfs (its stage-1
// programs and the rescue shell's u-root commands), as builder names them.
// (All of u-root's tools would be 190 MB of modules instead of 93.)
var initramfsPackages = builder.InitramfsPackages()

// collectModules writes, in GOPROXY layout under out, every module the
// initramfs packages of srcDir (or, when srcDir is "", of plinth's own
// module at version, whose hash must be sum) need: `go list -deps` runs against a fresh,
// private module cache (fed from the user's own cache first, then the
// user's GOPROXY), so what that cache downloads is exactly the set. The
// user's module cache and go.mod are never written.
func collectModules(ctx context.Context, srcDir, version, sum, out, tmp string) (string, []string, error) {
	goenv := func(k string) (string, error) {
		o, err := exec.CommandContext(ctx, "go", "env", k).Output()
		if err != nil {
			return "", fmt.Errorf("go env %s: %w", k, err)
		}
		return strings.TrimSpace(string(o)), nil
	}
	ver, err := goenv("GOVERSION")
	if err != nil {
		return "", nil, err
	}
	userCache, err := goenv("GOMODCACHE")
	if err != nil {
		return "", nil, err
	}
	userProxy, err := goenv("GOPROXY")
	if err != nil {
		return "", nil, err
	}
	proxy := "file://" + filepath.Join(userCache, "cache", "download")
	if userProxy != "" && userProxy != "off" {
		proxy += "," + userProxy
	}
	cache, err := os.MkdirTemp(tmp, "gomodcache-")
	if err != nil {
		return "", nil, err
	}
	env := append(os.Environ(), "GOMODCACHE="+cache, "GOPROXY="+proxy, "GOFLAGS=-mod=readonly", "GOWORK=off",
		"GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0")
	defer func() {
		// The module cache is read-only on disk; go knows how to remove it.
		clean := exec.Command("go", "clean", "-modcache")
		clean.Env = env
		_ = clean.Run()
	}()
	if srcDir == "" {
		// A released plinth: its own module goes into the mirror too, and
		// the packages are listed in it.
		if srcDir, err = builder.ReleasedSource(ctx, version, sum, []string{"GOMODCACHE=" + cache, "GOPROXY=" + proxy}); err != nil {
			return "", nil, err
		}
	}
	cmd := exec.CommandContext(ctx, "go", append([]string{"list", "-deps"}, initramfsPackages...)...)
	cmd.Dir, cmd.Env = srcDir, env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", nil, fmt.Errorf("go list -deps %s in %s: %w\n%s", strings.Join(initramfsPackages, " "), srcDir, err, lastLines(stderr.String(), 20))
	}
	dl := filepath.Join(cache, "cache", "download")
	var mods []string
	err = filepath.WalkDir(dl, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dl, p)
		if d.IsDir() {
			if rel == "sumdb" {
				return filepath.SkipDir // checksum database tiles: go.sum vouches instead
			}
			return nil
		}
		switch filepath.Ext(p) {
		case ".info", ".mod", ".zip":
		default:
			return nil // locks, partial downloads, ziphash
		}
		if filepath.Ext(p) == ".mod" {
			if m, ok := modVersion(rel); ok {
				mods = append(mods, m)
			}
		}
		return copyFile(p, filepath.Join(out, rel))
	})
	if err != nil {
		return "", nil, err
	}
	sort.Strings(mods)
	return ver, mods, nil
}

// modVersion turns "github.com/!foo/bar/@v/v1.2.3.mod" into
// "github.com/Foo/bar@v1.2.3".
func modVersion(rel string) (string, bool) {
	dir, file, ok := strings.Cut(filepath.ToSlash(rel), "/@v/")
	if !ok {
		return "", false
	}
	p, err := module.UnescapePath(dir)
	if err != nil {
		return "", false
	}
	v, err := module.UnescapeVersion(strings.TrimSuffix(file, ".mod"))
	if err != nil {
		return "", false
	}
	return p + "@" + v, true
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
