package qemutests

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/lab"
	"github.com/plinth-dev/plinth/lab/qemu"
	"github.com/plinth-dev/plinth/manifest"
)

// farEnv is the far side: no Go proxy, a module cache that is empty, and
// a plinth cache of its own.
func farEnv(far string) []string {
	return append(os.Environ(), "GOPROXY=off", "GOFLAGS=-mod=mod", "GOMODCACHE="+filepath.Join(far, "empty-modcache"),
		"PLINTH_CACHE="+filepath.Join(far, "cache"), "PLINTH_SRC="+srcDir)
}

// farPlinth runs the CLI on the far side with no network at all (a new,
// empty network namespace); it returns the output and the error.
func farPlinth(ctx context.Context, far string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "unshare", append([]string{"-n", plinthBin}, args...)...)
	cmd.Dir, cmd.Env = far, farEnv(far)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestAirgapBundleNetbootsWithNoNetwork mirrors images/base.toml's sources,
// builds it, bundles artifacts, mirror and a site (twice: the same bytes),
// moves the bundle alone to a fresh directory, verifies it there with no
// network and an empty module cache (and sees a flipped byte caught), then
// serves it with `plinth serve --bundle` inside the lab's network and
// netboots a machine from it until its agent reports ready.
//
// With PLINTH_AIRGAP_BUILD=1 (make airgap-test) the far side also rebuilds
// the image from the bundle's mirror, offline, and must get the very
// manifest that was bundled: that adds the initramfs compile (~3 min here).
func TestAirgapBundleNetbootsWithNoNetwork(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	need(t, filepath.Join(fixtures, "kernel", ".done"), filepath.Join(fixtures, "oci", "index.json"),
		filepath.Join(srcDir, "build", "fixtures", "kernel"))
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare missing (util-linux)")
	}
	near, far := t.TempDir(), t.TempDir()
	spec := filepath.Join(srcDir, "images", "base.toml")
	art := filepath.Join(near, "artifacts")
	plinth(t, ctx, "build", "--out", art, spec)
	start := time.Now()
	plinth(t, ctx, "mirror", "--to", filepath.Join(near, "mirror"), spec)
	tMirror := time.Since(start)
	writeFile(t, filepath.Join(near, "site", "site.toml"), `
[site]
name   = "air"
domain = "air.example"
[dhcp]
mode        = "server"
range_start = "10.78.0.100"
range_end   = "10.78.0.150"
netmask     = "255.255.255.0"
router      = "10.78.0.1"
dns         = ["10.78.0.1"]
[[machine]]
name     = "air-1"
mac      = "52:54:00:78:00:01"
hostname = "island"
image    = "base"
`)
	// The near side's signing key; the far side is given KEY.pub once.
	key := filepath.Join(near, "signing.key")
	plinth(t, ctx, "keygen", "--out", key)
	bundleArgs := func(out string) []string {
		return []string{"bundle", "--out", out, "--sign", key, "--artifacts", art, "--mirror", filepath.Join(near, "mirror"), "--site", filepath.Join(near, "site")}
	}
	start = time.Now()
	plinth(t, ctx, bundleArgs(filepath.Join(near, "air.tar"))...)
	tBundle := time.Since(start)
	plinth(t, ctx, bundleArgs(filepath.Join(near, "again.tar"))...)
	if a, b := fileSHA(t, filepath.Join(near, "air.tar")), fileSHA(t, filepath.Join(near, "again.tar")); a != b {
		t.Fatalf("two bundles of the same inputs differ: %s vs %s", a, b)
	}
	st, err := os.Stat(filepath.Join(near, "air.tar"))
	if err != nil {
		t.Fatal(err)
	}
	figure(t, "airgap: mirror of base.toml %.1fs, bundle %.1f MB in %.1fs", tMirror.Seconds(), float64(st.Size())/1e6, tBundle.Seconds())

	// Only the bundle, its .sha256 and its signature cross the gap (and,
	// once and beforehand, the public key).
	bundle := filepath.Join(far, "air.tar")
	for _, f := range []string{"air.tar", "air.tar.sha256", "air.tar.minisig", "signing.key.pub"} {
		if err := os.Rename(filepath.Join(near, f), filepath.Join(far, f)); err != nil {
			t.Fatal(err)
		}
	}
	wantManifest, err := os.ReadFile(filepath.Join(art, "base", manifest.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(near); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(far, "empty-modcache"), 0o755); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	pub := filepath.Join(far, "signing.key.pub")
	if out, err := farPlinth(ctx, far, "verify", bundle); err == nil || !strings.Contains(out, "no key is trusted") {
		t.Fatalf("verify without a trusted key: %v\n%s", err, out)
	}
	if out, err := farPlinth(ctx, far, "verify", "--trust", pub, bundle); err != nil || !strings.Contains(out, "checked against") || !strings.Contains(out, "signed by key") {
		t.Fatalf("verify on the far side: %v\n%s", err, out)
	}
	figure(t, "airgap: verify on the far side %.1fs", time.Since(start).Seconds())
	verifyCatchesAFlip(t, ctx, far, bundle)

	if os.Getenv("PLINTH_AIRGAP_BUILD") != "" {
		offlineBuildMatches(t, ctx, far, bundle, wantManifest)
	}
	serveBundleAndBoot(t, ctx, far, bundle)
}

