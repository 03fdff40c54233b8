package qemutests

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/lab"
	"github.com/plinth-dev/plinth/lab/qemu"
	"github.com/plinth-dev/plinth/manifest"
)

// registryVersion is the distribution release qemu-tests/fixtures/registry.sh builds.
const registryVersion = "v3.1.2"

// testRegistry is the reference registry running inside a lab's network
// namespace, on its loopback, with TLS (its own CA) and htpasswd.
type testRegistry struct {
	addr    string // host:port
	root    string // its storage directory
	ca      string // CA certificate file clients trust (SSL_CERT_FILE)
	docker  string // a DOCKER_CONFIG directory with the right credentials
	wrong   string // one with a wrong password
	logPath string
}

// writeTLS makes a CA and a server certificate for 127.0.0.1 signed by it.
func writeTLS(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "registry test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, cert, key = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "registry.pem"), filepath.Join(dir, "registry.key")
	writeFile(t, ca, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})))
	writeFile(t, cert, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER})))
	writeFile(t, key, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})))
	return ca, cert, key
}

// dockerConfig writes DIR/config.json as `docker login` does.
func dockerConfig(t *testing.T, dir, registry, user, password string) string {
	t.Helper()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	writeFile(t, filepath.Join(dir, "config.json"), fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, registry, auth))
	return dir
}

