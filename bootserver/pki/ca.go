// Package pki is the site's certificate authority, held by the boot server:
// it creates the CA and the masters' service account key once, in a state
// directory outside the site (operators keep sites in git; keys never go
// there), and issues each machine its certificates at boot.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/internal/fsutil"
)

// Files of a state directory.
const (
	CertFile  = "ca.pem"
	KeyFile   = "ca-key.pem"
	SAKeyFile = "sa-key.pem"
)

// caValidity is how long a new site CA is good for.
const caValidity = 10 * 365 * 24 * time.Hour

// CA is a site CA and the masters' shared service account key.
type CA struct {
	dir     string
	cert    *x509.Certificate
	certPEM string
	key     *ecdsa.PrivateKey
	saPEM   string
	now     func() time.Time
}

// Cert is the CA's certificate.
func (ca *CA) Cert() *x509.Certificate { return ca.cert }

// CertPEM is the CA's certificate, PEM.
func (ca *CA) CertPEM() string { return ca.certPEM }

// Dir is the state directory the CA lives in.
func (ca *CA) Dir() string { return ca.dir }

// DefaultStateDir is where plinth keeps a site's CA when --state is not
// given: $XDG_STATE_HOME/plinth/<site>, else ~/.local/state/plinth/<site>.
func DefaultStateDir(site string) (string, error) {
	if site == "" || strings.ContainsAny(site, `/\`) || site == "." || site == ".." {
		return "", fmt.Errorf("state: site name %q cannot name a directory", site)
	}
	base := os.Getenv("XDG_STATE_HOME")
	if !filepath.IsAbs(base) { // the spec says relative values are ignored
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("state: no $XDG_STATE_HOME and no home directory: %w", err)
		}
		base = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(base, "plinth", site), nil
}

// CheckOutside fails when stateDir (or any directory keys go to) is siteDir
// or inside it: sites are kept in git, and keys must never be committed.
func CheckOutside(stateDir, siteDir string) error {
	st, err1 := filepath.Abs(stateDir)
	si, err2 := filepath.Abs(siteDir)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	// Resolve symlinks where the paths exist, so a link cannot hide it.
	if r, err := filepath.EvalSymlinks(si); err == nil {
		si = r
	}
	if r, err := filepath.EvalSymlinks(st); err == nil {
		st = r
	}
	rel, err := filepath.Rel(si, st)
	if err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return fmt.Errorf("%s is inside the site directory %s: keys stay out of the site, which is meant for git", stateDir, siteDir)
	}
	return nil
}

// LoadOrCreate loads the CA from dir, or creates it there when dir holds
// none of its files (first start). created says which happened. A state
// with some files missing, unreadable or corrupt is an error naming the
// file: it is never replaced, since every machine trusts the CA it holds.
func LoadOrCreate(dir, site string, log *slog.Logger) (ca *CA, created bool, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var missing, present []string
	for _, f := range []string{CertFile, KeyFile, SAKeyFile} {
		_, err := os.Lstat(filepath.Join(dir, f))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			missing = append(missing, f)
		case err != nil:
			return nil, false, fmt.Errorf("state: %w", err)
		default:
			present = append(present, f)
		}
	}
	if len(present) == 0 {
		ca, err := create(dir, site)
		if err != nil {
			return nil, false, err
		}
		log.Info("created site CA", "state", dir, "subject", ca.cert.Subject.String(), "not_after", ca.cert.NotAfter.Format(time.DateOnly))
		return ca, true, nil
	}
	if len(missing) > 0 {
		return nil, false, fmt.Errorf("state %s is incomplete: %s present but %s missing; restore them from your backup (a new CA would not be trusted by running machines)",
			dir, strings.Join(present, ", "), strings.Join(missing, ", "))
	}
	ca, err = Load(dir)
	if err != nil {
		return nil, false, err
	}
	if st, err := os.Stat(filepath.Join(dir, KeyFile)); err == nil && st.Mode().Perm()&0o077 != 0 {
		log.Warn("CA key is readable by others: chmod 600 it", "file", filepath.Join(dir, KeyFile), "mode", st.Mode().Perm().String())
	}
	if left := time.Until(ca.cert.NotAfter); left < 90*24*time.Hour {
		log.Warn("site CA expires soon", "file", filepath.Join(dir, CertFile), "not_after", ca.cert.NotAfter)
	}
	return ca, false, nil
}

// Load reads an existing CA from dir; anything missing or wrong is an
// error naming the file.
func Load(dir string) (*CA, error) {
	ca := &CA{dir: dir, now: time.Now}
	certPath, keyPath, saPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile), filepath.Join(dir, SAKeyFile)
	b, err := readPEM(certPath, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	if ca.cert, err = x509.ParseCertificate(b.Bytes); err != nil {
		return nil, fmt.Errorf("state: %s: %w", certPath, err)
	}
	if !ca.cert.IsCA {
		return nil, fmt.Errorf("state: %s: not a CA certificate", certPath)
	}
	if now := time.Now(); now.After(ca.cert.NotAfter) {
		return nil, fmt.Errorf("state: %s: the site CA expired on %s", certPath, ca.cert.NotAfter.Format(time.RFC3339))
	}
	ca.certPEM = string(pem.EncodeToMemory(b))
	if ca.key, err = readKey(keyPath); err != nil {
		return nil, err
	}
	if !ca.key.PublicKey.Equal(ca.cert.PublicKey) {
		return nil, fmt.Errorf("state: %s does not match %s: they are from different CAs", keyPath, certPath)
	}
	sa, err := readKey(saPath)
	if err != nil {
		return nil, err
	}
	ca.saPEM, err = encodeKey(sa)
	if err != nil {
		return nil, fmt.Errorf("state: %s: %w", saPath, err)
	}
	return ca, nil
}

func readPEM(path, typ string) (*pem.Block, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("state: %s: no PEM block: the file is corrupt", path)
	}
	if b.Type != typ && !(typ == "PRIVATE KEY" && strings.HasSuffix(b.Type, "PRIVATE KEY")) {
		return nil, fmt.Errorf("state: %s: PEM block is %q, want %q", path, b.Type, typ)
	}
	return b, nil
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := readPEM(path, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	var k crypto.PrivateKey
	switch b.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("state: %s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("state: %s: a %T, want an ECDSA key", path, k)
	}
	return ek, nil
}

// encodeKey is the PEM form of every key plinth writes: SEC 1
// ("EC PRIVATE KEY"), which Go, OpenSSL and Kubernetes all read.
func encodeKey(k *ecdsa.PrivateKey) (string, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})), nil
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func create(dir, site string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	sa, err := newKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "plinth site CA " + site, Organization: []string{"plinth"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	saPEM, err := encodeKey(sa)
	if err != nil {
		return nil, err
	}
	certPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	// Keys first, the certificate last; each file is atomic, and a first
	// start cut short leaves a state LoadOrCreate reports as incomplete.
	for _, f := range []struct {
		name, data string
		mode       os.FileMode
	}{{SAKeyFile, saPEM, 0o600}, {KeyFile, keyPEM, 0o600}, {CertFile, certPEM, 0o644}} {
		if err := fsutil.WriteFileAtomic(filepath.Join(dir, f.name), []byte(f.data), f.mode); err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
	}
	return &CA{dir: dir, cert: cert, certPEM: certPEM, key: key, saPEM: saPEM, now: time.Now}, nil
}
