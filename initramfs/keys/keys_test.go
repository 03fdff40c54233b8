package keys

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/profiles/node"
)

// selfSigned is a certificate for pub (what a server that certified some
// other key would send).
func selfSigned(t *testing.T, pub *ecdsa.PublicKey) string {
	t.Helper()
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// The machine takes from the server only certificates for the keys it
// made: one for another key, an identity it made no key for, or an answer
// carrying a private key is refused, naming what is wrong.
func TestFillTakesOnlyCertificatesForItsOwnKeys(t *testing.T) {
	s, err := New([]string{"kubelet"})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := func() *node.TLS {
		return &node.TLS{Cert: selfSigned(t, &s.node.PublicKey),
			Identities: map[string]node.KeyPair{"kubelet": {Cert: selfSigned(t, &s.identities["kubelet"].PublicKey)}}}
	}
	tl := good()
	if err := s.Fill(tl, "m"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tl.Key, "PRIVATE KEY") || !strings.Contains(tl.Identities["kubelet"].Key, "PRIVATE KEY") {
		t.Error("keys not filled in")
	}
	for name, tc := range map[string]struct {
		mangle func(*node.TLS)
		want   string
	}{
		"another key":      {func(t2 *node.TLS) { t2.Cert = selfSigned(t, &other.PublicKey) }, "certifies another key"},
		"swapped identity": {func(t2 *node.TLS) { t2.Identities["kubelet"] = node.KeyPair{Cert: t2.Cert} }, `identity "kubelet"`},
		"unknown identity": {func(t2 *node.TLS) { t2.Identities["admin"] = node.KeyPair{Cert: t2.Cert} }, "no key was made for it"},
		"sent a key":       {func(t2 *node.TLS) { t2.Key = "-----BEGIN EC PRIVATE KEY-----" }, "sent a private key"},
		"sent an id key":   {func(t2 *node.TLS) { t2.Identities["kubelet"] = node.KeyPair{Cert: t2.Cert, Key: "k"} }, "sent a private key"},
		"sent the SA key":  {func(t2 *node.TLS) { t2.ServiceAccountKey = "k" }, "sent a private key"},
		"bad sealed key":   {func(t2 *node.TLS) { t2.SealedServiceAccountKey = "AAAA" }, "sealed service-account key"},
	} {
		tl := good()
		tc.mangle(tl)
		if err := s.Fill(tl, "m"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
}
