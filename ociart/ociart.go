// Package ociart keeps one built image — its kernel, initramfs, root file
// system and manifest.json — in an OCI registry as one OCI artifact: an
// OCI image manifest whose artifactType says it is a plinth image, with an
// empty config and one layer per file, each blob the file itself (so the
// layer digests are the digests plinth's own manifest names). Push writes
// it; Pull fetches it by digest into a local artifact directory, checking
// every blob against the registry manifest and every file against the
// image's manifest.json, and caches it by digest.
package ociart

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/plinth-dev/plinth/internal/fsutil"
	"github.com/plinth-dev/plinth/manifest"
)

// Media types of a plinth image artifact.
const (
	ArtifactType  = "application/vnd.plinth.image.v1"
	ManifestType  = "application/vnd.plinth.manifest.v1+json" // manifest.json
	KernelType    = "application/vnd.plinth.kernel.v1"
	InitramfsType = "application/vnd.plinth.initramfs.v1"
	RootfsType    = "application/vnd.plinth.rootfs.squashfs.v1"
	FileType      = "application/vnd.plinth.file.v1" // any other file the manifest lists
	emptyType     = "application/vnd.oci.empty.v1+json"
	// titleKey names each layer's file, as OCI's annotation for it says.
	titleKey = "org.opencontainers.image.title"
	// nameKey and roleKey carry the image's name and role on the manifest.
	nameKey = "dev.plinth.image.name"
	roleKey = "dev.plinth.image.role"
)

// The empty config every artifact carries ("{}"), as the OCI image spec
// asks of artifacts with no config of their own.
var emptyConfig = []byte("{}")

func fileType(n string) types.MediaType {
	switch {
	case n == manifest.FileName:
		return ManifestType
	case n == manifest.KernelFile:
		return KernelType
	case n == manifest.Rootfs:
		return RootfsType
	case strings.HasPrefix(n, "initramfs"):
		return InitramfsType
	}
	return FileType
}

// Options are the registry client's: credentials come from the user's
// Docker configuration (DOCKER_CONFIG or ~/.docker/config.json, with its
// credential helpers) unless Remote says otherwise.
type Options struct {
	Remote []remote.Option
	Log    *slog.Logger
}

func (o Options) remote(ctx context.Context) []remote.Option {
	return append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}, o.Remote...)
}

func (o Options) log() *slog.Logger {
	if o.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Log
}

