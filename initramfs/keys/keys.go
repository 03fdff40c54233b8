// Package keys makes a machine's private keys at boot and joins them to
// the certificates the boot server sends back: the keys never leave the
// machine's memory except into its own files (issue: trust on the wire).
//
// Stage 1 makes one ECDSA P-256 key for the machine's own certificate, one
// per Kubernetes identity a role may carry (roles.IdentityNames: it does
// not know its role before the profile comes), and one HPKE key
// (api.SealKEM) the server seals the masters' shared service-account key
// to. It sends api.CertRequests; Fill checks the answer against its keys.
package keys

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hpke"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"sort"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/profiles/node"
)

// Set is the keys one boot made.
type Set struct {
	node       *ecdsa.PrivateKey
	identities map[string]*ecdsa.PrivateKey
	seal       hpke.PrivateKey
}

// New makes the machine's key, one key per identity, and the sealing key.
func New(identities []string) (*Set, error) {
	s := &Set{identities: map[string]*ecdsa.PrivateKey{}}
	var err error
	if s.node, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	for _, id := range identities {
		if s.identities[id], err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, err
		}
	}
	kem, err := hpke.NewKEM(api.SealKEM)
	if err != nil {
		return nil, err
	}
	if s.seal, err = kem.GenerateKey(); err != nil {
		return nil, err
	}
	return s, nil
}

// Requests are the certificate requests for the keys (each signed by its
// key, which proves possession) and the sealing key's public half. The
// subject is a hint only: the server sets every name itself.
func (s *Set) Requests(machine string) (*api.CertRequests, error) {
	r := &api.CertRequests{Identities: map[string]string{}}
	var err error
	if r.Node, err = request(s.node, machine); err != nil {
		return nil, err
	}
	for id, k := range s.identities {
		if r.Identities[id], err = request(k, machine+"/"+id); err != nil {
			return nil, err
		}
	}
	r.Seal = base64.StdEncoding.EncodeToString(s.seal.PublicKey().Bytes())
	return r, nil
}

func request(k *ecdsa.PrivateKey, cn string) (string, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, k)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// Fill completes t, the boot server's answer for machine: each
// certificate must be for the key made for it (a server that answers with
// another key is refused), each gets its private key, and the sealed
// service-account key is opened. A t that already carries a private key
// is refused: a boot server that sends one is not this release's.
func (s *Set) Fill(t *node.TLS, machine string) error {
	if t == nil {
		return nil
	}
	if t.Key != "" || t.ServiceAccountKey != "" {
		return errors.New("the boot server sent a private key; it must only certify the machine's own")
	}
	var err error
	if t.Cert != "" { // a CA alone is what a machine without a role may get
		if t.Key, err = match(t.Cert, s.node); err != nil {
			return fmt.Errorf("the machine's certificate: %w", err)
		}
	}
	names := make([]string, 0, len(t.Identities))
	for id := range t.Identities {
		names = append(names, id)
	}
	sort.Strings(names)
	for _, id := range names {
		kp := t.Identities[id]
		if kp.Key != "" {
			return fmt.Errorf("identity %q: the boot server sent a private key", id)
		}
		k, ok := s.identities[id]
		if !ok {
			return fmt.Errorf("identity %q: no key was made for it", id)
		}
		if kp.Key, err = match(kp.Cert, k); err != nil {
			return fmt.Errorf("identity %q: %w", id, err)
		}
		t.Identities[id] = kp
	}
	if t.SealedServiceAccountKey != "" {
		ct, err := base64.StdEncoding.DecodeString(t.SealedServiceAccountKey)
		if err != nil {
			return fmt.Errorf("sealed service-account key: %w", err)
		}
		kdf, err := hpke.NewKDF(api.SealKDF)
		if err != nil {
			return err
		}
		aead, err := hpke.NewAEAD(api.SealAEAD)
		if err != nil {
			return err
		}
		sa, err := hpke.Open(s.seal, kdf, aead, api.SealInfo(machine), ct)
		if err != nil {
			return fmt.Errorf("sealed service-account key: %w", err)
		}
		t.ServiceAccountKey = string(sa)
	}
	return nil
}

// match returns k as PEM when certPEM certifies k's public key.
func match(certPEM string, k *ecdsa.PrivateKey) (string, error) {
	b, _ := pem.Decode([]byte(certPEM))
	if b == nil || b.Type != "CERTIFICATE" {
		return "", errors.New("not a PEM certificate")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return "", err
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&k.PublicKey) {
		return "", errors.New("certifies another key than the one made for it")
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})), nil
}
