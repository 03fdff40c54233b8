package source

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/plinth-dev/plinth/builder/ocitar"
	"github.com/plinth-dev/plinth/images"
	"github.com/plinth-dev/plinth/internal/fsutil"
)

var majorRE = regexp.MustCompile(`^v[0-9]+$`)

// BinaryName is the file name a go: source installs as in /usr/bin: the
// last element of the import path, or the one before a /vN suffix.
func BinaryName(pkg string) string {
	elems := strings.Split(pkg, "/")
	n := elems[len(elems)-1]
	if majorRE.MatchString(n) && len(elems) > 1 {
		n = elems[len(elems)-2]
	}
	return n
}

// goProgram builds a Go main package as a static linux/amd64 binary into
// /usr/bin, as one layer. A pinned version is cached by package@version
// and Go version, so it is built once.
func (r *Resolver) goProgram(ctx context.Context, s images.Source) (v1.Image, error) {
	gover, err := exec.CommandContext(ctx, "go", "env", "GOVERSION").Output()
	if err != nil {
		return nil, fmt.Errorf("%s: the go command is needed for go: sources: %w", s.Raw, err)
	}
	key := sha256.Sum256([]byte(fmt.Sprintf("go v1\n%s@%s\n%s\n%d\n", s.Package, s.Version, strings.TrimSpace(string(gover)), r.Epoch.Unix())))
	cached := ""
	if r.CacheDir != "" && s.Pinned() {
		cached = filepath.Join(r.CacheDir, "go", hex.EncodeToString(key[:])+".tar.zst")
		if _, err := os.Stat(cached); err == nil {
			r.log().Debug("go source from cache", "package", s.Package, "version", s.Version)
			return r.goImage(cached)
		}
	}
	if !s.Pinned() && r.Offline && s.Version != "" {
		return nil, fmt.Errorf("%s: %w (pin a version like @v1.2.3)", s.Raw, ErrOffline)
	}
	work, err := os.MkdirTemp(r.tmpDir(), "plinth-go-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	env := append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOWORK=off")
	if r.Offline {
		env = append(env, "GOPROXY=off")
	}
	run := func(dir string, extra []string, args ...string) error {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir, cmd.Env = dir, append(append(env, extra...), r.GoEnv...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return nil
	}
	bin := filepath.Join(work, BinaryName(s.Package))
	dir := r.BaseDir
	// The spec's own module is built as it is: never let go rewrite its
	// go.mod or go.sum. Only the throwaway module may be changed.
	var modFlags []string
	if s.Version != "" {
		dir = filepath.Join(work, "mod")
		modFlags = []string{"GOFLAGS=-mod=mod"}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		if err := run(dir, modFlags, "mod", "init", "plinth.local/gobuild"); err != nil {
			return nil, err
		}
		if err := run(dir, modFlags, "get", s.Package+"@"+s.Version); err != nil {
			if r.Offline {
				return nil, fmt.Errorf("%s: %w: %w", s.Raw, ErrOffline, err)
			}
			return nil, fmt.Errorf("%s: %w", s.Raw, err)
		}
	}
	r.log().Info("building go program", "package", s.Package, "version", s.Version)
	if err := run(dir, modFlags, "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", bin, s.Package); err != nil {
		return nil, fmt.Errorf("%s: %w", s.Raw, err)
	}
	out := cached
	if out == "" {
		out = filepath.Join(work, "layer.tar.zst")
	} else if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return nil, err
	}
	if err := r.binaryTar(bin, out); err != nil {
		return nil, err
	}
	if cached != "" {
		return r.goImage(cached)
	}
	// Not cached: the work directory goes away, so keep the compressed
	// layer in memory.
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayerZStd))
	if err != nil {
		return nil, err
	}
	return ocitar.ImageFromLayers(r.Epoch, l)
}

func (r *Resolver) goImage(tarPath string) (v1.Image, error) {
	l, err := ocitar.LayerFromTar(tarPath)
	if err != nil {
		return nil, err
	}
	return ocitar.ImageFromLayers(r.Epoch, l)
}

// binaryTar writes a zstd-compressed tar holding usr/, usr/bin/ and the
// binary to out, atomically, streaming the binary rather than loading it: a
// kubelet is over 100 MB. Compressing here, single-threaded with fixed
// options, makes the file the layer blob itself, so a cached layer is
// hashed, not compressed again, on every build.
func (r *Resolver) binaryTar(bin, out string) error {
	in, err := os.Open(bin)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	err = fsutil.WriteAtomic(out, 0o644, func(f io.Writer) error {
		zw, err := zstd.NewWriter(f, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
		if err != nil {
			return err
		}
		tw := tar.NewWriter(zw)
		for _, d := range []string{"usr/", "usr/bin/"} {
			if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: r.Epoch, Format: tar.FormatPAX}); err != nil {
				return err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Name: path.Join("usr/bin", filepath.Base(bin)), Typeflag: tar.TypeReg, Mode: 0o755,
			Size: fi.Size(), ModTime: r.Epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		if _, err := io.Copy(tw, in); err != nil {
			return err
		}
		if err := tw.Close(); err != nil {
			return err
		}
		return zw.Close()
	})
	if err != nil {
		return fmt.Errorf("layer for %s: %w", bin, err)
	}
	return nil
}
