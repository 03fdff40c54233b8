// Package compose builds plinth's initramfs: u-root's busybox holding the
// Go /init and the agent (compiled with gobusybox through u-root's mkuimage
// library), the kernel modules stage 1 loads, its settings, and in embedded
// mode the root filesystem and the machine's profile.
//
// The result is a concatenation the kernel unpacks in order: one compressed
// stream holding the busybox archive and the modules archive, then, for
// embedded images, an uncompressed archive with the (already compressed)
// squashfs, started at a 512-byte boundary.
package compose

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"
	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/uio/llog"

	"github.com/plinth-dev/plinth/builder/kernel"
	"github.com/plinth-dev/plinth/initramfs/drivers"
	"github.com/plinth-dev/plinth/internal/fsutil"
	"github.com/plinth-dev/plinth/manifest"
)

// Paths inside the initramfs: the contract with /init.
const (
	ModulesList  = "etc/plinth/modules"
	CmdlineFile  = "etc/plinth/cmdline"
	RootfsFile   = "plinth/rootfs.squashfs"
	DigestFile   = "plinth/rootfs.digest"
	ConfigFile   = "plinth/config.json"
	CACertFile   = "etc/ssl/certs/plinth-ca.pem"
	embeddedAlgn = 512
)

// Config says what goes into one initramfs.
type Config struct {
	// Commands are Go main packages compiled into the busybox; the first
	// becomes /init.
	Commands []string
	// Rescue are extra commands (a shell and tools) for plinth.rescue=1.
	Rescue    []string
	ModuleDir string          // the kernel tree the modules' paths are relative to
	Modules   []kernel.Module // in load order
	// Drivers are loaded by stage 1 when a device matches; their files are
	// relative to ModuleDir too.
	Drivers     *drivers.Index
	Firmware    []Firmware // under lib/firmware
	Cmdline     string     // default parameters, /etc/plinth/cmdline
	CACert      []byte     // optional CA for an https boot server
	Embedded    *Embedded  // rootfs and profile, for booting without a server
	Compression string     // zstd (default) or gzip
	Epoch       time.Time
	CacheDir    string // compiled busybox archives, by input hash
	WorkDir     string // the Go module the commands are resolved in
	// GoEnv is added to the environment of the go commands run here, after
	// the process's own: an offline build's GOPROXY into a mirror.
	GoEnv []string
	Log   *slog.Logger
}

// Firmware is one firmware file of the initramfs.
type Firmware struct {
	Name   string // relative to lib/firmware, e.g. rtl_nic/rtl8168h-2.fw
	Src    string // path on disk
	Digest string // "sha256:<hex>" of Src
}

// Embedded is what an embedded image carries.
type Embedded struct {
	Rootfs       string // path of rootfs.squashfs
	RootfsDigest string // its "sha256:<hex>"
	Config       []byte // node.Config JSON
}

func (c *Config) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

func (c *Config) commands() []string {
	return append(append([]string(nil), c.Commands...), c.Rescue...)
}

