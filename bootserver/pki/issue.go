package pki

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
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
	if r.CommonName == "" {
		return node.KeyPair{}, errors.New("issue: no common name")
	}
	if !r.Server && !r.Client {
		return node.KeyPair{}, fmt.Errorf("issue %s: neither server nor client auth", r.CommonName)
	}
	key, err := newKey()
	if err != nil {
		return node.KeyPair{}, err
	}
	sn, err := serial()
	if err != nil {
		return node.KeyPair{}, err
	}
	now := ca.now()
	notAfter := now.Add(Validity)
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
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return node.KeyPair{}, fmt.Errorf("issue %s: %w", r.CommonName, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return node.KeyPair{}, err
	}
	return node.KeyPair{Cert: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), Key: keyPEM}, nil
}

// Admin issues a client certificate for the cluster's administrator
// (roles.Admin: the system:masters group is cluster-admin in Kubernetes'
// default RBAC).
func (ca *CA) Admin() (node.KeyPair, error) {
	return ca.Issue(identityRequest(roles.Admin, ""))
}

// identityRequest is the request for a role's client identity on host.
func identityRequest(id roles.Identity, host string) Request {
	return Request{CommonName: id.Subject(host), Organization: id.Organization, Client: true}
}

// ForMachine issues the TLS material of the machine c describes, as
// node.TLS documents it: its own server+client certificate, the
// Kubernetes identities of its role, and on masters the service account
// key. addr is the machine's address (its static one, else the one it
// asked from); invalid when unknown. Machines without a role get nil.
func (ca *CA) ForMachine(c *node.Config, addr netip.Addr) (*node.TLS, error) {
	d, err := roles.Lookup(c.Role)
	if err != nil {
		return nil, fmt.Errorf("tls %s: %w", c.Machine, err)
	}
	if !d.TLS.Node {
		return nil, nil
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
	t := &node.TLS{CA: ca.certPEM}
	kp, err := ca.Issue(Request{CommonName: host, DNSNames: dedup(dns), IPs: dedupAddrs(ips), URIs: []*url.URL{MachineURI(c.Machine)}, Server: true, Client: true})
	if err != nil {
		return nil, err
	}
	t.Cert, t.Key = kp.Cert, kp.Key
	add := func(name string, r Request) error {
		kp, err := ca.Issue(r)
		if err != nil {
			return err
		}
		if t.Identities == nil {
			t.Identities = map[string]node.KeyPair{}
		}
		t.Identities[name] = kp
		return nil
	}
	for _, id := range d.TLS.Identities {
		if err := add(id.Name, identityRequest(id, host)); err != nil {
			return nil, err
		}
	}
	if d.TLS.ServiceAccountKey {
		t.ServiceAccountKey = ca.saPEM
	}
	return t, nil
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
