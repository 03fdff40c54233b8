package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
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
			var src string
			if slices.ContainsFunc(specs, func(s *images.Spec) bool { return s.Kernel != nil }) {
				env := goEnv
				if f.offline && f.mirror == "" {
					env = []string{"GOPROXY=off"}
				}
				if src, err = stage1Source(ctx, f.src, env, g); err != nil {
					return err
				}
			}
			for _, s := range specs {
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
	c.Flags().StringVar(&f.src, "src", "", "plinth source tree for the initramfs programs (default $PLINTH_SRC, found from the working directory, or, for a released plinth, its own version's module through GOPROXY)")
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

const modulePath = builder.ModulePath

// stage1Source returns the directory plinth's stage 1 is compiled from: the
// tree, or else, for a released plinth, its own version's module source,
// fetched through the Go module proxy (env: a mirror's, or GOPROXY=off) and
// checked against the hash this binary was built from.
func stage1Source(ctx context.Context, flag string, env []string, g *globals) (string, error) {
	dir, version, sum, err := stage1Origin(flag)
	if err != nil || dir != "" {
		return dir, err
	}
	g.log.Info("stage 1 from plinth's module source", "version", version)
	return builder.ReleasedSource(ctx, version, sum, env)
}

// stage1Origin says where stage 1 comes from: the tree findSrcDir finds, or
// else the version (and module hash) of a released plinth (installed with
// `go install …@vX`).
func stage1Origin(flag string) (dir, version, sum string, err error) {
	if dir, err = findSrcDir(flag); err == nil {
		return dir, "", "", nil
	}
	if flag != "" || os.Getenv("PLINTH_SRC") != "" {
		return "", "", "", err
	}
	version, sum, ok := releasedVersion()
	if !ok {
		return "", "", "", fmt.Errorf("plinth's stage 1 is compiled from source, and this plinth (version %s) was built from a working tree: "+
			"run it from that tree or set PLINTH_SRC (or --src); a released plinth (go install %s/cmd/plinth@VERSION) fetches its own source", version, modulePath)
	}
	return "", version, sum, nil
}

// releasedVersion is the module version this binary was built as, when it
// names source the Go module proxy can serve: not a working tree's
// "(devel)" nor a version go stamped from a modified checkout.
func releasedVersion() (version, sum string, ok bool) {
	bi, found := debug.ReadBuildInfo()
	if !found || bi.Main.Path != modulePath {
		return "(unknown)", "", false
	}
	v := bi.Main.Version
	if v == "" || v == "(devel)" || strings.HasSuffix(v, "+dirty") {
		if v == "" {
			v = "(devel)"
		}
		return v, "", false
	}
	return v, bi.Main.Sum, true
}

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
