// Package builder turns an image spec into the artifacts a machine boots:
// rootfs.squashfs (the spec's OCI layers flattened), the kernel, the stage-1
// initramfs and manifest.json, in DIR/<name>/. Every expensive step is cached
// by the hash of its inputs, and the output directory is replaced atomically.
package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/plinth-dev/plinth/builder/flatten"
	"github.com/plinth-dev/plinth/builder/source"
	"github.com/plinth-dev/plinth/builder/squashfs"
	"github.com/plinth-dev/plinth/images"
	"github.com/plinth-dev/plinth/internal/fsutil"
	"github.com/plinth-dev/plinth/manifest"
	"github.com/plinth-dev/plinth/roles"
)

// DefaultEpoch is the timestamp of every built file when SOURCE_DATE_EPOCH is
// not set: fixed, so that two builds of one spec give the same bytes.
var DefaultEpoch = time.Unix(0, 0).UTC()

// Options configure a build. The zero value of each field has a useful default
// except Out and CacheDir.
type Options struct {
	Out      string       // artifacts root: outputs go to Out/<spec name>/
	CacheDir string       // content-addressed cache
	Epoch    time.Time    // SOURCE_DATE_EPOCH
	Offline  bool         // fail rather than touch the network
	Log      *slog.Logger //
	Progress Progress     // nil: no progress display
	// SrcDir is the plinth source tree (its go.mod) from which the stage-1
	// programs are compiled into the initramfs with u-root's gobusybox.
	SrcDir string
	// Rescue adds u-root's shell and a few tools to the initramfs, for
	// plinth.rescue=1 on the kernel command line.
	Rescue bool
	// GoEnv is added to the environment of the go commands that compile
	// the initramfs: a mirror's (mirror.GoEnv), for an offline build. (In
	// such a build go: sources come from the mirror as layers: nothing else
	// runs go.)
	GoEnv []string
}

// Result says what a build did.
type Result struct {
	Dir      string
	Manifest *manifest.Manifest
	UpToDate bool // nothing changed: the previous output was kept as it was
}

// Build builds one spec.
func Build(ctx context.Context, spec *images.Spec, o Options) (*Result, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = nopProgress{}
	}
	if o.Epoch.IsZero() {
		o.Epoch = DefaultEpoch
	}
	if o.Out == "" || o.CacheDir == "" {
		return nil, errors.New("build: output and cache directories are required")
	}
	b := &build{spec: spec, o: o, log: o.Log.With("image", spec.Name)}
	return b.run(ctx)
}

type build struct {
	spec *images.Spec
	o    Options
	log  *slog.Logger
	res  *source.Resolver

	layers  []v1.Layer
	sources []manifest.Source
	files   map[string]string // output name → cached file to link in
	kernel  *manifest.Kernel
}

