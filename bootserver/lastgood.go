package bootserver

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/plinth-dev/plinth/profiles"
)

// The last site the server loaded, kept in the state directory. A running
// server that rejects an edit keeps serving what it had; without this copy
// the next start (a reboot of the boot server's host) would fail on the
// same edit and no machine of the rack could boot. With it the start
// serves the last good site, says loudly what is wrong with the one on
// disk, and takes the site on disk as soon as it is fixed.

// LastGoodSiteFile holds the last good site's files, in one file so it is
// replaced atomically.
const LastGoodSiteFile = "last-good-site.json"

type lastGood struct {
	Digest string            `json:"digest"`
	Saved  time.Time         `json:"saved"`
	Files  map[string]string `json:"files"` // base name → content
}

// saveLastGood keeps site's files in stateDir unless that copy is of the
// same site already.
func saveLastGood(stateDir string, site *profiles.Site) error {
	if stateDir == "" {
		return nil
	}
	p := filepath.Join(stateDir, LastGoodSiteFile)
	var old lastGood
	if readState(p, &old) == nil && old.Digest == site.Digest() {
		return nil
	}
	paths, err := filepath.Glob(filepath.Join(site.Dir, "*.toml"))
	if err != nil {
		return err
	}
	lg := lastGood{Digest: site.Digest(), Saved: time.Now().UTC(), Files: map[string]string{}}
	for _, f := range paths {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		lg.Files[filepath.Base(f)] = string(b)
	}
	return writeState(p, lg, 0o600)
}

// LoadSiteOrLastGood loads the site in siteDir; when it has problems and
// stateDir keeps a last good site, it loads that instead and returns the
// problems as siteErr (the caller serves, and says so). err is set when
// neither can be loaded: then it is the site's own problems.
func LoadSiteOrLastGood(siteDir, stateDir string) (site *profiles.Site, siteErr, err error) {
	site, siteErr = profiles.LoadSite(siteDir)
	if siteErr == nil {
		return site, nil, nil
	}
	last, lerr := loadLastGood(stateDir)
	if lerr != nil {
		return nil, nil, siteErr
	}
	return last, siteErr, nil
}

// loadLastGood loads the site kept in stateDir from a private temporary
// copy of its files.
func loadLastGood(stateDir string) (*profiles.Site, error) {
	if stateDir == "" {
		return nil, fs.ErrNotExist
	}
	var lg lastGood
	if err := readState(filepath.Join(stateDir, LastGoodSiteFile), &lg); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(stateDir, LastGoodSiteFile), err)
	}
	if len(lg.Files) == 0 {
		return nil, fs.ErrNotExist // none kept yet
	}
	dir, err := os.MkdirTemp("", "plinth-last-good-site-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	for name, text := range lg.Files {
		if name != filepath.Base(name) || filepath.Ext(name) != ".toml" {
			return nil, fmt.Errorf("last good site: file name %q", name)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			return nil, err
		}
	}
	site, err := profiles.LoadSite(dir)
	if err != nil {
		return nil, err
	}
	site.Dir = filepath.Join(stateDir, LastGoodSiteFile)
	return site, nil
}
