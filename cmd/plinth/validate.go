package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/images"
	"github.com/plinth-dev/plinth/manifest"
	"github.com/plinth-dev/plinth/profiles"
)

func newValidateCmd(g *globals) *cobra.Command {
	var verbose bool
	var artifacts string
	c := &cobra.Command{
		Use:   "validate FILE|SITE_DIR...",
		Short: "Check image specs and site profiles without building anything",
		Long: `Check image specs (TOML files) and site profiles (a directory of TOML files, or
one file of it) and report every problem at once as file:line:col: field: what
is wrong. Exit status 1 when anything is wrong. Nothing is written.

With --artifacts, a site is also checked against the images built there:
every machine's image must be built, for the machine's role.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var errs []error
			for _, a := range args {
				kind, err := validateOne(a, artifacts, verbose, cmd.ErrOrStderr())
				if err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: valid %s\n", a, kind)
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "print each spec with its defaults applied")
	c.Flags().StringVar(&artifacts, "artifacts", "", "check each site machine's image is built in this directory, for its role")
	return c
}

func validateOne(path, artifacts string, verbose bool, warn io.Writer) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if st.IsDir() {
		site, err := loadSiteWithImages(path, artifacts)
		if err != nil {
			return "", err
		}
		if verbose {
			printTOML(site)
		}
		warnVolatile(warn, site)
		return fmt.Sprintf("site %q (%d machines)", site.Name, len(site.Machines)), nil
	}
	if isSiteFile(path) {
		site, err := loadSiteWithImages(filepath.Dir(path), artifacts)
		if err != nil {
			return "", err
		}
		warnVolatile(warn, site)
		return fmt.Sprintf("site %q (directory %s)", site.Name, filepath.Dir(path)), nil
	}
	// ValidateFile also checks what the spec points at on disk (local
	// sources, the kernel tree, the CA, the carried site and machine).
	if err := images.ValidateFile(path); err != nil {
		return "", err
	}
	s, err := images.Load(path)
	if err != nil {
		return "", err
	}
	if verbose {
		printTOML(s)
	}
	return fmt.Sprintf("image spec %q", s.Name), nil
}

// warnVolatile says which machines keep their role's state in RAM: valid,
// but an etcd member without a state disk loses its data at every reboot.
func warnVolatile(w io.Writer, site *profiles.Site) {
	for _, v := range site.Volatile() {
		fmt.Fprintln(w, "warning: "+v)
	}
}

// isSiteFile tells a site profile file (it has [site] or [[machine]]) from an image spec.
func isSiteFile(path string) bool {
	var top map[string]any
	if _, err := toml.DecodeFile(path, &top); err != nil {
		return false
	}
	_, site := top["site"]
	_, machine := top["machine"]
	return site || machine
}

func printTOML(v any) {
	_ = toml.NewEncoder(os.Stdout).Encode(v)
}

// loadSiteWithImages loads a site and, with an artifacts directory, checks
// its machines against the images built there.
func loadSiteWithImages(dir, artifacts string) (*profiles.Site, error) {
	site, err := profiles.LoadSite(dir)
	if err != nil || artifacts == "" {
		return site, err
	}
	paths, err := filepath.Glob(filepath.Join(artifacts, "*", manifest.FileName))
	if err != nil {
		return nil, err
	}
	built := map[string]string{} // image → role
	for _, p := range paths {
		if strings.HasPrefix(filepath.Base(filepath.Dir(p)), ".") {
			continue // a build in progress
		}
		m, err := manifest.Read(filepath.Dir(p))
		if err != nil {
			return nil, err
		}
		built[m.Name] = m.Role
	}
	if err := site.CheckImages(func(image string) (string, bool) { r, ok := built[image]; return r, ok }); err != nil {
		return nil, err
	}
	return site, nil
}
