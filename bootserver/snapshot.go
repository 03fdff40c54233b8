// Package bootserver is `plinth serve`: one process that netboots a rack
// from the builder's artifacts. It answers DHCP (as a proxy beside the
// site's server, or as the lab's only server), serves iPXE over TFTP to
// legacy PXE firmware, hands each machine an iPXE script pinned by digest,
// its artifacts and its rendered profile over HTTP, records the events
// machines post while they boot, and shows the fleet on a live status page
// and as Prometheus metrics.
package bootserver

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/plinth-dev/plinth/manifest"
	"github.com/plinth-dev/plinth/profiles"
)

// snapshot is everything loaded from disk, immutable once built; a reload
// swaps in a new one, so a request sees one consistent view.
type snapshot struct {
	site      *profiles.Site
	images    map[string]*image   // by image name
	artifacts map[string]artifact // by hex digest
	key       string              // identifies the files it was made from
}

type image struct {
	name string
	dir  string
	m    *manifest.Manifest
}

type artifact struct {
	path  string
	size  int64
	image string
	name  string
}

// load reads the site and every DIR/<image>/manifest.json under artifacts.
func load(siteDir, artifactsDir string) (*snapshot, error) {
	site, err := profiles.LoadSite(siteDir)
	if err != nil {
		return nil, err
	}
	return loadWith(site, artifactsDir)
}

// loadWith is load with the site already read.
func loadWith(site *profiles.Site, artifactsDir string) (*snapshot, error) {
	s := &snapshot{site: site, images: map[string]*image{}, artifacts: map[string]artifact{}}
	var keys []string
	keys = append(keys, site.Digest())
	dirs, err := filepath.Glob(filepath.Join(artifactsDir, "*", manifest.FileName))
	if err != nil {
		return nil, err
	}
	sort.Strings(dirs)
	var errs []error
	for _, p := range dirs {
		dir := filepath.Dir(p)
		if strings.HasPrefix(filepath.Base(dir), ".") {
			continue // a build in progress
		}
		m, err := manifest.Read(dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.images[m.Name] = &image{name: m.Name, dir: dir, m: m}
		keys = append(keys, m.Name+" "+m.Inputs)
		for _, f := range m.Files {
			hexd, err := manifest.ParseDigest(f.SHA256)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %w", p, f.Name, err))
				continue
			}
			s.artifacts[hexd] = artifact{path: filepath.Join(dir, f.Name), size: f.Size, image: m.Name, name: f.Name}
			if st, err := os.Stat(filepath.Join(dir, f.Name)); err == nil {
				keys = append(keys, fmt.Sprintf("%s %d %d", f.Name, st.Size(), st.ModTime().UnixNano()))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	s.key = strings.Join(keys, "\n")
	return s, nil
}

// bootFiles returns the digests a machine of image boots: kernel, initramfs, rootfs.
func (im *image) bootFiles() (kernel, initrd, rootfs string, err error) {
	get := func(names ...string) (string, error) {
		for _, n := range names {
			if f := im.m.File(n); f != nil {
				return f.SHA256, nil
			}
		}
		return "", fmt.Errorf("image %s has no %s (rebuild it with a [kernel] and the netboot format)", im.name, names[0])
	}
	if kernel, err = get(manifest.KernelFile); err != nil {
		return
	}
	if initrd, err = get(manifest.Initramfs, "initramfs.cpio.gz"); err != nil {
		return
	}
	rootfs, err = get(manifest.Rootfs)
	return
}

// fingerprint digests what a reload reads: the site's *.toml files (as
// profiles.LoadSite picks them) and every image's manifest. The watcher
// reloads only when it changes, so a broken site is reported once, not
// every poll, and an editor's or deploy tool's temporary file next to
// site.toml does not count as an edit.
func fingerprint(siteDir, artifactsDir string) string {
	h := sha256.New()
	add := func(p string) {
		b, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintf(h, "%s error %v\n", p, err)
			return
		}
		fmt.Fprintf(h, "%s %d\n", p, len(b))
		h.Write(b)
	}
	site, err := filepath.Glob(filepath.Join(siteDir, "*.toml"))
	if err != nil {
		fmt.Fprintf(h, "%s error %v\n", siteDir, err)
	}
	for _, p := range site {
		add(p)
	}
	ms, _ := filepath.Glob(filepath.Join(artifactsDir, "*", manifest.FileName))
	sort.Strings(ms)
	for _, p := range ms {
		add(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}
