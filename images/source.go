package images

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// SourceKind says where a source's content comes from.
type SourceKind string

// The source schemes of an image spec.
const (
	KindRegistry      SourceKind = "registry"       // registry/repo:tag or @sha256:…
	KindOCI           SourceKind = "oci"            // oci:DIR[:TAG], an OCI image layout
	KindDockerArchive SourceKind = "docker-archive" // docker-archive:FILE (docker save)
	KindDir           SourceKind = "dir"            // dir:PATH, a directory tree
	KindTar           SourceKind = "tar"            // tar:FILE, a tar (optionally gzip/zstd)
	KindGo            SourceKind = "go"             // go:IMPORTPATH[@VERSION], built static
)

// Source is a parsed source reference. Paths are absolute: relative ones are
// resolved against the directory of the spec that names them.
type Source struct {
	Raw     string     // as written
	Kind    SourceKind //
	Path    string     // oci, docker-archive, dir, tar
	Tag     string     // oci: the org.opencontainers.image.ref.name to pick ("" = the only image)
	Ref     string     // registry: the full reference
	Package string     // go: import path of a main package
	Version string     // go: module version ("" = from the spec's own module)
}

// Pinned reports whether the source names its content by digest, so that a
// cached copy may be used without asking its origin again.
func (s Source) Pinned() bool {
	switch s.Kind {
	case KindRegistry:
		return strings.Contains(s.Ref, "@sha256:")
	case KindGo:
		return s.Version != "" && s.Version != "latest" && strings.HasPrefix(s.Version, "v")
	}
	return false
}

// ParseSource parses a source string; baseDir anchors relative paths.
func ParseSource(raw, baseDir string) (Source, error) {
	s := Source{Raw: raw}
	if strings.TrimSpace(raw) != raw || raw == "" {
		return s, fmt.Errorf("source %q: empty or surrounded by spaces", raw)
	}
	abs := func(p string) (string, error) {
		if p == "" {
			return "", fmt.Errorf("source %q: missing path", raw)
		}
		if filepath.IsAbs(p) {
			return filepath.Clean(p), nil
		}
		return filepath.Join(baseDir, p), nil
	}
	var err error
	scheme, rest, hasScheme := strings.Cut(raw, ":")
	switch {
	case hasScheme && scheme == "oci":
		s.Kind = KindOCI
		// oci:DIR[:TAG]; a tag has no '/', so split at the last ':' only then.
		dir := rest
		if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i+1:], "/") {
			dir, s.Tag = rest[:i], rest[i+1:]
			if s.Tag == "" {
				return s, fmt.Errorf("source %q: empty tag after ':'", raw)
			}
		}
		s.Path, err = abs(dir)
	case hasScheme && scheme == "docker-archive":
		s.Kind = KindDockerArchive
		s.Path, err = abs(rest)
	case hasScheme && scheme == "dir":
		s.Kind = KindDir
		s.Path, err = abs(rest)
	case hasScheme && scheme == "tar":
		s.Kind = KindTar
		s.Path, err = abs(rest)
	case hasScheme && scheme == "go":
		s.Kind = KindGo
		s.Package, s.Version, _ = strings.Cut(rest, "@")
		if s.Package == "" || strings.ContainsAny(s.Package, " \t:") {
			return s, fmt.Errorf("source %q: want go:IMPORTPATH[@VERSION]", raw)
		}
		if strings.Contains(rest, "@") && s.Version == "" {
			return s, fmt.Errorf("source %q: empty version after '@'", raw)
		}
	default:
		s.Kind = KindRegistry
		r, perr := name.ParseReference(raw, name.StrictValidation)
		if perr != nil {
			return s, fmt.Errorf("source %q: not a known scheme (oci:, docker-archive:, dir:, tar:, go:) nor a registry reference: %v", raw, perr)
		}
		s.Ref = r.String()
	}
	return s, err
}
