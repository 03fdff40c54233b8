package squashfs

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/internal/testutil"
)

func needTool(t *testing.T) {
	t.Helper()
	testutil.NeedTool(t, Tool, "apt-get install squashfs-tools-ng (make deps does)")
}

// testTar builds a small tree with the entry kinds a root filesystem has.
func testTar(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	ts := time.Unix(1700000000, 0)
	add := func(h *tar.Header, body string) {
		h.ModTime = ts
		h.Format = tar.FormatPAX
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if body != "" {
			tw.Write([]byte(body))
		}
	}
	add(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	add(&tar.Header{Name: "etc/hostname", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 0}, "x\n")
	add(&tar.Header{Name: "home/", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	add(&tar.Header{Name: "home/user/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 1000, Gid: 1000}, "")
	add(&tar.Header{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	add(&tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}, "")
	add(&tar.Header{Name: "lib", Typeflag: tar.TypeSymlink, Linkname: "usr/lib"}, "")
	add(&tar.Header{Name: "usr/bin/ping", Typeflag: tar.TypeReg, Mode: 0o755,
		PAXRecords: map[string]string{"SCHILY.xattr.user.plinth": "yes"}}, "ping")
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestFromTarKeepsOwnersDevicesAndLinks(t *testing.T) {
	needTool(t)
	out := filepath.Join(t.TempDir(), "root.sqfs")
	if err := FromTar(context.Background(), bytes.NewReader(testTar(t)), out, Options{Epoch: time.Unix(1700000000, 0)}); err != nil {
		t.Fatal(err)
	}
	desc, err := exec.Command("rdsquashfs", "-d", out).CombinedOutput()
	if err != nil {
		t.Fatalf("rdsquashfs: %v: %s", err, desc)
	}
	// rdsquashfs -d prints one gensquashfs line per inode: kind path mode uid gid [extra].
	for _, want := range []string{
		"file etc/hostname 0644 0 0",
		"dir home/user 0700 1000 1000",
		"nod dev/null 0666 0 0 c 1 3",
		"slink lib 0777 0 0 usr/lib",
		"file usr/bin/ping 0755 0 0",
	} {
		if !strings.Contains(string(desc), want) {
			t.Errorf("image lacks %q; description:\n%s", want, desc)
		}
	}
	x, err := exec.Command("rdsquashfs", "-x", "/usr/bin/ping", out).CombinedOutput()
	if err != nil || !strings.Contains(string(x), "user.plinth") {
		t.Errorf("xattr user.plinth lost: %v: %s", err, x)
	}
}

func TestFromTarIsReproducibleAcrossJobCounts(t *testing.T) {
	needTool(t)
	dir := t.TempDir()
	in := testTar(t)
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	ctx := context.Background()
	if err := FromTar(ctx, bytes.NewReader(in), a, Options{Jobs: 1, Epoch: time.Unix(1, 0)}); err != nil {
		t.Fatal(err)
	}
	if err := FromTar(ctx, bytes.NewReader(in), b, Options{Jobs: 2, Epoch: time.Unix(1, 0)}); err != nil {
		t.Fatal(err)
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb) {
		t.Fatal("same tar gave different images")
	}
}

func TestFromTarLeavesOldImageOnBadInput(t *testing.T) {
	needTool(t)
	out := filepath.Join(t.TempDir(), "root.sqfs")
	if err := os.WriteFile(out, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := FromTar(context.Background(), strings.NewReader(strings.Repeat("not a tar", 100)), out, Options{})
	if err == nil {
		t.Fatal("garbage input was accepted")
	}
	if b, _ := os.ReadFile(out); string(b) != "old" {
		t.Fatalf("old image was replaced: %q", b)
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".root.sqfs.*")); len(m) != 0 {
		t.Fatalf("temporary files left: %v", m)
	}
}