// Key hashes what the busybox archive is compiled from: the command list,
// the Go version, the module's go.sum and the Go files of every package of
// the module that the commands use.
func Key(c Config) (string, error) {
	if len(c.Commands) == 0 {
		return "", errors.New("initramfs: no commands")
	}
	h := sha256.New()
	fmt.Fprintf(h, "busybox v1\n%s\n", strings.Join(c.commands(), "\n"))
	ver, err := goCmd(c.WorkDir, c.GoEnv, "env", "GOVERSION")
	if err != nil {
		return "", err
	}
	fmt.Fprintln(h, strings.TrimSpace(ver))
	for _, f := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(c.WorkDir, f))
		if err != nil {
			return "", fmt.Errorf("initramfs: plinth source tree: %w", err)
		}
		h.Write(b)
	}
	out, err := goCmd(c.WorkDir, c.GoEnv, append([]string{"list", "-deps", "-f",
		`{{if and .Module .Module.Main}}{{.Dir}}{{"\t"}}{{join .GoFiles " "}} {{join .EmbedFiles " "}}{{end}}`}, c.commands()...)...)
	if err != nil {
		return "", err
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	sort.Strings(lines)
	for _, l := range lines {
		dir, files, _ := strings.Cut(l, "\t")
		for _, f := range strings.Fields(files) {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				return "", fmt.Errorf("initramfs: busybox key: %w", err)
			}
			rel, _ := filepath.Rel(c.WorkDir, filepath.Join(dir, f))
			fmt.Fprintf(h, "%s %d\n", rel, len(b))
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func goCmd(dir string, env []string, args ...string) (string, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0"), env...)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, ee.Stderr)
		}
		return "", fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// Build writes the initramfs for c to out, atomically.
func Build(ctx context.Context, c Config, out string) error {
	switch c.Compression {
	case "", "zstd", "gzip":
	default:
		return fmt.Errorf("initramfs %s: compression %q: want zstd or gzip", out, c.Compression)
	}
	if e := c.Embedded; e != nil {
		// /init compares the squashfs against this before mounting it: a
		// malformed one would only fail on the machine.
		if _, err := manifest.ParseDigest(e.RootfsDigest); err != nil {
			return fmt.Errorf("initramfs %s: embedded rootfs: %w", out, err)
		}
	}
	bb, err := busybox(ctx, c)
	if err != nil {
		return err
	}
	if err := build(c, bb, out); err != nil {
		return fmt.Errorf("initramfs %s: %w", out, err)
	}
	return nil
}

// build writes the archive parts around the compiled busybox archive bb.
func build(c Config, bb, out string) error {
	return fsutil.WriteAtomic(out, 0o644, func(w io.Writer) error {
		// WriteAtomic hands over its *os.File: the padding before an
		// embedded root needs the size written so far.
		tmp := w.(*os.File)
		bw := bufio.NewWriterSize(tmp, 1<<20)
		var zw io.WriteCloser
		var err error
		switch c.Compression {
		case "", "zstd":
			zw, err = zstd.NewWriter(bw, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1))
		case "gzip":
			zw, err = gzip.NewWriterLevel(bw, gzip.BestCompression)
		default:
			err = fmt.Errorf("compression %q: want zstd or gzip", c.Compression)
		}
		if err != nil {
			return err
		}
		if err := copyFile(zw, bb); err != nil {
			return fmt.Errorf("busybox archive: %w", err)
		}
		if err := writeStage1Extras(zw, c); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
		if c.Embedded != nil {
			if err := bw.Flush(); err != nil {
				return err
			}
			st, err := tmp.Stat()
			if err != nil {
				return err
			}
			if pad := (embeddedAlgn - st.Size()%embeddedAlgn) % embeddedAlgn; pad > 0 {
				if _, err := bw.Write(make([]byte, pad)); err != nil {
					return err
				}
			}
			// The squashfs is compressed already: a raw part costs nothing and
			// lets the kernel copy it without a decompressor pass.
			if err := writeEmbedded(bw, c); err != nil {
				return err
			}
		}
		return bw.Flush()
	})
}

// busybox returns the path of the compiled u-root archive, from the cache
// when its inputs are unchanged (gobusybox always rebuilds everything).
func busybox(ctx context.Context, c Config) (string, error) {
	key, err := Key(c)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(c.CacheDir, 0o755); err != nil {
		return "", fmt.Errorf("initramfs: busybox cache: %w", err)
	}
	path := filepath.Join(c.CacheDir, "busybox-"+key+".cpio")
	if _, err := os.Stat(path); err == nil {
		c.log().Info("initramfs busybox", "key", key[:12], "cache_hit", true)
		return path, nil
	}
	if err := ctx.Err(); err != nil {
		return "", err // before a compile that cannot be interrupted
	}
	tmpDir, err := os.MkdirTemp(c.CacheDir, "build-")
	if err != nil {
		return "", fmt.Errorf("initramfs: busybox cache: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	tmpOut := filepath.Join(tmpDir, "busybox.cpio")
	start := time.Now()
	c.log().Info("compiling initramfs busybox (gobusybox)", "commands", len(c.commands()))
	goroot, err := goCmd(c.WorkDir, c.GoEnv, "env", "GOROOT")
	if err != nil {
		return "", err
	}
	// gobusybox runs go with the process's environment and no more, so it
	// does not see GoEnv. It needs nothing from it: Key, above, has listed
	// the same packages for the same platform under GoEnv, which put every
	// module they need in the module cache, and the toolchain is GOROOT's.
	logger := llog.New(slog.LevelWarn, func(format string, v ...any) { c.log().Debug(fmt.Sprintf(format, v...)) })
	mods := []uimage.Modifier{
		uimage.WithEnv(golang.DisableCGO(), golang.WithGOOS("linux"), golang.WithGOARCH("amd64"), golang.WithWorkingDir(c.WorkDir),
			golang.WithGOROOT(strings.TrimSpace(goroot))),
		uimage.WithTempDir(tmpDir),
		uimage.WithBaseArchive(uimage.DefaultRamfs()),
		uimage.WithBusyboxCommands(c.commands()...),
		uimage.WithInit(cmdName(c.Commands[0])),
		uimage.WithSkipLDD(),
		uimage.WithCPIOOutput(tmpOut),
	}
	for _, r := range c.Rescue {
		if cmdName(r) == "gosh" {
			mods = append(mods, uimage.WithShell("gosh"))
		}
	}
	if err := uimage.Create(logger, mods...); err != nil {
		return "", fmt.Errorf("initramfs: u-root: %w", err)
	}
	// Renamed into place whole, so a concurrent build sees all or nothing.
	if err := fsutil.CommitFile(tmpOut, path, 0o644); err != nil {
		return "", fmt.Errorf("initramfs: busybox cache: %w", err)
	}
	c.log().Info("initramfs busybox", "key", key[:12], "cache_hit", false, "elapsed", time.Since(start).Round(time.Millisecond))
	return path, nil
}

func cmdName(pkg string) string { return path.Base(pkg) }

func copyFile(w io.Writer, p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// archive writes a deterministic newc archive: entries as given (callers
// sort), owner root, fixed mtime.
type archive struct {
	w     *cpio.Writer
	epoch time.Time
	dirs  map[string]bool
}

func newArchive(w io.Writer, epoch time.Time) *archive {
	return &archive{w: cpio.NewWriter(w), epoch: epoch, dirs: map[string]bool{}}
}

func (a *archive) mkdirAll(dir string) error {
	if dir == "." || dir == "" || a.dirs[dir] {
		return nil
	}
	if err := a.mkdirAll(path.Dir(dir)); err != nil {
		return err
	}
	a.dirs[dir] = true
	return a.w.WriteHeader(&cpio.Header{Name: dir, Mode: cpio.TypeDir | 0o755, ModTime: a.epoch, Links: 2})
}

func (a *archive) file(name string, mode cpio.FileMode, size int64, r io.Reader) error {
	if err := a.mkdirAll(path.Dir(name)); err != nil {
		return err
	}
	if err := a.w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeReg | mode, Size: size, ModTime: a.epoch, Links: 1}); err != nil {
		return err
	}
	n, err := io.Copy(a.w, r)
	if err == nil && n != size {
		err = fmt.Errorf("%s: wrote %d of %d bytes", name, n, size)
	}
	return err
}

func (a *archive) bytes(name string, mode cpio.FileMode, b []byte) error {
	return a.file(name, mode, int64(len(b)), strings.NewReader(string(b)))
}

func (a *archive) path(name string, mode cpio.FileMode, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	return a.file(name, mode, st.Size(), f)
}

// writeStage1Extras writes the modules, their load order and the settings,
// sorted by name so that the archive depends on nothing but its contents.
func writeStage1Extras(w io.Writer, c Config) error {
	type file struct {
		src  string // path on disk, or
		data []byte // contents
	}
	files := map[string]file{}
	var order strings.Builder
	for _, m := range c.Modules {
		if !safeRel(m.Path) {
			return fmt.Errorf("module %s: path %q is not a clean relative path", m.Name, m.Path)
		}
		files[m.Path] = file{src: filepath.Join(c.ModuleDir, filepath.FromSlash(m.Path))}
		order.WriteString(m.Path + "\n")
	}
	files[ModulesList] = file{data: []byte(order.String())}
	if c.Drivers != nil && len(c.Drivers.Drivers) > 0 {
		for _, d := range c.Drivers.Drivers {
			for _, p := range d.Load {
				if !safeRel(p) {
					return fmt.Errorf("driver %s: path %q is not a clean relative path", d.Name, p)
				}
				files[p] = file{src: filepath.Join(c.ModuleDir, filepath.FromSlash(p))}
			}
		}
		var idx bytes.Buffer
		if err := c.Drivers.Write(&idx); err != nil {
			return err
		}
		files[drivers.File] = file{data: idx.Bytes()}
	}
	for _, f := range c.Firmware {
		p := "lib/firmware/" + f.Name
		if !safeRel(p) {
			return fmt.Errorf("firmware %q: not a clean relative path", f.Name)
		}
		files[p] = file{src: f.Src}
	}
	if c.Cmdline != "" {
		files[CmdlineFile] = file{data: []byte(c.Cmdline + "\n")}
	}
	if len(c.CACert) > 0 {
		files[CACertFile] = file{data: c.CACert}
	}
	a := newArchive(w, c.Epoch)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		f := files[name]
		var err error
		if f.data != nil {
			err = a.bytes(name, 0o644, f.data)
		} else {
			err = a.path(name, 0o644, f.src)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return a.w.Close()
}

// safeRel reports whether p stays inside the archive root.
func safeRel(p string) bool {
	return p != "" && path.Clean(p) == p && !path.IsAbs(p) && p != ".." && !strings.HasPrefix(p, "../")
}

// writeEmbedded writes the uncompressed archive with the rootfs and profile.
func writeEmbedded(w io.Writer, c Config) error {
	e := c.Embedded
	a := newArchive(w, c.Epoch)
	if err := a.bytes(ConfigFile, 0o600, e.Config); err != nil {
		return err
	}
	if err := a.bytes(DigestFile, 0o644, []byte(e.RootfsDigest+"\n")); err != nil {
		return err
	}
	if err := a.path(RootfsFile, 0o644, e.Rootfs); err != nil {
		return fmt.Errorf("initramfs: rootfs: %w", err)
	}
	return a.w.Close()
}
