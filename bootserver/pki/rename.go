package pki

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/plinth-dev/plinth/internal/fsutil"
)

// SiteDirFile, in a state directory, names the site directory last served
// with that state's CA. A site renamed in its site.toml gets another
// default state directory (DefaultStateDir is by name), where a first
// start would quietly make a second CA that no running machine trusts;
// the record lets the caller see that the same site directory already
// has a CA under its old name.
const SiteDirFile = "site-dir"

// RecordSiteDir notes in stateDir that siteDir is served with its CA.
func RecordSiteDir(stateDir, siteDir string) error {
	abs, err := filepath.Abs(siteDir)
	if err != nil {
		return err
	}
	p := filepath.Join(stateDir, SiteDirFile)
	if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, []byte(abs+"\n")) {
		return nil
	}
	return fsutil.WriteFileAtomic(p, []byte(abs+"\n"), 0o644)
}

// CAOfSiteDirElsewhere is another state directory beside stateDir (the
// default ones of other site names) that holds a CA and last served
// siteDir; "" when there is none.
func CAOfSiteDirElsewhere(stateDir, siteDir string) (string, error) {
	self, err := filepath.Abs(stateDir)
	if err != nil {
		return "", err
	}
	return servedFrom(filepath.Dir(self), self, siteDir)
}

// DefaultStateOfSiteDir is the default state directory (of any site name)
// that holds a CA and last served siteDir; "" when there is none. It finds
// a site's state when its site.toml cannot be read for the name.
func DefaultStateOfSiteDir(siteDir string) (string, error) {
	d, err := DefaultStateDir("x")
	if err != nil {
		return "", err
	}
	return servedFrom(filepath.Dir(d), "", siteDir)
}

// servedFrom is the directory in root, other than skip, with a CA whose
// SiteDirFile names siteDir.
func servedFrom(root, skip, siteDir string) (string, error) {
	abs, err := filepath.Abs(siteDir)
	if err != nil {
		return "", err
	}
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		dir := filepath.Join(root, e.Name())
		if !e.IsDir() || dir == skip {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, SiteDirFile))
		if err != nil || string(b) != abs+"\n" {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, CertFile)); err == nil {
			return dir, nil
		}
	}
	return "", nil
}
