package bundle

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"aead.dev/minisign"

	"github.com/plinth-dev/plinth/internal/testutil"
)

// unsigned accepts bundles without a signature: the tests of the bundle's
// contents.
var unsigned = Trust{Unsigned: true}

func signedBundle(t *testing.T, dir string) (file string, pub minisign.PublicKey, key string) {
	t.Helper()
	file = filepath.Join(dir, "b.tar")
	if _, _, err := Write(context.Background(), file, inputs(t, dir)); err != nil {
		t.Fatal(err)
	}
	key = filepath.Join(dir, "signing.key")
	pubPath, err := GenerateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := LoadSigningKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := Sign(file, priv); err != nil {
		t.Fatal(err)
	}
	keys, err := LoadTrustedKeys([]string{pubPath})
	if err != nil {
		t.Fatal(err)
	}
	return file, keys[0], key
}

func TestASignedBundleVerifiesWithItsKeyAndTheMinisignTool(t *testing.T) {
	dir := t.TempDir()
	file, pub, key := signedBundle(t, dir)
	res, err := Verify(context.Background(), file, Trust{Keys: []minisign.PublicKey{pub}})
	if err != nil || res.Signer == "" {
		t.Fatalf("signed bundle with its key trusted: signer %q, %v", res.Signer, err)
	}
	if info, err := os.Stat(key); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("the signing key's mode: %v %v", info.Mode(), err)
	}
	if _, err := GenerateKey(key); err == nil {
		t.Error("keygen overwrote an existing signing key")
	}
	// The same signature, checked by minisign itself.
	tool := testutil.NeedTool(t, "minisign", "apt-get install -y minisign (make deps does)")
	out, err := exec.Command(tool, "-Vm", file, "-p", key+".pub").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Signature and comment signature verified") {
		t.Fatalf("minisign -V: %v\n%s", err, out)
	}
}

// The attacks on the air-gapped side: a bundle nobody signed, one signed
// by someone else, and a signed bundle replaced by another with the
// signature kept are all refused, and unpacking leaves nothing behind.
func TestUnsignedForeignOrSwappedBundlesAreRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	file, pub, _ := signedBundle(t, dir)
	trust := Trust{Keys: []minisign.PublicKey{pub}}

	other := filepath.Join(t.TempDir(), "other.key")
	if _, err := GenerateKey(other); err != nil {
		t.Fatal(err)
	}
	otherKey, _ := LoadSigningKey(other)

	copyTo := func(name string) string {
		b, _ := os.ReadFile(file)
		p := filepath.Join(t.TempDir(), name)
		os.WriteFile(p, b, 0o644)
		return p
	}
	unsignedCopy := copyTo("unsigned.tar")
	foreign := copyTo("foreign.tar")
	if err := Sign(foreign, otherKey); err != nil {
		t.Fatal(err)
	}
	// Another bundle (other inputs), with the real signature beside it.
	swapped := filepath.Join(t.TempDir(), "swapped.tar")
	o := inputs(t, t.TempDir())
	fakeImage(t, o.Artifacts, "evil", map[string]string{"rootfs.squashfs": "not what was signed"})
	if _, _, err := Write(ctx, swapped, o); err != nil {
		t.Fatal(err)
	}
	sig, _ := os.ReadFile(file + SigSuffix)
	os.WriteFile(swapped+SigSuffix, sig, 0o644)

	for _, tc := range []struct {
		name, file string
		trust      Trust
		want       string
	}{
		{"unsigned", unsignedCopy, trust, "unsigned: no unsigned.tar.minisig"},
		{"signed by another key", foreign, trust, "not a valid signature of this bundle by a trusted key"},
		{"another bundle beside the signature", swapped, trust, "not a valid signature of this bundle by a trusted key"},
		{"bad signature, unsigned accepted", foreign, Trust{Keys: trust.Keys, Unsigned: true}, "not a valid signature"},
		{"signed, no key trusted", file, Trust{}, "no key is trusted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Verify(ctx, tc.file, tc.trust); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("verify: %v; want %q", err, tc.want)
			}
			state := filepath.Join(t.TempDir(), "state")
			if _, _, err := Unpack(ctx, tc.file, state, nil, tc.trust); err == nil {
				t.Fatal("unpacked")
			}
			if entries, _ := os.ReadDir(state); len(entries) != 0 {
				t.Fatalf("a refused bundle left %v", entries)
			}
		})
	}
	if _, err := Verify(ctx, unsignedCopy, unsigned); err != nil {
		t.Errorf("unsigned bundle with --unsigned: %v", err)
	}
	_, err := Verify(ctx, swapped, trust)
	if !errors.Is(err, ErrMismatch) {
		t.Errorf("a swapped bundle is not reported as a mismatch: %v", err)
	}
}
