package bundle

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"aead.dev/minisign"

	"github.com/plinth-dev/plinth/manifest"
)

// ErrMismatch marks a file whose bytes differ from what a manifest says.
var ErrMismatch = manifest.ErrMismatch

// maxManifest bounds what is read of a manifest before trusting it.
const maxManifest = 64 << 20

// Result says what a verified bundle holds.
type Result struct {
	Manifest *Manifest
	Digest   string // sha256 of the whole tar
	// Sidecar is false when there was no FILE.sha256 to check the whole tar
	// (and so the manifest itself) against.
	Sidecar bool
	// Signer is the ID of the trusted key whose signature (FILE.minisig)
	// the bundle carries; "" when unsigned (accepted only by
	// Trust.Unsigned).
	Signer string
}

// Verify checks a bundle in one pass: every file against the bundle
// manifest, every artifact against its image's manifest.json, nothing
// missing or extra, and the whole tar against FILE.sha256 when present. It
// returns every problem at once, each naming the file with the digest
// expected and the one found. The bundle's signature must be by one of
// trust's keys, or trust must accept it unsigned (sign.go).
func Verify(ctx context.Context, file string, trust Trust) (*Result, error) {
	return scan(ctx, file, nil, trust)
}

// scan reads the bundle at file, hands each entry whose name sink accepts
// to the writer it returns, and verifies everything.
func scan(ctx context.Context, file string, sink func(name string) (io.WriteCloser, error), trust Trust) (*Result, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	defer f.Close()
	whole := sha256.New()
	// One pass for everything: the tar, its sha256, and the BLAKE2b-512
	// a minisign signature covers.
	in := minisign.NewReader(io.TeeReader(bufio.NewReaderSize(f, 1<<20), whole))
	tr := tar.NewReader(in)
	fail := func(err error) (*Result, error) { return nil, fmt.Errorf("bundle %s: %w", file, err) }

	h, err := tr.Next()
	if err != nil {
		return fail(fmt.Errorf("not a plinth bundle: %w", err))
	}
	if h.Name != ManifestName {
		return fail(fmt.Errorf("not a plinth bundle: first entry is %q, want %s", h.Name, ManifestName))
	}
	m, err := decodeManifest(io.LimitReader(tr, maxManifest))
	if err != nil {
		return fail(fmt.Errorf("%s: %w", ManifestName, err))
	}
	var errs []error
	got := map[string]string{}          // name → actual digest
	imgManifests := map[string][]byte{} // artifacts/<n>/manifest.json → content
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("reading the tar: %w", err))
			break
		}
		name := h.Name
		want := m.File(name)
		switch {
		case h.Typeflag != tar.TypeReg:
			errs = append(errs, fmt.Errorf("%s: entry of type %q: a bundle holds only files", name, h.Typeflag))
			continue
		case isSparse(h):
			// plinth writes none; expanded, a few bytes in the tar can
			// become any size.
			errs = append(errs, fmt.Errorf("%s: a sparse entry: a bundle holds only plain files", name))
			continue
		case !validName(name) || name == ManifestName:
			errs = append(errs, fmt.Errorf("%q: not a clean relative path", name))
			continue
		case want == nil:
			errs = append(errs, fmt.Errorf("%s: not in %s", name, ManifestName))
			continue
		case got[name] != "":
			errs = append(errs, fmt.Errorf("%s: twice in the tar", name))
			continue
		case h.Size != want.Size:
			// Refused before a byte is written: a sparse entry's header
			// may declare far more than its few bytes in the tar.
			got[name] = "refused"
			errs = append(errs, fmt.Errorf("%s: size %d, %s says %d: %w", name, h.Size, ManifestName, want.Size, ErrMismatch))
			continue
		}
		var w io.Writer = io.Discard
		var out io.WriteCloser
		if sink != nil {
			if out, err = sink(name); err != nil {
				return nil, err
			}
			if out != nil {
				w = out
			}
		}
		var keep bytes.Buffer
		if isImageManifest(name) {
			w = io.MultiWriter(w, &keep)
		}
		// Never more than the manifest's size, whatever the tar says.
		d, n, err := manifest.Digest(io.TeeReader(io.LimitReader(tr, want.Size), w))
		if err == nil {
			if extra, _ := io.CopyN(io.Discard, tr, 1); extra > 0 {
				n += extra
			}
		}
		if out != nil {
			if cerr := out.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			break
		}
		got[name] = d
		switch {
		case n != want.Size:
			errs = append(errs, fmt.Errorf("%s: size %d, %s says %d: %w", name, n, ManifestName, want.Size, ErrMismatch))
		case d != want.SHA256:
			errs = append(errs, fmt.Errorf("%s: %s, %s says %s: %w", name, d, ManifestName, want.SHA256, ErrMismatch))
		case isImageManifest(name):
			imgManifests[name] = keep.Bytes()
		}
	}
	for _, fl := range m.Files {
		if got[fl.Name] == "" {
			errs = append(errs, fmt.Errorf("%s: missing from the bundle", fl.Name))
		}
	}
	errs = append(errs, crossCheck(m, got, imgManifests)...)
	// The rest of the tar (end blocks, padding) counts towards its digest.
	if _, err := io.Copy(io.Discard, in); err != nil {
		errs = append(errs, fmt.Errorf("reading: %w", err))
	}
	res := &Result{Manifest: m, Digest: "sha256:" + hex.EncodeToString(whole.Sum(nil))}
	want, err := readSidecar(file + ".sha256")
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		errs = append(errs, err)
	default:
		res.Sidecar = true
		if want != res.Digest {
			errs = append(errs, fmt.Errorf("%s: %s, %s says %s: %w", filepath.Base(file), res.Digest, filepath.Base(file)+".sha256", want, ErrMismatch))
		}
	}
	signer, err := checkSignature(file, in, trust)
	if err != nil {
		errs = append(errs, err)
	}
	res.Signer = signer
	if err := errors.Join(errs...); err != nil {
		return res, fmt.Errorf("bundle %s:\n%w", file, err)
	}
	return res, nil
}

