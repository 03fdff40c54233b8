package pki

import (
	"crypto"
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
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// Validity is how long an issued certificate is good for. A machine gets
// new ones at every boot.
const Validity = 365 * 24 * time.Hour

// backdate covers clocks that run behind the boot server's: a machine
// fresh from firmware may not have NTP yet.
const backdate = 10 * time.Minute

// Request is one certificate to issue.
type Request struct {
	CommonName   string
	Organization []string
	DNSNames     []string
	IPs          []netip.Addr
	URIs         []*url.URL
	Server       bool // server auth
	Client       bool // client auth
	// Validity, when set and shorter, replaces the default Validity.
	Validity time.Duration
}

// Issue makes a new key and a certificate for it signed by the CA. The
// boot server's name (api.BootServerSAN) is refused: only BootServer
// issues it.
func (ca *CA) Issue(r Request) (node.KeyPair, error) {
	for _, n := range r.DNSNames {
		if strings.EqualFold(strings.TrimSuffix(n, "."), api.BootServerSAN) {
			return node.KeyPair{}, fmt.Errorf("issue %s: %s names the boot server; no other certificate may carry it", r.CommonName, n)
		}
	}
	return ca.issue(r)
}

func (ca *CA) issue(r Request) (node.KeyPair, error) {
	key, err := newKey()
	if err != nil {
		return node.KeyPair{}, err
	}
	cert, err := ca.sign(r, &key.PublicKey)
	if err != nil {
		return node.KeyPair{}, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return node.KeyPair{}, err
	}
	return node.KeyPair{Cert: cert, Key: keyPEM}, nil
}

// Certify signs a certificate for the key a machine made, sent as a
// PKCS#10 request (PEM) whose signature proves the sender holds the
// private key. Only the public key is taken from the request: subject,
// names, addresses and usages are r's, as Issue would give them. Keys
// other than ECDSA P-256 are refused (stage 1 makes those; every
// component of the stack takes them).
func (ca *CA) Certify(r Request, csrPEM string) (string, error) {
	for _, n := range r.DNSNames {
		if strings.EqualFold(strings.TrimSuffix(n, "."), api.BootServerSAN) {
			return "", fmt.Errorf("certify %s: %s names the boot server; no other certificate may carry it", r.CommonName, n)
		}
	}
	csr, err := ParseRequest(csrPEM)
	if err != nil {
		return "", fmt.Errorf("certify %s: %w", r.CommonName, err)
	}
	return ca.sign(r, csr.PublicKey)
}

// ParseRequest reads a PEM certificate request and checks that it is
// signed by its own key, an ECDSA P-256 one.
func ParseRequest(csrPEM string) (*x509.CertificateRequest, error) {
	b, rest := pem.Decode([]byte(csrPEM))
	if b == nil || b.Type != "CERTIFICATE REQUEST" || len(strings.TrimSpace(string(rest))) > 0 {
		return nil, errors.New("not one PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request not signed by its key: %w", err)
	}
	if k, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("certificate request: a %T key; only ECDSA P-256 is accepted", csr.PublicKey)
	}
	return csr, nil
}

// sign certifies pub for r.
func (ca *CA) sign(r Request, pub crypto.PublicKey) (string, error) {
	if r.CommonName == "" {
		return "", errors.New("issue: no common name")
	}
	if r.CommonName == roles.EtcdRootUser && r.Client {
		// etcd would take the certificate as its root user.
		return "", fmt.Errorf("issue %s: a client certificate named %q is etcd's root user; none is issued", r.CommonName, roles.EtcdRootUser)
	}
	if !r.Server && !r.Client {
		return "", fmt.Errorf("issue %s: neither server nor client auth", r.CommonName)
	}
	sn, err := serial()
	if err != nil {
		return "", err
	}
	now := ca.now()
	notAfter := now.Add(Validity)
	if r.Validity > 0 && r.Validity < Validity {
		notAfter = now.Add(r.Validity)
	}
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: r.CommonName, Organization: r.Organization},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		DNSNames:     r.DNSNames,
		URIs:         r.URIs,
	}
	for _, a := range r.IPs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(a.Unmap().AsSlice()))
	}
	if r.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if r.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return "", fmt.Errorf("issue %s: %w", r.CommonName, err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), nil
}

// Admin issues a client certificate for the cluster's administrator
// (roles.Admin: the system:masters group is cluster-admin in Kubernetes'
// default RBAC).
func (ca *CA) Admin() (node.KeyPair, error) {
	return ca.Issue(identityRequest(roles.Admin, ""))
}

// AdminFor is Admin valid for d only: the boot server's own, made for one
// call and never written anywhere.
func (ca *CA) AdminFor(d time.Duration) (node.KeyPair, error) {
	r := identityRequest(roles.Admin, "")
	r.Validity = d
	return ca.Issue(r)
}

// identityRequest is the request for a role's client identity on host.
func identityRequest(id roles.Identity, host string) Request {
	return Request{CommonName: id.Subject(host), Organization: id.Organization, Client: true}
}

