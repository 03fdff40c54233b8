package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/BurntSushi/toml"
	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/images"
	"github.com/plinth-dev/plinth/profiles"
)

func newValidateCmd(g *globals) *cobra.Command {
	var verbose bool
	c := &cobra.Command{
		Use:   "validate FILE|SITE_DIR...",
		Short: "Check image specs and site profiles without building anything",
		Long: `Check image specs (TOML files) and site profiles (a directory of TOML files, or
one file of it) and report every problem at once as file:line:col: field: what
is wrong. Exit status 1 when anything is wrong. Nothing is written.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var errs []error
			for _, a := range args {
				kind, err := validateOne(a, verbose)
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
	return c
}

func validateOne(path string, verbose bool) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if st.IsDir() {
		site, err := profiles.LoadSite(path)
		if err != nil {
			return "", err
		}
		if verbose {
			printTOML(site)
		}
		return fmt.Sprintf("site %q (%d machines)", site.Name, len(site.Machines)), nil
	}
	if isSiteFile(path) {
		site, err := profiles.LoadSite(filepath.Dir(path))
		if err != nil {
			return "", err
		}
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
