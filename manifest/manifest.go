// Package manifest defines manifest.json, the record a build leaves beside its
// artifacts: every output file with its digest and size, the resolved digest
// of every source, the kernel version and the hash of the spec itself.
//
// The boot server reads it to serve artifacts by digest, `plinth inspect` and
// `plinth verify` read it to explain and check a build. It depends only on the
// standard library so that any part of plinth may import it.
package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// FileName is the name of the manifest inside an artifact directory.
const FileName = "manifest.json"

// Schema is the version of the manifest format written by this code.
const Schema = 1

// Well-known artifact names inside DIR/<name>/.
const (
	Rootfs     = "rootfs.squashfs"
	KernelFile = "vmlinuz"
	Initramfs  = "initramfs.cpio.zst"
)

// Manifest describes one built image.
type Manifest struct {
	Schema      int      `json:"schema"`
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	SpecSHA256  string   `json:"spec_sha256"` // "sha256:<hex>" of the spec file bytes
	Role        string   `json:"role,omitempty"`
	Services    []string `json:"services,omitempty"`
	// Cmdline is the kernel command line the spec asks for (console etc.);
	// the boot server appends the plinth.* parameters.
	Cmdline string `json:"cmdline,omitempty"`
	// SourceDateEpoch is the timestamp every file in the outputs carries.
	SourceDateEpoch int64    `json:"source_date_epoch"`
	Kernel          *Kernel  `json:"kernel,omitempty"`
	Sources         []Source `json:"sources"`
	Files           []File   `json:"files"`
	// Inputs is the hash of every input of the build; a build whose inputs
	// hash the same has nothing to do.
	Inputs string `json:"inputs,omitempty"`
}

// Kernel names the kernel the image boots and the modules put in its initramfs.
type Kernel struct {
	Version string   `json:"version"`
	Modules []string `json:"modules,omitempty"` // in load order, dependencies first
	// Drivers are carried in the initramfs and loaded by stage 1 when the
	// machine has a device they drive; DriversMissing are common drivers
	// the kernel does not have.
	Drivers        []string `json:"drivers,omitempty"`
	DriversMissing []string `json:"drivers_missing,omitempty"`
	// Firmware are the firmware files carried (under lib/firmware);
	// FirmwareMissing those the drivers may ask for that no source had.
	Firmware        []string `json:"firmware,omitempty"`
	FirmwareMissing []string `json:"firmware_missing,omitempty"`
}

// Source is one resolved input of the build.
type Source struct {
	Ref    string `json:"ref"`    // as written in the spec, e.g. "oci:./oci:base"
	Use    string `json:"use"`    // "layer" or "kernel"
	Digest string `json:"digest"` // resolved content digest, "sha256:<hex>"
}

// File is one output file in the artifact directory.
type File struct {
	Name   string `json:"name"`   // base name, e.g. "rootfs.squashfs"
	SHA256 string `json:"sha256"` // "sha256:<hex>"
	Size   int64  `json:"size"`
}

// File returns the entry called name, or nil.
func (m *Manifest) File(name string) *File {
	for i := range m.Files {
		if m.Files[i].Name == name {
			return &m.Files[i]
		}
	}
	return nil
}

// Encode renders m as stable, indented JSON (files sorted by name).
func (m *Manifest) Encode() ([]byte, error) {
	c := *m
	c.Files = append([]File(nil), m.Files...)
	sort.Slice(c.Files, func(i, j int) bool { return c.Files[i].Name < c.Files[j].Name })
	b, err := json.MarshalIndent(&c, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Read loads DIR/manifest.json.
func Read(dir string) (*Manifest, error) {
	p := filepath.Join(dir, FileName)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if m.Schema != Schema {
		return nil, fmt.Errorf("%s: schema %d, this plinth reads %d", p, m.Schema, Schema)
	}
	if err := m.checkFiles(); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return &m, nil
}

// checkFiles refuses what would make a reader look outside the artifact
// directory or trust a file it cannot check: every file is a base name,
// once, with a sha256 digest and a size.
func (m *Manifest) checkFiles() error {
	seen := map[string]bool{}
	for i, f := range m.Files {
		switch {
		case f.Name == "" || f.Name == "." || f.Name == ".." || strings.ContainsAny(f.Name, "/\\\x00"):
			return fmt.Errorf("files[%d].name %q: want a file's base name", i, f.Name)
		case seen[f.Name]:
			return fmt.Errorf("files[%d].name %q: listed twice", i, f.Name)
		case f.Size < 0:
			return fmt.Errorf("files[%d] (%s): size %d", i, f.Name, f.Size)
		}
		if _, err := ParseDigest(f.SHA256); err != nil {
			return fmt.Errorf("files[%d] (%s).sha256: %w", i, f.Name, err)
		}
		seen[f.Name] = true
	}
	return nil
}

// Digest returns "sha256:<hex>" of everything r yields, and its size.
func Digest(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return "", n, err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, nil
}

// FileDigest is Digest of a file's content.
func FileDigest(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	return Digest(f)
}

// ParseDigest checks "sha256:<64 hex>" and returns the hex part.
func ParseDigest(d string) (string, error) {
	hexpart, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hexpart) != 64 {
		return "", fmt.Errorf("digest %q: want sha256:<64 hex digits>", d)
	}
	if _, err := hex.DecodeString(hexpart); err != nil || strings.ToLower(hexpart) != hexpart {
		return "", fmt.Errorf("digest %q: want lower-case hex", d)
	}
	return hexpart, nil
}

// ErrMismatch is returned by Verify for a file whose bytes differ from the manifest.
var ErrMismatch = errors.New("digest mismatch")

// Verify checks every file of the manifest in dir; it returns all problems at once.
func Verify(dir string, m *Manifest) error {
	var errs []error
	for _, f := range m.Files {
		d, n, err := FileDigest(filepath.Join(dir, f.Name))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", f.Name, err))
		case n != f.Size:
			errs = append(errs, fmt.Errorf("%s: size %d, manifest says %d: %w", f.Name, n, f.Size, ErrMismatch))
		case d != f.SHA256:
			errs = append(errs, fmt.Errorf("%s: %s, manifest says %s: %w", f.Name, d, f.SHA256, ErrMismatch))
		}
	}
	return errors.Join(errs...)
}