// isSparse says whether h is a GNU sparse file (PAX 0.x/1.0 records; the
// old GNU type is not TypeReg and is refused with the other types).
func isSparse(h *tar.Header) bool {
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

func isImageManifest(name string) bool {
	dir, base := path.Split(name)
	return base == manifest.FileName && path.Dir(strings.TrimSuffix(dir, "/")) == ArtifactsDir
}

// crossCheck compares each artifact with its image's manifest.json, for
// artifacts the bundle manifest vouched for: a bundle whose own manifest was
// made from a damaged artifact is caught here.
func crossCheck(m *Manifest, got map[string]string, imgManifests map[string][]byte) []error {
	var errs []error
	for _, img := range m.Images {
		mp := path.Join(ArtifactsDir, img, manifest.FileName)
		data, ok := imgManifests[mp]
		if !ok {
			if got[mp] == "" && m.File(mp) == nil {
				errs = append(errs, fmt.Errorf("%s: missing: the bundle names image %s", mp, img))
			}
			continue
		}
		var im manifest.Manifest
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&im); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", mp, err))
			continue
		}
		for _, f := range im.Files {
			p := path.Join(ArtifactsDir, img, f.Name)
			bf := m.File(p)
			switch {
			case bf == nil:
				errs = append(errs, fmt.Errorf("%s: named by %s but not in the bundle", p, mp))
			case got[p] == bf.SHA256 && got[p] != f.SHA256:
				errs = append(errs, fmt.Errorf("%s: %s, %s says %s: %w", p, got[p], mp, f.SHA256, ErrMismatch))
			}
		}
	}
	return errs
}

// decodeManifest reads a bundle manifest strictly.
func decodeManifest(r io.Reader) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if m.Schema != Schema {
		return nil, fmt.Errorf("schema %d, this plinth reads %d", m.Schema, Schema)
	}
	var errs []error
	for i, f := range m.Files {
		if !validName(f.Name) || f.Name == ManifestName {
			errs = append(errs, fmt.Errorf("files[%d]: name %q is not a clean relative path", i, f.Name))
		}
		if i > 0 && m.Files[i-1].Name >= f.Name {
			errs = append(errs, fmt.Errorf("files[%d]: %q is out of order or repeated", i, f.Name))
		}
		if _, err := manifest.ParseDigest(f.SHA256); err != nil {
			errs = append(errs, fmt.Errorf("files[%d] %s: %w", i, f.Name, err))
		}
		if f.Size < 0 {
			errs = append(errs, fmt.Errorf("files[%d] %s: negative size", i, f.Name))
		}
	}
	return &m, errors.Join(errs...)
}

// readSidecar reads "HEX  NAME" as written by Write and sha256sum.
func readSidecar(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return "", fmt.Errorf("%s: empty", p)
	}
	d := "sha256:" + fields[0]
	if _, err := manifest.ParseDigest(d); err != nil {
		return "", fmt.Errorf("%s: %w", p, err)
	}
	return d, nil
}

// VerifyArtifacts checks an artifact directory (DIR/<name>/ with a
// manifest.json) or an artifacts root (every DIR/<name>/ under it) against
// the manifests, returning every problem at once.
func VerifyArtifacts(dir string) ([]string, error) {
	if _, err := os.Stat(filepath.Join(dir, manifest.FileName)); err == nil {
		return []string{dir}, verifyImage(dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var dirs []string
	var errs []error
	for _, e := range ents {
		sub := filepath.Join(dir, e.Name())
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if _, err := os.Stat(filepath.Join(sub, manifest.FileName)); err != nil {
			continue
		}
		dirs = append(dirs, sub)
		if err := verifyImage(sub); err != nil {
			errs = append(errs, err)
		}
	}
	if len(dirs) == 0 {
		return nil, fmt.Errorf("%s: neither an artifact directory nor an artifacts root (no manifest.json)", dir)
	}
	return dirs, errors.Join(errs...)
}

func verifyImage(dir string) error {
	m, err := manifest.Read(dir)
	if err != nil {
		return err
	}
	if err := manifest.Verify(dir, m); err != nil {
		return fmt.Errorf("%s:\n%w", dir, err)
	}
	return nil
}
