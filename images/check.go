package images

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/plinth-dev/plinth/internal/tomlx"
	"github.com/plinth-dev/plinth/roles"
)

// check records every semantic problem of a decoded, defaulted spec, parses
// its sources and makes its paths absolute.
func (s *Spec) check(r *tomlx.Report) {
	f := s.File
	// empty reports an empty required string, unless decoding already
	// reported the field (missing or of the wrong type).
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
		field := fmt.Sprintf("layer[%d].source", i)
		if empty(field, l.Source) {
			continue
		}
		src, err := ParseSource(l.Source, s.Dir)
		if err != nil {
			r.Addf(f, field, "%v", err)
		}
		l.Src = src
	}
	if k := s.Kernel; k != nil {
		s.checkKernel(r, empty)
	}
	if ro := s.Role; ro != nil {
		if !empty("role.name", ro.Name) {
			if _, err := roles.Lookup(ro.Name); err != nil {
				r.Addf(f, "role.name", "%v", err)
			}
		}
		if len(ro.Services) > 0 {
			r.Addf(f, "role.services", "no longer set in a spec: the role's services come from its descriptor (package roles); remove the line")
		}
	}
	s.checkOutput(r)
	if strings.ContainsAny(s.Stage1.Params, "\n\r") {
		r.Addf(f, "stage1.params", "must be one line")
	}
	if fw := s.Stage1.Firmware; fw != "" {
		src, err := ParseSource(fw, s.Dir)
		switch {
		case err != nil:
			r.Addf(f, "stage1.firmware", "%v", err)
		case src.Kind == KindGo:
			r.Addf(f, "stage1.firmware", "firmware cannot come from a go: source")
		case s.Kernel == nil:
			r.Addf(f, "stage1.firmware", "only an image with a [kernel] has an initramfs to carry it")
		}
		s.Stage1.FirmwareSrc = src
	}
	if ca := s.Stage1.CA; ca != "" {
		if !filepath.IsAbs(ca) {
			s.Stage1.CA = filepath.Join(s.Dir, ca)
		}
		if s.Kernel == nil {
			r.Addf(f, "stage1.ca", "only an image with a [kernel] has an initramfs to carry it")
		}
	}
}

func (s *Spec) checkKernel(r *tomlx.Report, empty func(field, v string) bool) {
	f, k := s.File, s.Kernel
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
			r.Addf(f, field, "%q is not a module name (letters, digits, '_' and '-')", m)
		}
	}
	for i, m := range k.Drivers {
		if field := fmt.Sprintf("kernel.drivers[%d]", i); m != CommonSet && !moduleRE.MatchString(m) && !r.Has(f, field) {
			r.Addf(f, field, "%q is not a module name (letters, digits, '_' and '-') or %s", m, CommonSet)
		}
	}
	if strings.ContainsAny(k.Cmdline, "\n\r") {
		r.Addf(f, "kernel.cmdline", "must be one line")
	}
}

// grubSyntax are the characters GRUB's script parser would not pass through
// to the kernel command line as they are.
const grubSyntax = "$;'\"\\{}|&<>#\n\r"

func (s *Spec) checkOutput(r *tomlx.Report) {
	f, o := s.File, s.Output
	for i, fm := range o.Formats {
		if !slices.Contains(Formats, fm) {
			r.Addf(f, fmt.Sprintf("output.formats[%d]", i), "%q: want one of %s", fm, strings.Join(Formats, ", "))
		}
	}
	if o.Compression != "zstd" && o.Compression != "gzip" {
		r.Addf(f, "output.compression", "%q: want zstd or gzip", o.Compression)
	}
	// Every format boots a kernel; only a spec that asks for no format at
	// all may leave the kernel out, and then gets a root filesystem alone.
	if s.Kernel == nil && len(o.Formats) > 0 {
		r.Addf(f, "output.formats", "%s boot a kernel: add a [kernel] table, or leave formats out for a rootfs-only build",
			strings.Join(o.Formats, ", "))
	}
	profiled := slices.ContainsFunc(o.Formats, func(x string) bool { return x == "embedded" || x == "iso" || x == "raw" })
	if profiled {
		if o.Site == "" {
			r.Addf(f, "output.site", "missing: embedded, iso and raw outputs carry a profile: name the site directory")
		}
		if o.Machine == "" {
			r.Addf(f, "output.machine", "missing: embedded, iso and raw outputs carry a profile: name the machine")
		}
	}
	// A boot medium's GRUB script carries the command line (builder/disk
	// refuses the same characters).
	if medium := slices.ContainsFunc(o.Formats, func(x string) bool { return x == "iso" || x == "raw" }); medium && s.Kernel != nil {
		if i := strings.IndexAny(s.Kernel.Cmdline, grubSyntax); i >= 0 && !r.Has(f, "kernel.cmdline") {
			r.Addf(f, "kernel.cmdline", "%q: iso and raw outputs pass it through a GRUB script, which reads %q as syntax", s.Kernel.Cmdline, s.Kernel.Cmdline[i])
		}
	}
	if o.Site != "" && !filepath.IsAbs(o.Site) {
		s.Output.Site = filepath.Join(s.Dir, o.Site)
	}
}
