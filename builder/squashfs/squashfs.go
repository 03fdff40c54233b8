// Package squashfs writes a squashfs image from a tar stream.
//
// It drives tar2sqfs from Debian's squashfs-tools-ng rather than go-diskfs:
// go-diskfs v1.9.4 writes a corrupt directory table past ~900 entries, makes
// images ~2.4× larger and stamps time.Now() into them (see LIBNOTES.md), and
// Debian bookworm's mksquashfs (4.5.1) cannot read a tar, so it would need the
// flattened tree extracted to disk as root to keep owners and device nodes.
// tar2sqfs streams the flattened tar as it is: owners, modes, device nodes and
// xattrs come from the tar headers, no root needed, and the same tar yields
// the same bytes whatever the number of compressor jobs.
package squashfs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/internal/fsutil"
)

// Tool is the program FromTar runs.
const Tool = "tar2sqfs"

// Options tune the image.
type Options struct {
	Compressor string    // zstd (default), xz, gzip, lz4
	BlockSize  int       // bytes; default 131072
	Epoch      time.Time // mtime of directories the tar does not list
	Jobs       int       // compressor threads; default GOMAXPROCS
}

// Version returns the tar2sqfs version line, part of every cache key so that
// a different packer never reuses an image made by another.
func Version(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, Tool, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w (install Debian's squashfs-tools-ng)", Tool, err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line), nil
}

// FromTar reads a tar stream from r and writes the squashfs image to out,
// through a temporary file in the same directory renamed into place, so out
// is either the old file or a complete new one.
func FromTar(ctx context.Context, r io.Reader, out string, o Options) error {
	if o.Compressor == "" {
		o.Compressor = "zstd"
	}
	if o.Jobs <= 0 {
		o.Jobs = runtime.GOMAXPROCS(0)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpName)

	args := []string{
		"--quiet", "--force", "--no-skip",
		"--compressor", o.Compressor,
		"--num-jobs", strconv.Itoa(o.Jobs),
		"--defaults", fmt.Sprintf("uid=0,gid=0,mode=0755,mtime=%d", o.Epoch.Unix()),
	}
	if o.BlockSize > 0 {
		args = append(args, "--block-size", strconv.Itoa(o.BlockSize))
	}
	args = append(args, tmpName)
	cmd := exec.CommandContext(ctx, Tool, args...)
	cmd.Stdin = r
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s: %w: %s", Tool, err, strings.TrimSpace(stderr.String()))
	}
	return fsutil.CommitFile(tmpName, out, 0o644)
}
