package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/plinth-dev/plinth/builder"
	"github.com/plinth-dev/plinth/images"
)

type buildFlags struct {
	out, cache, src string
	offline, rescue bool
	mirror          string
}

func newBuildCmd(g *globals) *cobra.Command {
	f := &buildFlags{}
	c := &cobra.Command{
		Use:   "build [--out DIR] SPEC...",
		Short: "Build the artifacts of image specs into DIR/<name>/",
		Long: `Build each image spec (TOML) into DIR/<name>/: rootfs.squashfs (the spec's layers
flattened), vmlinuz and initramfs.cpio.zst when the spec names a kernel, and
manifest.json with the digest of every file and source. The same inputs give the
same bytes (timestamps from SOURCE_DATE_EPOCH, default 0). Work is cached by
content: a build with nothing changed does nothing. A failed build leaves the
previous output untouched.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			epoch, err := sourceDateEpoch()
			if err != nil {
				return err
			}
			cache, err := cacheDir(f.cache)
			if err != nil {
				return err
			}
			src, _ := findSrcDir(f.src)
			var prog builder.Progress
			if term.IsTerminal(int(os.Stdout.Fd())) {
				prog = newTermProgress(os.Stdout)
			}
			var specs []*images.Spec
			var errs []error
			for _, p := range args {
				s, err := images.Load(p)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				specs = append(specs, s)
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			var goEnv []string
			if f.mirror != "" {
				f.offline = true
				if goEnv, err = useMirror(cmd, f.mirror, cache, specs, g); err != nil {
					return err
				}
			}
			for _, s := range specs {
				if s.Kernel != nil && src == "" {
					return fmt.Errorf("%s: building an initramfs compiles plinth's /init from source: run from the plinth tree or set PLINTH_SRC (or --src)", s.File)
				}
				res, err := builder.Build(ctx, s, builder.Options{
					Out: f.out, CacheDir: cache, Epoch: epoch, Offline: f.offline,
					Log: g.log, Progress: prog, SrcDir: src, Rescue: f.rescue, GoEnv: goEnv,
				})
				if err != nil {
					return fmt.Errorf("build %s: %w", s.Name, err)
				}
				state := "built"
				if res.UpToDate {
					state = "up to date"
				}
				fmt.Fprintf(os.Stdout, "%s: %s in %s\n", s.Name, state, res.Dir)
			}
			return nil
		},
	}
	c.Flags().StringVar(&f.out, "out", "artifacts", "artifacts directory")
	c.Flags().StringVar(&f.cache, "cache", "", "cache directory (default $PLINTH_CACHE or ~/.cache/plinth)")
	c.Flags().StringVar(&f.src, "src", "", "plinth source tree for the initramfs programs (default $PLINTH_SRC or found from the working directory)")
	c.Flags().BoolVar(&f.offline, "offline", false, "never touch the network: every source must be local or cached")
	c.Flags().StringVar(&f.mirror, "mirror", "", "build offline from this mirror (plinth mirror): sources and the initramfs's Go modules come from it alone")
	c.Flags().BoolVar(&f.rescue, "rescue", true, "include a rescue shell in the initramfs (enabled at boot only by plinth.rescue=1)")
	return c
}

// sourceDateEpoch reads SOURCE_DATE_EPOCH, the reproducible-builds convention.
func sourceDateEpoch() (time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return builder.DefaultEpoch, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970 as a whole number", v)
	}
	return time.Unix(n, 0).UTC(), nil
}

func cacheDir(flag string) (string, error) {
	if flag != "" {
		return filepath.Abs(flag)
	}
	if v := os.Getenv("PLINTH_CACHE"); v != "" {
		return filepath.Abs(v)
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory: pass --cache: %w", err)
	}
	return filepath.Join(d, "plinth"), nil
}

const modulePath = "github.com/plinth-dev/plinth"

// findSrcDir locates the plinth source tree: the flag, $PLINTH_SRC, or the
// first parent of the working directory (then of the executable) whose go.mod
// declares plinth's module.
func findSrcDir(flag string) (string, error) {
	for _, v := range []string{flag, os.Getenv("PLINTH_SRC")} {
		if v != "" {
			if !isPlinthModule(v) {
				return "", fmt.Errorf("%s: not the plinth source tree (no go.mod for %s)", v, modulePath)
			}
			return filepath.Abs(v)
		}
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, d := range starts {
		for {
			if isPlinthModule(d) {
				return d, nil
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return "", errors.New("plinth source tree not found")
}

func isPlinthModule(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); strings.HasPrefix(line, "module ") {
			return strings.TrimSpace(strings.TrimPrefix(line, "module ")) == modulePath
		}
	}
	return false
}