func (b *build) run(ctx context.Context) (*Result, error) {
	start := time.Now()
	for _, d := range []string{b.o.Out, b.o.CacheDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	b.res = &source.Resolver{
		CacheDir: filepath.Join(b.o.CacheDir, "sources"),
		Offline:  b.o.Offline,
		Log:      b.log,
		Epoch:    b.o.Epoch,
	}
	b.files = map[string]string{}

	if err := b.resolveLayers(ctx); err != nil {
		return nil, err
	}
	sqfsVer, err := squashfs.Version(ctx)
	if err != nil {
		return nil, err
	}
	rootKey := b.rootfsKey(sqfsVer)
	var ik *initramfsPlan
	if b.spec.Kernel != nil {
		if ik, err = b.planInitramfs(ctx); err != nil {
			return nil, err
		}
	}
	inputs := b.inputsKey(rootKey, ik)
	outDir := filepath.Join(b.o.Out, b.spec.Name)
	if m, ok := upToDate(outDir, inputs); ok {
		b.log.Info("up to date", "dir", outDir, "elapsed", time.Since(start).Round(time.Millisecond))
		return &Result{Dir: outDir, Manifest: m, UpToDate: true}, nil
	}

	rootfs, err := b.rootfs(ctx, rootKey)
	if err != nil {
		return nil, err
	}
	b.files[manifest.Rootfs] = rootfs
	rootDigest, _, err := b.digest(rootfs)
	if err != nil {
		return nil, err
	}
	if ik != nil {
		if err := b.initramfs(ctx, ik, rootfs, rootDigest); err != nil {
			return nil, err
		}
		if b.wantsMedium() {
			if err := b.media(ctx, ik, rootfs, rootDigest); err != nil {
				return nil, err
			}
		}
	}
	m := &manifest.Manifest{
		Schema:          manifest.Schema,
		Name:            b.spec.Name,
		Description:     b.spec.Description,
		SpecSHA256:      b.spec.SHA256,
		SourceDateEpoch: b.o.Epoch.Unix(),
		Sources:         b.sources,
		Kernel:          b.kernel,
		Inputs:          inputs,
	}
	if b.spec.Role != nil {
		m.Role, m.Services = b.spec.Role.Name, roles.Get(b.spec.Role.Name).Services
	}
	if b.spec.Kernel != nil {
		m.Cmdline = b.spec.Kernel.Cmdline
	}
	if err := b.publish(outDir, b.files, m); err != nil {
		return nil, err
	}
	b.log.Info("built", "dir", outDir, "rootfs", rootDigest, "elapsed", time.Since(start).Round(time.Millisecond))
	return &Result{Dir: outDir, Manifest: m}, nil
}

// resolveLayers resolves every layer source in order and records its digest.
func (b *build) resolveLayers(ctx context.Context) error {
	for i, l := range b.spec.Layers {
		done := b.o.Progress.Start(fmt.Sprintf("resolve %s", l.Source), -1)
		img, err := b.res.Image(ctx, l.Src)
		done.Done()
		if err != nil {
			return fmt.Errorf("%s: layer[%d] %s: %w", b.spec.File, i, l.Source, err)
		}
		d, err := img.Digest()
		if err != nil {
			return fmt.Errorf("layer[%d] %s: digest: %w", i, l.Source, err)
		}
		ls, err := img.Layers()
		if err != nil {
			return fmt.Errorf("layer[%d] %s: layers: %w", i, l.Source, err)
		}
		b.layers = append(b.layers, ls...)
		b.sources = append(b.sources, manifest.Source{Ref: l.Source, Use: "layer", Digest: d.String()})
		b.log.Debug("resolved", "source", l.Source, "digest", d.String(), "layers", len(ls))
	}
	return nil
}

// rootfsKey hashes everything the squashfs depends on: the layer digests in
// order, the epoch and the packer's version.
func (b *build) rootfsKey(tool string) string {
	h := sha256.New()
	fmt.Fprintf(h, "rootfs v1\n%s\n%d\n", tool, b.o.Epoch.Unix())
	for _, l := range b.layers {
		d, err := l.Digest()
		if err != nil {
			// A layer without a digest cannot be cached; hash its position so the key is unique.
			fmt.Fprintf(h, "nodigest %p\n", l)
			continue
		}
		fmt.Fprintln(h, d.String())
	}
	return hex.EncodeToString(h.Sum(nil))
}

// rootfs returns the cached squashfs for key, building it when missing.
func (b *build) rootfs(ctx context.Context, key string) (string, error) {
	dir := filepath.Join(b.o.CacheDir, "rootfs")
	path := filepath.Join(dir, key+".squashfs")
	if _, err := os.Stat(path); err == nil {
		b.log.Info("rootfs from cache", "key", key[:12])
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	b.log.Info("flattening layers", "layers", len(b.layers))
	pr, pw := io.Pipe()
	prog := b.o.Progress.Start("flatten + squashfs", -1)
	errc := make(chan error, 1)
	go func() {
		st, err := flatten.Flatten(ctx, b.layers, progressWriter{pw, prog}, flatten.Options{Epoch: b.o.Epoch})
		pw.CloseWithError(err)
		if err == nil {
			b.log.Info("flattened", "stats", fmt.Sprintf("%+v", st))
		}
		errc <- err
	}()
	err := squashfs.FromTar(ctx, pr, path, squashfs.Options{Epoch: b.o.Epoch})
	pr.CloseWithError(errors.New("squashfs writer stopped"))
	ferr := <-errc
	prog.Done()
	if err != nil {
		// The packer's own error says more than the flattener's broken pipe.
		os.Remove(path)
		return "", fmt.Errorf("squashfs: %w", err)
	}
	if ferr != nil {
		os.Remove(path)
		return "", fmt.Errorf("flatten: %w", ferr)
	}
	return path, nil
}

// inputsKey is the hash of every input of the whole build; an output whose
// manifest records the same key is up to date.
func (b *build) inputsKey(rootKey string, ik *initramfsPlan) string {
	h := sha256.New()
	fmt.Fprintf(h, "build v1\n%s\n%s\n%d\n", b.spec.SHA256, rootKey, b.o.Epoch.Unix())
	for _, s := range b.sources {
		fmt.Fprintf(h, "%s %s %s\n", s.Use, s.Ref, s.Digest)
	}
	if ik != nil {
		fmt.Fprintln(h, ik.key)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// upToDate reports whether dir holds a complete build for inputs.
func upToDate(dir, inputs string) (*manifest.Manifest, bool) {
	m, err := manifest.Read(dir)
	if err != nil || m.Inputs != inputs {
		return nil, false
	}
	for _, f := range m.Files {
		st, err := os.Stat(filepath.Join(dir, f.Name))
		if err != nil || st.Size() != f.Size {
			return nil, false
		}
	}
	return m, true
}

// digest returns the sha256 of an input or cached file. For files in the
// cache it is memoised in a sidecar file, so that a cache hit does not hash
// 100 MB again; files outside the cache (a kernel in a source tree) are
// hashed every time and never written beside.
func (b *build) digest(path string) (string, int64, error) {
	if rel, err := filepath.Rel(b.o.CacheDir, path); err != nil || strings.HasPrefix(rel, "..") {
		return manifest.FileDigest(path)
	}
	side := path + ".sha256"
	st, err := os.Stat(path)
	if err != nil {
		return "", 0, err
	}
	if b, err := os.ReadFile(side); err == nil {
		var rec struct {
			Digest string
			Size   int64
		}
		if json.Unmarshal(b, &rec) == nil && rec.Size == st.Size() {
			return rec.Digest, rec.Size, nil
		}
	}
	d, n, err := manifest.FileDigest(path)
	if err != nil {
		return "", 0, err
	}
	rec, _ := json.Marshal(struct {
		Digest string
		Size   int64
	}{d, n})
	_ = fsutil.WriteFileAtomic(side, rec, 0o644) // a lost memo only costs a re-hash
	return d, n, nil
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