// Push publishes the artifact directory dir (a built image: manifest.json
// and the files it lists, checked against it first) to ref, a tag or a
// repository, and returns the pushed manifest's reference by digest. Blobs
// the registry has already are not sent again.
func Push(ctx context.Context, dir, ref string, o Options) (name.Digest, error) {
	m, err := manifest.Read(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return name.Digest{}, fmt.Errorf("%s: not a built image (no %s): push DIR/NAME as plinth build --out DIR wrote it", dir, manifest.FileName)
	}
	if err != nil {
		return name.Digest{}, err
	}
	if err := manifest.Verify(dir, m); err != nil {
		return name.Digest{}, fmt.Errorf("%s: not pushed: %w", dir, err)
	}
	tag, err := name.ParseReference(ref)
	if err != nil {
		return name.Digest{}, fmt.Errorf("%s: %w", ref, err)
	}
	if _, ok := tag.(name.Digest); ok {
		return name.Digest{}, fmt.Errorf("%s: push to a tag or a repository; the digest is what the registry gives back", ref)
	}
	repo := tag.Context()
	ropts := o.remote(ctx)
	desc := func(mt types.MediaType, p string, digest string, size int64) (v1.Descriptor, error) {
		h, err := v1.NewHash(digest)
		if err != nil {
			return v1.Descriptor{}, err
		}
		return v1.Descriptor{MediaType: mt, Size: size, Digest: h, Annotations: map[string]string{titleKey: filepath.Base(p)}}, nil
	}
	var layers []v1.Descriptor
	var blobs []fileBlob
	mdigest, msize, err := manifest.FileDigest(filepath.Join(dir, manifest.FileName))
	if err != nil {
		return name.Digest{}, err
	}
	files := append([]manifest.File{{Name: manifest.FileName, SHA256: mdigest, Size: msize}}, m.Files...)
	for _, f := range files {
		p := filepath.Join(dir, f.Name)
		d, err := desc(fileType(f.Name), p, f.SHA256, f.Size)
		if err != nil {
			return name.Digest{}, fmt.Errorf("%s: %w", p, err)
		}
		layers = append(layers, d)
		blobs = append(blobs, fileBlob{path: p, desc: d})
	}
	cfgHash, cfgSize, err := v1.SHA256(bytes.NewReader(emptyConfig))
	if err != nil {
		return name.Digest{}, err
	}
	mf := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  ArtifactType,
		Config:        v1.Descriptor{MediaType: emptyType, Size: cfgSize, Digest: cfgHash, Data: emptyConfig},
		Layers:        layers,
		Annotations:   map[string]string{nameKey: m.Name},
	}
	if m.Role != "" {
		mf.Annotations[roleKey] = m.Role
	}
	raw, err := json.Marshal(mf)
	if err != nil {
		return name.Digest{}, err
	}
	blobs = append(blobs, fileBlob{data: emptyConfig, desc: mf.Config})
	for _, b := range blobs {
		o.log().Info("pushing", "file", b.desc.Annotations[titleKey], "digest", b.desc.Digest.String(), "size", b.desc.Size, "to", repo.String())
		if err := remote.WriteLayer(repo, b, ropts...); err != nil {
			return name.Digest{}, fmt.Errorf("push %s to %s: %w", b.name(), repo, describe(repo.RegistryStr(), err))
		}
	}
	if err := remote.Put(tag, rawManifest{raw: raw}, ropts...); err != nil {
		return name.Digest{}, fmt.Errorf("push the manifest of %s to %s: %w", dir, tag, describe(repo.RegistryStr(), err))
	}
	h, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return name.Digest{}, err
	}
	return repo.Digest(h.String()), nil
}

// describe turns a registry's refusal of credentials into words that name
// the registry and say where credentials come from.
func describe(registry string, err error) error {
	var te *transport.Error
	if errors.As(err, &te) && (te.StatusCode == 401 || te.StatusCode == 403) {
		return fmt.Errorf("registry %s refused the credentials (HTTP %d; plinth uses your Docker credentials: docker login %s, or DOCKER_CONFIG): %w",
			registry, te.StatusCode, registry, err)
	}
	return err
}

// rawManifest is a manifest plinth wrote itself, put as it is.
type rawManifest struct{ raw []byte }