// verifyCatchesAFlip flips one byte of the rootfs in a copy of the bundle:
// plinth verify fails and names the file with both digests.
func verifyCatchesAFlip(t *testing.T, ctx context.Context, far, bundle string) {
	t.Helper()
	bad := filepath.Join(far, "bad.tar")
	data, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(data)
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no rootfs in the bundle: %v", err)
		}
		if h.Name == "artifacts/base/rootfs.squashfs" {
			break
		}
	}
	at := len(data) - r.Len() // where the entry's data starts
	data[at+4096] ^= 0x20
	if err := os.WriteFile(bad, data, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(bad)
	out, err := farPlinth(ctx, far, "verify", "--unsigned", bad)
	if err == nil {
		t.Fatalf("verify passed a bundle with a flipped byte:\n%s", out)
	}
	if !regexp.MustCompile(`artifacts/base/rootfs\.squashfs: sha256:[0-9a-f]{64}, plinth-bundle\.json says sha256:[0-9a-f]{64}`).MatchString(out) {
		t.Errorf("verify does not name the damaged file with both digests:\n%s", out)
	}
}

// offlineBuildMatches rebuilds base from the bundle's mirror with no
// network and an empty module cache and compares the manifest.
func offlineBuildMatches(t *testing.T, ctx context.Context, far, bundle string, want []byte) {
	t.Helper()
	out, err := farPlinth(ctx, far, "verify", "--trust", filepath.Join(far, "signing.key.pub"), "--unpack", filepath.Join(far, "unpacked"), bundle)
	if err != nil {
		t.Fatalf("verify --unpack: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`unpacked into (\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no unpack directory in:\n%s", out)
	}
	mirror := filepath.Join(m[1], "mirror")
	start := time.Now()
	out, err = farPlinth(ctx, far, "build", "--out", filepath.Join(far, "rebuilt"), "--mirror", mirror, filepath.Join(mirror, "specs", "base.toml"))
	if err != nil {
		t.Fatalf("offline build from the mirror: %v\n%s", err, out)
	}
	figure(t, "airgap: offline build of base from the mirror (empty module cache, no network) %.1fs", time.Since(start).Seconds())
	got, err := os.ReadFile(filepath.Join(far, "rebuilt", "base", manifest.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the offline build differs from the bundled one:\n%s\nwant:\n%s", got, want)
	}
}

// serveBundleAndBoot serves the bundle inside the lab (no route out, the
// far side's environment) and netboots one machine until it is ready.
func serveBundleAndBoot(t *testing.T, ctx context.Context, far, bundle string) {
	t.Helper()
	if err := lab.Available(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	// Its own subnet: the site's DHCP range must match the lab's.
	l, err := lab.New(ctx, "air", "10.78.0.1/24", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	server := "http://" + l.Server + ":8080"
	srvLog := filepath.Join(far, "serve.log")
	logf, err := os.Create(srvLog)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	env := []string{"env"}
	for _, kv := range farEnv(far) {
		if strings.HasPrefix(kv, "GO") || strings.HasPrefix(kv, "PLINTH_") {
			env = append(env, kv)
		}
	}
	args := append(env, plinthBin, "serve", "--init-ca", "--bundle", bundle, "--trust", filepath.Join(far, "signing.key.pub"), "--bundle-dir", filepath.Join(far, "state"),
		"--state", filepath.Join(far, "ca"), "--listen", l.Server+":8080", "--server-ip", l.Server, "--dhcp-interface", "br0")
	if err := l.Start(ctx, logf, args[0], args[1:]...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(srvLog)
			t.Logf("plinth serve log:\n%s", b)
		}
	})
	waitFor(t, ctx, "boot server", func() bool { _, err := l.Get(ctx, server+api.PathMachines); return err == nil })
	netdev, err := l.AddTap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := qemu.Start(ctx, t, qemu.Config{
		Name: "air-1", Memory: 1024, Boot: "n", Wrap: l.Wrap(), LogDir: far,
		NICs: []qemu.NIC{{MAC: "52:54:00:78:00:01", Netdev: netdev}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(ctx, regexp.MustCompile(`plinth-agent: ready host=island role=\S* root=overlay lower=ro upper=rw`)); err != nil {
		t.Fatal(err)
	}
	figure(t, "airgap: netboot from the bundle (%s): ready %.1fs after QEMU start", qemu.Accel(ctx), vm.Since().Seconds())
	b, err := os.ReadFile(srvLog)
	if err == nil && !strings.Contains(string(b), "serving from bundle") {
		t.Errorf("the server did not say it serves the bundle:\n%s", b)
	}
}
