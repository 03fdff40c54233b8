package stage1

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
)

// Paths on a boot medium (plinth.iso, disk.raw), written by builder/disk.
const (
	MediumRootfs = "plinth/rootfs.squashfs"
	MediumDigest = "plinth/rootfs.digest"
	MediumConfig = "plinth/config.json"
)

// MediumMounter is what a Mounter also does on a machine booted from an ISO
// or a disk image whose root filesystem sits on the medium beside the
// kernel, not in the initramfs.
type MediumMounter interface {
	// MountMedium mounts, read-only at dir, the file system whose
	// plinth/rootfs.digest says want, waiting for block devices to appear,
	// and returns the device it mounted.
	MountMedium(ctx context.Context, want, dir string) (string, error)
}

// onMedium reports whether this boot takes its root from a boot medium:
// no boot server, and no root filesystem in the initramfs.
func (s *Stage1) onMedium() bool {
	if s.Params.Server != "" {
		return false
	}
	_, err := fs.Stat(s.Files, strings.TrimPrefix(EmbeddedRootfs, "/"))
	return errors.Is(err, fs.ErrNotExist)
}

// wantRootfs is the rootfs digest this boot must find: from the command
// line, or the initramfs's rootfs.digest.
func (s *Stage1) wantRootfs() (string, error) {
	if s.Params.Rootfs != "" {
		return s.Params.Rootfs, nil
	}
	b, err := s.readFile(EmbeddedDigest)
	if err != nil {
		return "", fmt.Errorf("no %s on the command line and no %s: %w", api.ParamRootfs, EmbeddedDigest, err)
	}
	want := strings.TrimSpace(string(b))
	if err := CheckDigest(want); err != nil {
		return "", fmt.Errorf("%s: %w", EmbeddedDigest, err)
	}
	return want, nil
}

// mountMedium finds and mounts the medium once, at RunDir/medium: /run
// moves into the new root at switch_root, so the mount (and the loop
// device over the squashfs on it) stays.
func (s *Stage1) mountMedium(ctx context.Context) error {
	if s.medium != "" {
		return nil
	}
	want, err := s.wantRootfs()
	if err != nil {
		return permanent{err}
	}
	mm, ok := s.Mounter.(MediumMounter)
	if !ok {
		return permanent{errors.New("no root filesystem in the initramfs, no boot server, and this stage 1 cannot mount a boot medium")}
	}
	start := time.Now()
	dir := filepath.Join(s.RunDir, "medium")
	dev, err := mm.MountMedium(ctx, want, dir)
	if err != nil {
		return permanent{fmt.Errorf("boot medium with rootfs %s: %w", want, err)}
	}
	s.medium = dir
	s.Con.Step(ctx, api.StageMedium, "%s holds rootfs %s, mounted read-only at %s (%.1fs)", dev, want, dir, time.Since(start).Seconds())
	return nil
}

// mediumConfig reads the profile from the medium, where an operator may
// have replaced it, falling back to one built into the initramfs.
func (s *Stage1) mediumConfig(ctx context.Context) (src string, b []byte, err error) {
	if err := s.mountMedium(ctx); err != nil {
		return "medium", nil, err
	}
	src = filepath.Join(s.medium, MediumConfig)
	b, err = os.ReadFile(src)
	if errors.Is(err, fs.ErrNotExist) {
		src = EmbeddedConfig
		b, err = s.readFile(EmbeddedConfig)
	}
	if err != nil {
		err = permanent{err}
	}
	return src, b, err
}

// mediumRootfs verifies the squashfs on the medium before it is mounted.
func (s *Stage1) mediumRootfs(ctx context.Context) error {
	if err := s.mountMedium(ctx); err != nil {
		return err
	}
	want, err := s.wantRootfs()
	if err != nil {
		return permanent{err}
	}
	start := time.Now()
	if err := VerifyFile(os.DirFS(s.medium), MediumRootfs, want); err != nil {
		return permanent{err}
	}
	s.rootfs = filepath.Join(s.medium, MediumRootfs)
	s.Con.Step(ctx, api.StageRootfs, "%s on the medium verified (%.1fs)", want, time.Since(start).Seconds())
	return nil
}