func (r rawManifest) RawManifest() ([]byte, error)        { return r.raw, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// fileBlob is one blob of the artifact, read from its file (or, for the
// config, from memory) when the registry does not have it yet. Its digest
// is the one the image's manifest.json names; the registry checks it.
type fileBlob struct {
	path string
	data []byte
	desc v1.Descriptor
}

func (b fileBlob) name() string {
	if b.path != "" {
		return b.path
	}
	return "config"
}
func (b fileBlob) Digest() (v1.Hash, error)             { return b.desc.Digest, nil }
func (b fileBlob) DiffID() (v1.Hash, error)             { return b.desc.Digest, nil }
func (b fileBlob) Size() (int64, error)                 { return b.desc.Size, nil }
func (b fileBlob) MediaType() (types.MediaType, error)  { return b.desc.MediaType, nil }
func (b fileBlob) Uncompressed() (io.ReadCloser, error) { return b.Compressed() }
func (b fileBlob) Compressed() (io.ReadCloser, error) {
	if b.path == "" {
		return io.NopCloser(bytes.NewReader(b.data)), nil
	}
	return os.Open(b.path)
}

// Pull makes the artifact at ref — a registry reference REPO@sha256:…, or
// oci:DIR@sha256:… for an OCI image layout such as a mirror's — an
// artifact directory under cacheDir/pulled/, and returns it. A digest
// pulled before is taken from there. The manifest must hash to the digest,
// every blob is checked against the manifest's digest while it is written
// and every file against the image's manifest.json before the directory
// appears, whole, by one rename; a blob that does not match is refused and
// nothing is kept.
func Pull(ctx context.Context, ref, cacheDir string, o Options) (string, error) {
	st, err := open(ctx, ref, o)
	if err != nil {
		return "", err
	}
	base := filepath.Join(cacheDir, "pulled")
	dir := filepath.Join(base, st.digest.Hex)
	if m, err := manifest.Read(dir); err == nil {
		if err := manifest.Verify(dir, m); err == nil {
			o.log().Info("artifact from cache", "ref", ref, "image", m.Name)
			return dir, nil
		}
		o.log().Warn("cached artifact no longer matches its manifest; pulling again", "ref", ref, "dir", dir)
	}
	raw, mt, err := st.manifest()
	if err != nil {
		return "", fmt.Errorf("pull %s: %w", ref, err)
	}
	if h, _, err := v1.SHA256(bytes.NewReader(raw)); err != nil || h != st.digest {
		return "", fmt.Errorf("pull %s: refused: the manifest hashes to %s", ref, h)
	}
	if mt != types.OCIManifestSchema1 {
		return "", fmt.Errorf("pull %s: a %s, not a plinth image (an OCI image manifest with artifactType %s)", ref, mt, ArtifactType)
	}
	mf, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return "", fmt.Errorf("pull %s: %w", ref, err)
	}
	if err := isPlinth(mf); err != nil {
		return "", fmt.Errorf("pull %s: %w", ref, err)
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(base, ".pull-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	var names []string
	for i, l := range mf.Layers {
		n := l.Annotations[titleKey]
		if n == "" || n != filepath.Base(n) || n == "." || n == ".." || strings.ContainsAny(n, "\\\x00") || slices.Contains(names, n) {
			return "", fmt.Errorf("pull %s: layers[%d]: file name %q: want a base name, once", ref, i, n)
		}
		names = append(names, n)
		o.log().Info("pulling", "file", n, "digest", l.Digest.String(), "size", l.Size)
		layer, err := st.layer(l.Digest)
		if err != nil {
			return "", fmt.Errorf("pull %s: %s: %w", ref, n, err)
		}
		if err := fetchBlob(layer, l, filepath.Join(tmp, n)); err != nil {
			return "", fmt.Errorf("pull %s: %s (%s): %w", ref, n, l.Digest, err)
		}
	}
	m, err := manifest.Read(tmp)
	if err != nil {
		return "", fmt.Errorf("pull %s: %w", ref, err)
	}
	if err := manifest.Verify(tmp, m); err != nil {
		return "", fmt.Errorf("pull %s: the files do not match the image's manifest.json: %w", ref, err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := fsutil.SyncDir(tmp); err != nil {
		return "", err
	}
	_ = os.RemoveAll(dir) // a stale copy that no longer verified
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	if err := fsutil.SyncDir(base); err != nil {
		return "", err
	}
	o.log().Info("pulled", "ref", ref, "image", m.Name, "dir", dir)
	return dir, nil
}

// Image is the plinth image artifact at a registry reference pinned by
// digest, as a v1.Image whose layers are its files: what a mirror copies
// into its OCI layout (then Pull reads it as oci:DIR@sha256:…).
func Image(ctx context.Context, ref string, o Options) (v1.Image, error) {
	d, err := name.NewDigest(ref)
	if err != nil {
		return nil, fmt.Errorf("%s: a registry reference pinned by digest (REPO@sha256:…) is needed: %w", ref, err)
	}
	img, err := remote.Image(d, o.remote(ctx)...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, describe(d.RegistryStr(), err))
	}
	raw, err := img.RawManifest() // go-containerregistry checks it against the digest
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, describe(d.RegistryStr(), err))
	}
	mf, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	if err := isPlinth(mf); err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	return img, nil
}

func isPlinth(mf *v1.Manifest) error {
	if mf.ArtifactType != ArtifactType {
		return fmt.Errorf("artifactType %q, not a plinth image (%s)", mf.ArtifactType, ArtifactType)
	}
	return nil
}

// store is where an artifact is read from: a registry or an OCI layout.
type store struct {
	digest   v1.Hash
	manifest func() ([]byte, types.MediaType, error)
	layer    func(v1.Hash) (v1.Layer, error)
}

// LayoutPrefix marks a reference into an OCI image layout on disk.
const LayoutPrefix = "oci:"

func open(ctx context.Context, ref string, o Options) (*store, error) {
	if dir, ok := strings.CutPrefix(ref, LayoutPrefix); ok {
		at := strings.LastIndex(dir, "@")
		if at < 0 {
			return nil, fmt.Errorf("%s: an OCI layout reference pinned by digest (oci:DIR@sha256:…) is needed", ref)
		}
		h, err := v1.NewHash(dir[at+1:])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ref, err)
		}
		p, err := layout.FromPath(dir[:at])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ref, err)
		}
		img, err := p.Image(h)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ref, err)
		}
		return &store{
			digest: h,
			manifest: func() ([]byte, types.MediaType, error) {
				raw, err := img.RawManifest()
				if err != nil {
					return nil, "", err
				}
				var head struct {
					MediaType types.MediaType `json:"mediaType"`
				}
				if err := json.Unmarshal(raw, &head); err != nil {
					return nil, "", err
				}
				return raw, head.MediaType, nil
			},
			layer: img.LayerByDigest,
		}, nil
	}
	d, err := name.NewDigest(ref)
	if err != nil {
		return nil, fmt.Errorf("%s: a registry reference pinned by digest (REPO@sha256:…) is needed: %w", ref, err)
	}
	h, err := v1.NewHash(d.DigestStr())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	ropts := o.remote(ctx)
	return &store{
		digest: h,
		manifest: func() ([]byte, types.MediaType, error) {
			desc, err := remote.Get(d, ropts...)
			if err != nil {
				return nil, "", describe(d.RegistryStr(), err)
			}
			return desc.Manifest, desc.MediaType, nil
		},
		layer: func(l v1.Hash) (v1.Layer, error) {
			layer, err := remote.Layer(d.Context().Digest(l.String()), ropts...)
			if err != nil {
				return nil, describe(d.RegistryStr(), err)
			}
			return layer, nil
		},
	}, nil
}

