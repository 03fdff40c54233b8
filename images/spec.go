// Package images defines the image spec: the TOML file that names a node
// type's kernel, the ordered OCI layers of its root filesystem, the role its
// first boot configures and the outputs wanted. Decoding is strict: every
// problem of a file is reported at once as file:line:col: field: message.
package images

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/plinth-dev/plinth/internal/tomlx"
)

// Spec is one image spec.
type Spec struct {
	Name        string  `toml:"name,required"`
	Description string  `toml:"description"`
	Kernel      *Kernel `toml:"kernel"`
	Layers      []Layer `toml:"layer,required"`
	Role        *Role   `toml:"role"`
	Output      Output  `toml:"output"`
	Stage1      Stage1  `toml:"stage1"`

	File   string `toml:"-"` // path of the spec file
	Dir    string `toml:"-"` // its directory: relative paths start here
	SHA256 string `toml:"-"` // "sha256:<hex>" of the file's bytes
}

// Kernel names the kernel and the modules stage 1 loads.
type Kernel struct {
	Source  string   `toml:"source,required"`
	Modules []string `toml:"modules"`
	Cmdline string   `toml:"cmdline"`
	Src     Source   `toml:"-"`
}

// Layer is one entry of the root filesystem's stack, bottom first.
type Layer struct {
	Source string `toml:"source,required"`
	Src    Source `toml:"-"`
}

// Stage1 are settings baked into the initramfs, for machines that boot it
// without a boot server's command line (ISO, USB, a fixed PXE menu).
type Stage1 struct {
	// Params are default kernel parameters (e.g. plinth.server=URL,
	// plinth.rescue=1); the real command line wins.
	Params string `toml:"params"`
	// CA is a PEM file (relative to the spec) of the authority that signed an
	// https boot server's certificate.
	CA string `toml:"ca"`
}

// Role is what first boot configures.
type Role struct {
	Name     string   `toml:"name,required"`
	Services []string `toml:"services"`
}

// Output selects the artifacts to write.
type Output struct {
	Formats     []string `toml:"formats"`     // netboot | embedded | iso | raw
	Compression string   `toml:"compression"` // zstd | gzip, of the initramfs
	// Site and Machine choose the profile built into embedded, iso and raw
	// outputs (a site directory relative to the spec, a machine name there).
	Site    string `toml:"site"`
	Machine string `toml:"machine"`
}

// Roles first boot knows how to configure.
var Roles = []string{"etcd", "master", "minion"}

// Formats are the output formats.
var Formats = []string{"netboot", "embedded", "iso", "raw"}

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	moduleRE  = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)
	serviceRE = regexp.MustCompile(`^[a-zA-Z0-9@._:-]+$`)
)

