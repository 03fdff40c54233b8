package bundle

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"aead.dev/minisign"

	"github.com/plinth-dev/plinth/internal/fsutil"
)

// Bundles are signed in minisign's format (Ed25519 over the BLAKE2b-512 of
// the whole tar), beside the bundle as FILE.minisig, so the far side can
// check one with the public key it was given out of band — with plinth or
// with the minisign tool itself (minisign -Vm FILE -p KEY.pub). Signing
// proves who made the bundle; the manifests and FILE.sha256 only that it
// is what its maker wrote.

// SigSuffix names a bundle's signature file: FILE.minisig.
const SigSuffix = ".minisig"

// Trust is what a bundle must carry to be accepted.
type Trust struct {
	// Keys are the public keys whose signature is accepted.
	Keys []minisign.PublicKey
	// Unsigned accepts a bundle without FILE.minisig. A signature that
	// is present is checked regardless, and a bad one refused.
	Unsigned bool
}

// GenerateKey writes a new signing key to path (mode 0600) and its public
// key to path.pub; neither may exist already.
func GenerateKey(path string) (pubPath string, err error) {
	pub, priv, err := minisign.GenerateKey(nil)
	if err != nil {
		return "", err
	}
	privText, err := priv.MarshalText()
	if err != nil {
		return "", err
	}
	pubText, err := pub.MarshalText()
	if err != nil {
		return "", err
	}
	pubPath = path + ".pub"
	for _, p := range []string{path, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return "", fmt.Errorf("keygen: %s exists; a signing key is never overwritten", p)
		}
	}
	if err := fsutil.WriteFileAtomic(path, append(privText, '\n'), 0o600); err != nil {
		return "", fmt.Errorf("keygen: %w", err)
	}
	if err := fsutil.WriteFileAtomic(pubPath, append(pubText, '\n'), 0o644); err != nil {
		return "", fmt.Errorf("keygen: %w", err)
	}
	return pubPath, nil
}

// LoadSigningKey reads a private key plinth keygen (or minisign -G -W)
// wrote; an encrypted one is decrypted with $PLINTH_SIGN_PASSWORD.
func LoadSigningKey(path string) (minisign.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return minisign.PrivateKey{}, fmt.Errorf("signing key: %w", err)
	}
	var k minisign.PrivateKey
	if minisign.IsEncrypted(b) {
		pw, ok := os.LookupEnv("PLINTH_SIGN_PASSWORD")
		if !ok {
			return k, fmt.Errorf("signing key %s is encrypted: set PLINTH_SIGN_PASSWORD", path)
		}
		if k, err = minisign.DecryptKey(pw, b); err != nil {
			return k, fmt.Errorf("signing key %s: %w", path, err)
		}
		return k, nil
	}
	if err := k.UnmarshalText(b); err != nil {
		return k, fmt.Errorf("signing key %s: %w", path, err)
	}
	return k, nil
}

// LoadTrustedKeys reads minisign public key files.
func LoadTrustedKeys(paths []string) ([]minisign.PublicKey, error) {
	var keys []minisign.PublicKey
	for _, p := range paths {
		k, err := minisign.PublicKeyFromFile(p)
		if err != nil {
			return nil, fmt.Errorf("trusted key %s: %w", p, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// Sign writes FILE.minisig for the bundle at file.
func Sign(file string, key minisign.PrivateKey) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	defer f.Close()
	r := minisign.NewReader(f)
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fmt.Errorf("sign %s: %w", file, err)
	}
	sig := r.SignWithComments(key, "plinth bundle "+baseName(file), "plinth bundle signature, key "+keyID(key.ID()))
	return fsutil.WriteFileAtomic(file+SigSuffix, sig, 0o644)
}

// errUnsigned is a bundle without FILE.minisig where one is required.
var errUnsigned = errors.New("unsigned")

// checkSignature checks file's signature, r having read all of it.
func checkSignature(file string, r *minisign.Reader, trust Trust) (signer string, err error) {
	sigFile := file + SigSuffix
	b, err := os.ReadFile(sigFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if trust.Unsigned {
			return "", nil
		}
		return "", fmt.Errorf("%w: no %s; give the signer's public key (--trust KEY.pub) and its signature, or --unsigned to accept a bundle nobody vouches for", errUnsigned, baseName(sigFile))
	case err != nil:
		return "", err
	}
	var sig minisign.Signature
	if err := sig.UnmarshalText(b); err != nil {
		return "", fmt.Errorf("%s: %w", baseName(sigFile), err)
	}
	if len(trust.Keys) == 0 {
		return "", fmt.Errorf("%s: signed by key %s, but no key is trusted (--trust KEY.pub)", baseName(sigFile), keyID(sig.KeyID))
	}
	var ids []string
	for _, k := range trust.Keys {
		if r.Verify(k, b) {
			return keyID(k.ID()), nil
		}
		ids = append(ids, keyID(k.ID()))
	}
	return "", fmt.Errorf("%s: not a valid signature of this bundle by a trusted key (it names key %s; trusted: %s): %w",
		baseName(sigFile), keyID(sig.KeyID), strings.Join(ids, ", "), ErrMismatch)
}

func keyID(id uint64) string { return strings.ToUpper(strconv.FormatUint(id, 16)) }

func baseName(p string) string { return p[strings.LastIndex(p, "/")+1:] }
