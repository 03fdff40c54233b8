package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/bootserver/pki"
	"github.com/plinth-dev/plinth/profiles"
)

func newCACmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "ca", Short: "The site CA"}
	var siteDir, stateDir string
	initCmd := &cobra.Command{
		Use:   "init --site DIR [--state DIR]",
		Short: "Create a site's CA in its state directory (once: every machine of the site trusts it)",
		Long: `Create the site CA (ca.pem, ca-key.pem, sa-key.pem) in the site's state
directory, default $XDG_STATE_HOME/plinth/SITE-NAME, outside the site
directory. It refuses a state directory that has a CA already, and a site
directory that was served with a CA elsewhere (a renamed site). Back up the
state directory afterwards: losing it means re-keying every machine.
plinth serve does not create a CA unless told to (--init-ca).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if siteDir == "" {
				return errors.New("--site is required")
			}
			site, err := profiles.LoadSite(siteDir)
			if err != nil {
				return err
			}
			dir := stateDir
			if dir == "" {
				if dir, err = pki.DefaultStateDir(site.Name); err != nil {
					return err
				}
			}
			if _, err := os.Stat(filepath.Join(dir, pki.CertFile)); err == nil {
				ca, err := pki.Load(dir)
				if err != nil {
					return err
				}
				return fmt.Errorf("%s already holds a site CA (%s): machines trust it; not replaced", dir, api.CAFingerprint(ca.Cert().Raw))
			}
			ca, err := openCA(site, siteDir, stateDir, true, g.log)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "site CA for %s created in %s\nfingerprint %s\nback it up: tar -C %s -czf %s-ca.tgz %s\n",
				site.Name, ca.Dir(), api.CAFingerprint(ca.Cert().Raw), filepath.Dir(ca.Dir()), site.Name, filepath.Base(ca.Dir()))
			return nil
		},
	}
	f := initCmd.Flags()
	f.StringVar(&siteDir, "site", "", "site profile directory")
	f.StringVar(&stateDir, "state", "", "the boot server's state directory (default $XDG_STATE_HOME/plinth/SITE-NAME)")
	c.AddCommand(initCmd)
	return c
}