// ForMachine certifies the keys a machine made (req) as the TLS material
// node.TLS documents: its own server+client certificate, the Kubernetes
// identities of its role, and on masters the service account key sealed
// to the machine's HPKE key. No private key of the machine's is ever here.
// addr is the machine's address (its static one, else the one it asked
// from); invalid when unknown. Machines without a role get nil.
func (ca *CA) ForMachine(c *node.Config, addr netip.Addr, req *api.CertRequests) (*node.TLS, error) {
	d, err := roles.Lookup(c.Role)
	if err != nil {
		return nil, fmt.Errorf("tls %s: %w", c.Machine, err)
	}
	if !d.TLS.Node {
		return nil, nil
	}
	if req == nil {
		req = &api.CertRequests{}
	}
	host := c.Hostname
	dns := []string{host}
	if c.Domain != "" {
		dns = append(dns, host+"."+c.Domain)
	}
	dns = append(dns, "localhost")
	ips := []netip.Addr{}
	if addr.IsValid() {
		ips = append(ips, addr.Unmap())
	}
	ips = append(ips, netip.AddrFrom4([4]byte{127, 0, 0, 1}))
	if d.APIServer {
		cl := c.Cluster
		if cl == nil {
			return nil, fmt.Errorf("tls %s: an API server needs the cluster settings", c.Machine)
		}
		if cl.APIName != "" {
			dns = append(dns, cl.APIName)
		}
		dns = append(dns, "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
		if cl.ServiceCIDR != "" {
			p, err := netip.ParsePrefix(cl.ServiceCIDR)
			if err != nil {
				return nil, fmt.Errorf("tls %s: service CIDR: %w", c.Machine, err)
			}
			ips = append(ips, p.Masked().Addr().Next())
		}
	}
	if req.Node == "" {
		return nil, fmt.Errorf("tls %s: no certificate request for the machine's own key", c.Machine)
	}
	t := &node.TLS{CA: ca.certPEM}
	t.Cert, err = ca.Certify(Request{CommonName: host, DNSNames: dedup(dns), IPs: dedupAddrs(ips), URIs: []*url.URL{MachineURI(c.Machine)}, Server: true, Client: true}, req.Node)
	if err != nil {
		return nil, fmt.Errorf("tls %s: its own key: %w", c.Machine, err)
	}
	for _, id := range d.TLS.Identities {
		csr, ok := req.Identities[id.Name]
		if !ok {
			return nil, fmt.Errorf("tls %s: no certificate request for identity %q (role %s)", c.Machine, id.Name, c.Role)
		}
		cert, err := ca.Certify(identityRequest(id, host), csr)
		if err != nil {
			return nil, fmt.Errorf("tls %s: identity %q: %w", c.Machine, id.Name, err)
		}
		if t.Identities == nil {
			t.Identities = map[string]node.KeyPair{}
		}
		t.Identities[id.Name] = node.KeyPair{Cert: cert}
	}
	if d.TLS.ServiceAccountKey {
		if t.SealedServiceAccountKey, err = Seal(req.Seal, c.Machine, []byte(ca.saPEM)); err != nil {
			return nil, fmt.Errorf("tls %s: the service-account key: %w", c.Machine, err)
		}
	}
	return t, nil
}

// Seal encrypts secret to a machine's HPKE public key (base64, the
// api.SealKEM suite), bound to that machine by api.SealInfo; base64 of
// the encapsulated key and ciphertext.
func Seal(pubB64, machine string, secret []byte) (string, error) {
	kem, kdf, aead, err := sealSuite()
	if err != nil {
		return "", err
	}
	raw, err := base64.StdEncoding.DecodeString(pubB64)
	if err != nil || pubB64 == "" {
		return "", errors.New("no HPKE public key to seal it to (seal: base64 of an ML-KEM-768+X25519 key)")
	}
	pk, err := kem.NewPublicKey(raw)
	if err != nil {
		return "", fmt.Errorf("seal: %w", err)
	}
	ct, err := hpke.Seal(pk, kdf, aead, api.SealInfo(machine), secret)
	if err != nil {
		return "", fmt.Errorf("seal: %w", err)
	}
	return base64.StdEncoding.EncodeToString(ct), nil
}

func sealSuite() (hpke.KEM, hpke.KDF, hpke.AEAD, error) {
	kem, err := hpke.NewKEM(api.SealKEM)
	if err != nil {
		return nil, nil, nil, err
	}
	kdf, err := hpke.NewKDF(api.SealKDF)
	if err != nil {
		return nil, nil, nil, err
	}
	aead, err := hpke.NewAEAD(api.SealAEAD)
	return kem, kdf, aead, err
}

// MachineURI is the URI SAN that names a machine of the site in its own
// certificate: the boot server takes a report signed by that certificate
// as the machine's (its host name, the subject, may be shared by a rename).
func MachineURI(machine string) *url.URL {
	return &url.URL{Scheme: uriScheme, Opaque: "machine:" + machine}
}

const uriScheme = "plinth"

// MachineOf is the machine a certificate names with MachineURI, if any.
func MachineOf(cert *x509.Certificate) (string, bool) {
	for _, u := range cert.URIs {
		if u.Scheme == uriScheme {
			if m, ok := strings.CutPrefix(u.Opaque, "machine:"); ok && m != "" {
				return m, true
			}
		}
	}
	return "", false
}

// BootServer issues the boot server's own certificate for its HTTPS
// listener: server auth for api.BootServerSAN (what machines check) and the
// names and addresses it listens at, client auth for its health checks of
// the API servers.
func (ca *CA) BootServer(names []string, ips []netip.Addr) (node.KeyPair, error) {
	names = append([]string{api.BootServerSAN}, names...)
	return ca.issue(Request{CommonName: BootServerName, Organization: []string{BootServerName}, DNSNames: dedup(names), IPs: dedupAddrs(ips), Server: true, Client: true})
}

// BootServerName is the subject of the boot server's certificate.
const BootServerName = "plinth-boot-server"

func dedup(xs []string) []string {
	var out []string
	for _, x := range xs {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

func dedupAddrs(xs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, x := range xs {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}