// fetchBlob writes one blob to p, checking its size and digest as it
// streams (whatever the registry sends, the digest decides).
func fetchBlob(layer v1.Layer, want v1.Descriptor, p string) error {
	rc, err := layer.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	h, n, err := v1.SHA256(io.TeeReader(io.LimitReader(rc, want.Size+1), f))
	if err != nil {
		// go-containerregistry checks the digest itself as the body ends.
		return fmt.Errorf("refused, the download did not check out: %w", err)
	}
	if n != want.Size || h != want.Digest {
		return fmt.Errorf("refused: the registry sent %d bytes hashing to %s, the manifest says %d bytes, %s", n, h, want.Size, want.Digest)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// PullAll pulls every reference into cacheDir and returns an artifacts
// directory (cacheDir/serve/<hash of the references>/) holding each image
// under its manifest's name, as plinth build's --out would: what plinth
// serve's --artifacts takes. Two references naming the same image are an
// error.
func PullAll(ctx context.Context, refs []string, cacheDir string, o Options) (string, error) {
	byName := map[string]string{}
	var errs []error
	for _, ref := range refs {
		dir, err := Pull(ctx, ref, cacheDir, o)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m, err := manifest.Read(dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if prev, dup := byName[m.Name]; dup {
			errs = append(errs, fmt.Errorf("%s and %s are both image %q", prev, ref, m.Name))
			continue
		}
		byName[m.Name] = dir
	}
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	return linkSet(cacheDir, byName)
}

// linkSet makes cacheDir/serve/<hash>/ hold a symbolic link per image name
// to its pulled directory, created whole (temporary directory, rename) and
// kept: the same references give the same directory.
func linkSet(cacheDir string, byName map[string]string) (string, error) {
	h := sha256.New()
	for _, n := range slices.Sorted(maps.Keys(byName)) {
		fmt.Fprintf(h, "%s %s\n", n, byName[n])
	}
	base := filepath.Join(cacheDir, "serve")
	dir := filepath.Join(base, hex.EncodeToString(h.Sum(nil))[:32])
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(base, ".set-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	for n, d := range byName {
		if err := os.Symlink(d, filepath.Join(tmp, n)); err != nil {
			return "", err
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	if err := fsutil.SyncDir(tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil && !errors.Is(err, fs.ErrExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		return "", err
	}
	return dir, fsutil.SyncDir(base)
}
