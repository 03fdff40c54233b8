package stage1

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mediumMachine is a fake machine with block devices: each a directory
// standing for the file system on it.
type mediumMachine struct {
	*fakeMachine
	devices map[string]string // device → tree
	mounted string
}

func (m *mediumMachine) MountMedium(ctx context.Context, want, dir string) (string, error) {
	for dev, tree := range m.devices {
		b, err := os.ReadFile(filepath.Join(tree, MediumDigest))
		if err == nil && strings.TrimSpace(string(b)) == want {
			if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
				return "", err
			}
			m.mounted = dev
			return dev, os.Symlink(tree, dir)
		}
	}
	return "", errors.New("not found in 30s (sr0: iso9660 without plinth/rootfs.digest)")
}

// mediumInitramfs is stage 1 without a root filesystem, as builder/disk
// boots it; the digest comes on the command line.
func mediumInitramfs(t *testing.T) string {
	return writeTree(t, map[string]string{
		"etc/plinth/modules": "lib/modules/6.1/kernel/fs/isofs/isofs.ko\n",
		"etc/plinth/cmdline": "plinth.init=/lib/systemd/systemd",
	})
}

func medium(t *testing.T, rootfs, digest, config string) string {
	files := map[string]string{MediumRootfs: rootfs, MediumDigest: digest + "\n"}
	if config != "" {
		files[MediumConfig] = config
	}
	return writeTree(t, files)
}

func TestRunFromMediumMountsTheOneWithItsDigestAndReadsItsProfile(t *testing.T) {
	good := digestOf([]byte(rootfsBytes))
	other := digestOf([]byte("another build"))
	m := &mediumMachine{
		fakeMachine: &fakeMachine{cmdline: "console=ttyS0 plinth.rootfs=" + good},
		devices: map[string]string{
			"/dev/vdb": medium(t, "another build", other, `{"version":2,"machine":"x","hostname":"wrong"}`),
			"/dev/sr0": medium(t, rootfsBytes, good, `{"version":2,"machine":"cd-1","hostname":"from-cd"}`),
		},
	}
	s, out := newStage1(t, m.fakeMachine, mediumInitramfs(t))
	s.Mounter = m
	err := s.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "switched (fake)") {
		t.Fatalf("Run = %v\n%s", err, out)
	}
	if m.mounted != "/dev/sr0" || m.mountedSrc != filepath.Join(s.RunDir, "medium", MediumRootfs) {
		t.Errorf("medium %q, squashfs mounted from %q", m.mounted, m.mountedSrc)
	}
	if b, _ := os.ReadFile(filepath.Join(s.NewRoot, "etc/hostname")); string(b) != "from-cd\n" {
		t.Errorf("hostname file %q, want the medium's profile's", b)
	}
	for _, want := range []string{"plinth: [init] plinth stage 1 started: root on a boot medium", "plinth: [medium] /dev/sr0 holds rootfs " + good, "plinth: [rootfs] " + good + " on the medium verified"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
	if m.netCalls != 0 {
		t.Errorf("network brought up %d times for a medium boot", m.netCalls)
	}
}

func TestRunFromMediumRefusesACorruptRootfs(t *testing.T) {
	good := digestOf([]byte(rootfsBytes))
	m := &mediumMachine{
		fakeMachine: &fakeMachine{cmdline: "plinth.rootfs=" + good},
		devices:     map[string]string{"/dev/sr0": medium(t, "hsqs pretend squashfX", good, `{"version":2,"machine":"cd-1","hostname":"x"}`)},
	}
	s, out := newStage1(t, m.fakeMachine, mediumInitramfs(t))
	s.Mounter = m
	err := s.Run(context.Background())
	if !IsPermanent(err) || !errors.Is(err, ErrDigest) {
		t.Fatalf("Run = %v, want a permanent digest refusal", err)
	}
	if m.mountedSrc != "" || !strings.Contains(out.String(), "plinth: [rootfs] REFUSED: sha256 mismatch") {
		t.Errorf("mounted %q; console:\n%s", m.mountedSrc, out)
	}
}

func TestRunFromMediumSaysWhatItLookedFor(t *testing.T) {
	for name, c := range map[string]struct {
		cmdline string
		mounter bool
		want    string
	}{
		"no digest":     {"console=ttyS0", true, "no plinth.rootfs on the command line and no /plinth/rootfs.digest"},
		"no medium":     {"plinth.rootfs=" + digestOf([]byte("x")), true, "sr0: iso9660 without plinth/rootfs.digest"},
		"cannot search": {"plinth.rootfs=" + digestOf([]byte("x")), false, "cannot mount a boot medium"},
	} {
		t.Run(name, func(t *testing.T) {
			m := &mediumMachine{fakeMachine: &fakeMachine{cmdline: c.cmdline}}
			s, out := newStage1(t, m.fakeMachine, mediumInitramfs(t))
			if c.mounter {
				s.Mounter = m
			}
			err := s.Run(context.Background())
			if !IsPermanent(err) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Run = %v, want it to say %q", err, c.want)
			}
			if !strings.Contains(out.String(), "plinth: [profile] FAILED") {
				t.Errorf("console:\n%s", out)
			}
		})
	}
}