// Load reads and checks the spec at path.
func Load(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse decodes and checks a spec; file names it in messages and anchors
// relative paths.
func Parse(file string, data []byte) (*Spec, error) {
	var s Spec
	r := tomlx.Decode(file, data, &s)
	if len(r.Problems) > 0 && r.Problems[0].Msg != "" && strings.HasPrefix(r.Problems[0].Msg, "syntax:") {
		return nil, r.Err()
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		abs = file
	}
	s.File, s.Dir = file, filepath.Dir(abs)
	sum := sha256.Sum256(data)
	s.SHA256 = "sha256:" + hex.EncodeToString(sum[:])
	s.applyDefaults()
	s.check(r)
	if err := r.Err(); err != nil {
		return nil, err
	}
	return &s, nil
}

// applyDefaults fills what a spec may leave out. It is the one place defaults live.
func (s *Spec) applyDefaults() {
	if len(s.Output.Formats) == 0 {
		s.Output.Formats = []string{"netboot"}
	}
	if s.Output.Compression == "" {
		s.Output.Compression = "zstd"
	}
}

func (s *Spec) check(r *tomlx.Report) {
	f := s.File
	empty := func(field, v string) bool {
		if v == "" && !r.Has(f, field) {
			r.Addf(f, field, "must not be empty")
		}
		return v == ""
	}
	if !empty("name", s.Name) && !nameRE.MatchString(s.Name) {
		r.Addf(f, "name", "%q: want lower-case letters, digits and '-', at most 63, starting with a letter or digit", s.Name)
	}
	if s.Layers != nil && len(s.Layers) == 0 {
		r.Addf(f, "layer", "at least one [[layer]] is required")
	}
	for i := range s.Layers {
		l := &s.Layers[i]
		if empty(fmt.Sprintf("layer[%d].source", i), l.Source) {
			continue
		}
		src, err := ParseSource(l.Source, s.Dir)
		if err != nil {
			r.Addf(f, fmt.Sprintf("layer[%d].source", i), "%v", err)
		}
		l.Src = src
	}
	if k := s.Kernel; k != nil {
		if !empty("kernel.source", k.Source) {
			src, err := ParseSource(k.Source, s.Dir)
			if err != nil {
				r.Addf(f, "kernel.source", "%v", err)
			} else if src.Kind == KindGo {
				r.Addf(f, "kernel.source", "a kernel cannot come from a go: source")
			}
			k.Src = src
		}
		for i, m := range k.Modules {
			if field := fmt.Sprintf("kernel.modules[%d]", i); !moduleRE.MatchString(m) && !r.Has(f, field) {
				r.Addf(f, field, "%q is not a module name", m)
			}
		}
		if strings.ContainsAny(k.Cmdline, "\n\r") {
			r.Addf(f, "kernel.cmdline", "must be one line")
		}
	}
	if ro := s.Role; ro != nil {
		if !empty("role.name", ro.Name) && !slices.Contains(Roles, ro.Name) {
			r.Addf(f, "role.name", "%q: want one of %s", ro.Name, strings.Join(Roles, ", "))
		}
		for i, svc := range ro.Services {
			if !serviceRE.MatchString(svc) {
				r.Addf(f, fmt.Sprintf("role.services[%d]", i), "%q is not a systemd unit name", svc)
			}
		}
	}
	o := s.Output
	for i, fm := range o.Formats {
		if !slices.Contains(Formats, fm) {
			r.Addf(f, fmt.Sprintf("output.formats[%d]", i), "%q: want one of %s", fm, strings.Join(Formats, ", "))
		}
	}
	if o.Compression != "zstd" && o.Compression != "gzip" {
		r.Addf(f, "output.compression", "%q: want zstd or gzip", o.Compression)
	}
	booting := slices.ContainsFunc(o.Formats, func(x string) bool { return x == "embedded" || x == "iso" || x == "raw" })
	if s.Kernel == nil && booting {
		r.Addf(f, "output.formats", "%v boot a kernel: add a [kernel] table", o.Formats)
	}
	if booting {
		if o.Site == "" {
			r.Addf(f, "output.site", "embedded, iso and raw outputs carry a profile: name the site directory")
		}
		if o.Machine == "" {
			r.Addf(f, "output.machine", "embedded, iso and raw outputs carry a profile: name the machine")
		}
	}
	if strings.ContainsAny(s.Stage1.Params, "\n\r") {
		r.Addf(f, "stage1.params", "must be one line")
	}
	if ca := s.Stage1.CA; ca != "" {
		if !filepath.IsAbs(ca) {
			s.Stage1.CA = filepath.Join(s.Dir, ca)
		}
		if s.Kernel == nil {
			r.Addf(f, "stage1.ca", "only an image with a [kernel] has an initramfs to carry it")
		}
	}
	if o.Site != "" && !filepath.IsAbs(o.Site) {
		s.Output.Site = filepath.Join(s.Dir, o.Site)
	}
}

// Sources lists the spec's sources in order: kernel first, then layers.
func (s *Spec) Sources() []Source {
	var out []Source
	if s.Kernel != nil {
		out = append(out, s.Kernel.Src)
	}
	for _, l := range s.Layers {
		out = append(out, l.Src)
	}
	return out
}
