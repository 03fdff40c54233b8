package images

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/plinth-dev/plinth/internal/tomlx"
	"github.com/plinth-dev/plinth/profiles"
)

// ValidateFile checks the spec at path as `plinth validate` does: everything
// Load checks, and then, without writing or fetching anything, that its
// local sources exist in the form their scheme wants, that a dir: kernel
// tree holds a kernel, and that the site and machine its outputs carry
// exist. Registry and go: sources are not contacted. The error, if any, is a
// *tomlx.Report with every problem of the file.
func ValidateFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("image spec: %w", err)
	}
	s, r := parse(path, data)
	if r.Syntax() {
		return r.Err()
	}
	for i, l := range s.Layers {
		if field := fmt.Sprintf("layer[%d].source", i); !r.Has(path, field) {
			if err := sourceExists(l.Src); err != nil {
				r.Addf(path, field, "%v", err)
			}
		}
	}
	if k := s.Kernel; k != nil && !r.Has(path, "kernel.source") && k.Source != "" {
		if err := sourceExists(k.Src); err != nil {
			r.Addf(path, "kernel.source", "%v", err)
		} else if k.Src.Kind == KindDir {
			if m, _ := filepath.Glob(filepath.Join(k.Src.Path, "boot", "vmlinuz-*")); len(m) == 0 {
				r.Addf(path, "kernel.source", "%s has no boot/vmlinuz-*", k.Src.Path)
			}
		}
	}
	if ca := s.Stage1.CA; ca != "" {
		if err := isFile(ca); err != nil {
			r.Addf(path, "stage1.ca", "%v", err)
		}
	}
	if o := s.Output; o.Site != "" && !r.Has(path, "output.site") {
		site, err := profiles.LoadSite(o.Site)
		var siteReport *tomlx.Report
		switch {
		case errors.As(err, &siteReport):
			// The site's own problems keep their own file:line:col.
			r.Addf(path, "output.site", "site %s has problems, listed with its files", o.Site)
			r.Merge(siteReport)
		case err != nil:
			r.Addf(path, "output.site", "%v", err)
		case o.Machine != "" && site.Machine(o.Machine) == nil:
			r.Addf(path, "output.machine", "no machine %q in site %s", o.Machine, o.Site)
		}
	}
	return r.Err()
}

// sourceExists checks that a local source is there in the form its scheme
// wants.
func sourceExists(src Source) error {
	switch src.Kind {
	case KindDir:
		return isDir(src.Path)
	case KindTar, KindDockerArchive:
		return isFile(src.Path)
	case KindOCI:
		if err := isDir(src.Path); err != nil {
			return err
		}
		if err := isFile(filepath.Join(src.Path, "index.json")); err != nil {
			return fmt.Errorf("%s is not an OCI image layout: %w", src.Path, err)
		}
	}
	return nil
}

func isDir(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return notFound(p, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", p)
	}
	return nil
}

func isFile(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return notFound(p, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", p)
	}
	return nil
}

func notFound(p string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s does not exist", p)
	}
	return err
}