// startRegistry starts the registry fixture in l's namespace and waits
// until it answers (401 to an anonymous /v2/).
func startRegistry(t *testing.T, ctx context.Context, l *lab.Lab, dir string) *testRegistry {
	t.Helper()
	bin := filepath.Join(fixtures, "registry", registryVersion, "registry")
	need(t, bin)
	r := &testRegistry{addr: "127.0.0.1:5443", root: filepath.Join(dir, "storage"), logPath: filepath.Join(dir, "registry.log")}
	var cert, key string
	r.ca, cert, key = writeTLS(t, dir)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret-pass"), bcrypt.DefaultCost)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "htpasswd"), "plinth-ci:"+string(hash)+"\n")
	r.docker = dockerConfig(t, filepath.Join(dir, "docker-good"), r.addr, "plinth-ci", "s3cret-pass")
	r.wrong = dockerConfig(t, filepath.Join(dir, "docker-wrong"), r.addr, "plinth-ci", "not-the-password")
	cfg := filepath.Join(dir, "config.yml")
	writeFile(t, cfg, fmt.Sprintf(`version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
  tls:
    certificate: %s
    key: %s
auth:
  htpasswd:
    realm: plinth-test
    path: %s
`, r.root, r.addr, cert, key, filepath.Join(dir, "htpasswd")))
	logf, err := os.Create(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	if err := l.Start(ctx, logf, bin, "serve", cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(r.logPath)
			t.Logf("registry log (last 4 KB):\n%s", tail(b, 4096))
		}
	})
	waitFor(t, ctx, "registry", func() bool {
		c, err := l.Dial(ctx, "tcp", r.addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return r
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// inLab runs plinth inside the lab's namespace with the given DOCKER_CONFIG
// and the registry's CA trusted, returning its combined output.
func (r *testRegistry) plinthIn(ctx context.Context, l *lab.Lab, docker, cache string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, l.Wrap()[0], append(append(l.Wrap()[1:], plinthBin), args...)...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+docker, "SSL_CERT_FILE="+r.ca, "PLINTH_CACHE="+cache)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// blobFile is where the registry's filesystem driver keeps a blob.
func (r *testRegistry) blobFile(digest string) string {
	hexd := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(r.root, "docker", "registry", "v2", "blobs", "sha256", hexd[:2], hexd, "data")
}

// TestRegistryPushServeNetboot publishes a built image to the reference
// registry (TLS, htpasswd) with plinth push, serves it with plinth serve
// --image REF@digest and netboots a machine from it to ready. Wrong
// credentials give an error naming the registry; a layer corrupted in the
// registry's storage is refused by a fresh pull and nothing of it is kept.
func TestRegistryPushServeNetboot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	art := buildSmoke(t, ctx)
	m, err := manifest.Read(art)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	l := newLab(t)
	reg := startRegistry(t, ctx, l, filepath.Join(dir, "registry"))
	repo := reg.addr + "/plinth/smoke"

	// Wrong credentials: refused, the registry named.
	out, err := reg.plinthIn(ctx, l, reg.wrong, filepath.Join(dir, "cache-wrong"), "push", art, repo+":v1")
	if err == nil {
		t.Fatalf("push with a wrong password succeeded:\n%s", out)
	}
	if !strings.Contains(out, "registry "+reg.addr+" refused the credentials") {
		t.Errorf("the error does not say the registry %s refused the credentials:\n%s", reg.addr, out)
	}

	start := time.Now()
	out, err = reg.plinthIn(ctx, l, reg.docker, filepath.Join(dir, "cache"), "push", art, repo+":v1")
	if err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	tPush := time.Since(start)
	ref := regexp.MustCompile(regexp.QuoteMeta(repo) + `@sha256:[0-9a-f]{64}`).FindString(out)
	if ref == "" {
		t.Fatalf("push printed no reference by digest:\n%s", out)
	}
	// The registry holds each file as a blob under the digest the image's
	// manifest names.
	var rootfs string
	for _, f := range m.Files {
		if _, err := os.Stat(reg.blobFile(f.SHA256)); err != nil {
			t.Errorf("%s (%s) is not a blob of the registry: %v", f.Name, f.SHA256, err)
		}
		if f.Name == manifest.Rootfs {
			rootfs = f.SHA256
		}
	}
	// Pulling with the wrong credentials names the registry too.
	out, err = reg.plinthIn(ctx, l, reg.wrong, filepath.Join(dir, "cache-wrong"), "serve", "--site", "/nonexistent", "--image", ref)
	if err == nil || !strings.Contains(out, "registry "+reg.addr+" refused the credentials") {
		t.Errorf("serve --image with a wrong password: err %v, and the output does not say the registry refused the credentials:\n%s", err, out)
	}

	// Serve from the registry and netboot.
	site := filepath.Join(dir, "site")
	writeFile(t, filepath.Join(site, "site.toml"), pxeSite+`
[[machine]]
name     = "reg-1"
mac      = "52:54:00:77:00:31"
hostname = "from-registry"
image    = "smoke"
`)
	srvLog := filepath.Join(dir, "serve.log")
	logf, err := os.Create(srvLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	cache := filepath.Join(dir, "cache")
	args := []string{"DOCKER_CONFIG=" + reg.docker, "SSL_CERT_FILE=" + reg.ca, "PLINTH_CACHE=" + cache, plinthBin,
		"serve", "--init-ca", "--site", site, "--image", ref,
		"--listen", l.Server + ":8080", "--server-ip", l.Server, "--dhcp-interface", "br0", "--state", filepath.Join(dir, "state")}
	if err := l.Start(ctx, logf, "env", args...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(srvLog)
			t.Logf("plinth serve log:\n%s", b)
		}
	})
	server := "http://" + l.Server + ":8080"
	waitFor(t, ctx, "boot server", func() bool { _, err := l.Get(ctx, server+api.PathMachines); return err == nil })
	netdev, err := l.AddTap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	times := bootAllReady(t, ctx, l, dir, []pxeBoot{{pxeMachine{"reg-1", "52:54:00:77:00:31", "from-registry", "none"},
		[]qemu.NIC{{MAC: "52:54:00:77:00:31", Netdev: netdev}}, 1024}})
	figure(t, "registry: push of the smoke image (%d files) %.1fs; netboot served from the registry (%s): ready %.1fs after QEMU start",
		len(m.Files), tPush.Seconds(), qemu.Accel(ctx), times[0].Seconds())
	b, _ := os.ReadFile(srvLog)
	if !strings.Contains(string(b), "serving images pulled from a registry") {
		t.Errorf("the server did not say it serves images pulled from the registry:\n%s", b)
	}

	// plinth bundle takes the reference too: the pulled image goes into the
	// bundle as a built one would.
	out, err = reg.plinthIn(ctx, l, reg.docker, cache, "bundle", "--out", filepath.Join(dir, "from-registry.tar"), "--image", ref)
	if err != nil || !strings.Contains(out, "1 images") {
		t.Errorf("bundle --image: %v\n%s", err, out)
	}

	// plinth mirror keeps it as it is; the mirror's layout serves the same
	// digest with no registry.
	mirrorDir := filepath.Join(dir, "mirror")
	if out, err = reg.plinthIn(ctx, l, reg.docker, cache, "mirror", "--to", mirrorDir, "--image", ref); err != nil {
		t.Fatalf("mirror --image: %v\n%s", err, out)
	}
	local := "oci:" + mirrorDir + ref[strings.Index(ref, "@"):]
	out, err = reg.plinthIn(ctx, l, reg.wrong, filepath.Join(dir, "cache-mirror"), "bundle", "--out", filepath.Join(dir, "from-mirror.tar"), "--image", local)
	if err != nil || !strings.Contains(out, "1 images") {
		t.Errorf("bundle --image %s: %v\n%s", local, err, out)
	}

	// A layer corrupted in the registry: a fresh pull refuses it and keeps
	// nothing.
	blob := reg.blobFile(rootfs)
	data, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(blob, data, 0o644); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(dir, "cache-fresh")
	out, err = reg.plinthIn(ctx, l, reg.docker, fresh, "serve", "--site", site, "--image", ref, "--listen", "127.0.0.1:0")
	if err == nil {
		t.Fatalf("serve --image with a corrupted rootfs layer did not fail:\n%s", out)
	}
	if !strings.Contains(out, "refused") || !strings.Contains(out, manifest.Rootfs) || !strings.Contains(out, rootfs) {
		t.Errorf("the refusal does not name the file and its digest (%s %s):\n%s", manifest.Rootfs, rootfs, out)
	}
	if _, err := os.Stat(filepath.Join(fresh, "registry", "pulled", strings.TrimPrefix(ref[strings.Index(ref, "@")+1:], "sha256:"))); err == nil {
		t.Error("the refused pull left an artifact directory in the cache")
	}
}
