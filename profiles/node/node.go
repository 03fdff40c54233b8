// Package node defines the per-machine document the boot server renders from
// a site profile and /init applies at first boot. It crosses the wire as JSON
// and is imported by the code that runs on the machine, so it depends only on
// the standard library.
package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Config is everything that differs between two machines running one image.
type Config struct {
	// Version is the schema of the document (SchemaVersion when the
	// boot server rendered it). A machine refuses any other, so an image
	// and a boot server of different schemas fail at the profile stage
	// with both versions named, not later with a half-applied profile.
	Version  int    `json:"version"`
	Machine  string `json:"machine"`  // the machine's name in the site
	Hostname string `json:"hostname"` // short host name
	Domain   string `json:"domain,omitempty"`
	Role     string `json:"role,omitempty"`  // etcd | master | minion | "" (none)
	Image    string `json:"image,omitempty"` // image name
	// Rootfs is the digest the machine must boot, "sha256:<hex>".
	Rootfs  string   `json:"rootfs,omitempty"`
	Network *Network `json:"network,omitempty"`
	Cluster *Cluster `json:"cluster,omitempty"`
	// TLS material issued to this machine only (issue: cluster).
	TLS *TLS `json:"tls,omitempty"`
	// State is the machine's state disk; nil keeps state in RAM.
	State *State `json:"state,omitempty"`
}

// Network is a static address for the boot interface (none: DHCP), and
// the bonds and VLANs the machine builds from its NICs.
type Network struct {
	Address string   `json:"address,omitempty"` // CIDR, e.g. 10.0.0.5/24
	Gateway string   `json:"gateway,omitempty"`
	DNS     []string `json:"dns,omitempty"`
	Bonds   []Bond   `json:"bonds,omitempty"`
	VLANs   []VLAN   `json:"vlans,omitempty"`
}

// Bond modes plinth renders.
const (
	Bond8023ad       = "802.3ad"
	BondActiveBackup = "active-backup"
)

// AddressDHCP is the Address of a bond or VLAN that takes DHCP.
const AddressDHCP = "dhcp"

// Bond aggregates NICs under one interface.
type Bond struct {
	Name    string   `json:"name"`              // e.g. bond0
	Mode    string   `json:"mode"`              // Bond8023ad | BondActiveBackup
	Members []string `json:"members"`           // NIC names (eno1) or MACs
	Address string   `json:"address,omitempty"` // CIDR, AddressDHCP, or none
	Gateway string   `json:"gateway,omitempty"`
}

// VLAN is a tagged interface on a bond or a NIC.
type VLAN struct {
	Name    string `json:"name"` // e.g. bond0.107
	Link    string `json:"link"` // a bond's name, a NIC's name or MAC
	ID      int    `json:"id"`   // 1..4094
	Address string `json:"address,omitempty"`
	Gateway string `json:"gateway,omitempty"`
}

// ValidIfname is what Linux takes as an interface name: 1 to 15 bytes,
// no '/', ':' or white space, not "." or "..".
func ValidIfname(s string) bool {
	if s == "" || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r == '/' || r == ':' || r > '~' {
			return false
		}
	}
	return true
}

// checkLinks checks what stage 1 renders into systemd-networkd files: names,
// modes, members, IDs and addresses, so that no value can break a file.
func (n *Network) checkLinks() error {
	addr := func(what, a string) error {
		if a == "" || a == AddressDHCP {
			return nil
		}
		if _, err := netip.ParsePrefix(a); err != nil {
			return fmt.Errorf("%s address %q: want a CIDR or %q", what, a, AddressDHCP)
		}
		return nil
	}
	gw := func(what, g string) error {
		if _, err := netip.ParseAddr(g); g != "" && err != nil {
			return fmt.Errorf("%s gateway %q is not an IP address", what, g)
		}
		return nil
	}
	for _, b := range n.Bonds {
		if !ValidIfname(b.Name) {
			return fmt.Errorf("bond name %q is not an interface name", b.Name)
		}
		if b.Mode != Bond8023ad && b.Mode != BondActiveBackup {
			return fmt.Errorf("bond %s: mode %q: want %s or %s", b.Name, b.Mode, Bond8023ad, BondActiveBackup)
		}
		if len(b.Members) == 0 {
			return fmt.Errorf("bond %s: no members", b.Name)
		}
		for _, m := range b.Members {
			if _, err := net.ParseMAC(m); err != nil && !ValidIfname(m) {
				return fmt.Errorf("bond %s: member %q is neither a MAC nor an interface name", b.Name, m)
			}
		}
		if err := addr("bond "+b.Name, b.Address); err != nil {
			return err
		}
		if err := gw("bond "+b.Name, b.Gateway); err != nil {
			return err
		}
	}
	for _, v := range n.VLANs {
		if !ValidIfname(v.Name) {
			return fmt.Errorf("vlan name %q is not an interface name", v.Name)
		}
		if _, err := net.ParseMAC(v.Link); err != nil && !ValidIfname(v.Link) {
			return fmt.Errorf("vlan %s: link %q is neither a MAC nor an interface name", v.Name, v.Link)
		}
		if v.ID < 1 || v.ID > 4094 {
			return fmt.Errorf("vlan %s: id %d: want 1 to 4094", v.Name, v.ID)
		}
		if err := addr("vlan "+v.Name, v.Address); err != nil {
			return err
		}
		if err := gw("vlan "+v.Name, v.Gateway); err != nil {
			return err
		}
	}
	return nil
}

// Cluster carries the site-wide settings a role needs.
type Cluster struct {
	Name        string   `json:"name"`
	Domain      string   `json:"domain,omitempty"`
	APIName     string   `json:"api_name,omitempty"`
	EtcdMembers []Member `json:"etcd_members,omitempty"`
	Flannel     string   `json:"flannel,omitempty"` // pod network CIDR
	Backend     string   `json:"backend,omitempty"` // vxlan
	Proxy       *Proxy   `json:"proxy,omitempty"`
	// BootServer is the URL of the boot server, for events and readiness.
	BootServer string `json:"boot_server,omitempty"`
	// ReportURL is the boot server's HTTPS URL: the machine's agent sends
	// its reports there with the machine's own certificate (the only
	// reports that can put an API server in the API name).
	ReportURL string `json:"report_url,omitempty"`
	// Kubernetes is the version of the Kubernetes binaries in the images.
	Kubernetes string `json:"kubernetes,omitempty"`
	// ServiceCIDR is the Kubernetes service network; its first address is
	// the API's service IP (a SAN of every master's certificate).
	ServiceCIDR string `json:"service_cidr,omitempty"`
	// APIPort is the port kube-apiserver serves on every master (6443).
	APIPort int `json:"api_port,omitempty"`
	// EtcdClusterID is the ID of the site's etcd cluster as the boot
	// server last saw it (hex); "" when it has never seen one. A member
	// that boots with no data never founds a cluster while it is set.
	EtcdClusterID string `json:"etcd_cluster_id,omitempty"`
	// EtcdRestore, when set, has members that boot with no data and find
	// no running cluster restore this snapshot instead of founding an
	// empty cluster (plinth etcd restore).
	EtcdRestore *EtcdRestore `json:"etcd_restore,omitempty"`
}

// EtcdRestore is a snapshot the site's etcd cluster is restored from.
type EtcdRestore struct {
	// URL is where the member fetches the snapshot (from the boot server).
	URL string `json:"url"`
	// SHA256 is the snapshot file's digest, hex.
	SHA256 string `json:"sha256"`
}

// Member is one etcd member: name and peer address.
type Member struct {
	Name    string `json:"name"`
	Address string `json:"address"` // IP or host name
	// Durable is set when the member has a state disk: its data may
	// outlive a reboot, so a member with none waits for it rather than
	// found a cluster beside it.
	Durable bool `json:"durable,omitempty"`
}

// Proxy is the site's HTTP proxy for image pulls.
type Proxy struct {
	HTTP    string `json:"http,omitempty"`
	HTTPS   string `json:"https,omitempty"`
	NoProxy string `json:"no_proxy,omitempty"`
}

// TLS is the machine's certificate material, issued by the boot server's
// site CA for this machine only. All of it is PEM. The private keys are
// the machine's own: stage 1 makes them in memory and sends only
// certificate requests (api.CertRequests); the boot server's response
// carries certificates, and stage 1 fills in Key, each identity's Key and
// ServiceAccountKey before anything on the machine reads them. A profile
// from the boot server with a private key in it is refused.
type TLS struct {
	// CA is the site CA's certificate: every service trusts it, for
	// servers and for clients.
	CA string `json:"ca"`
	// Cert and Key are the machine's own certificate, good for both
	// server and client auth: CN is the host name; SANs are the host name,
	// its FQDN, the machine's address(es), localhost and 127.0.0.1, and on
	// masters also the site's API name, kubernetes,
	// kubernetes.default(.svc(.cluster.local)) and the service CIDR's first
	// address. etcd uses it for peers and clients, flanneld and
	// kube-apiserver as etcd clients, kube-apiserver and kubelet to serve.
	Cert string `json:"cert"`
	Key  string `json:"key,omitempty"`
	// Identities are client certificates for Kubernetes and etcd users,
	// by purpose: on masters IdentityControllerManager, IdentityScheduler,
	// IdentityKubeletClient (kube-apiserver to kubelets), IdentityFrontProxy
	// (kube-apiserver to aggregated API servers),
	// IdentityEtcdAPIServer and IdentityEtcdFlannel; IdentityKubelet,
	// IdentityKubeProxy and IdentityEtcdFlannel on minions;
	// IdentityEtcdMember on etcd members. No machine gets IdentityAdmin:
	// only `plinth credentials` issues it.
	Identities map[string]KeyPair `json:"identities,omitempty"`
	// SealedServiceAccountKey (masters only) is the key every master signs
	// and checks service account tokens with — the same for all, so a
	// token one master issues holds at the others — sealed by the boot
	// server to the machine's HPKE key (api.CertRequests.Seal, api.Seal*):
	// base64 of the encapsulated key and ciphertext. ServiceAccountKey is
	// what stage 1 opens it to.
	SealedServiceAccountKey string `json:"sealed_service_account_key,omitempty"`
	ServiceAccountKey       string `json:"service_account_key,omitempty"`
}

// KeyPair is a certificate and its private key, PEM (the key filled in on
// the machine, see TLS).
type KeyPair struct {
	Cert string `json:"cert"`
	Key  string `json:"key,omitempty"`
}

// Kubernetes identities a machine's TLS carries (see TLS.Identities), with
// the subject each certificate has.
const (
	// IdentityAdmin: CN "plinth:admin", O "system:masters" — what
	// `plinth credentials` issues; never a machine's.
	IdentityAdmin = "admin"
	// IdentityKubeletClient: CN "plinth:apiserver-kubelet-client", what
	// kube-apiserver presents to kubelets (logs, exec, port-forward); the
	// boot server binds it to Kubernetes' system:kubelet-api-admin.
	IdentityKubeletClient = "kubelet-client"
	// IdentityFrontProxy: CN "plinth:front-proxy", what kube-apiserver
	// presents to an aggregated API server it proxies a request to (with
	// the caller's user and groups in X-Remote-* headers). API servers
	// trust those headers only from a certificate of this name.
	IdentityFrontProxy = "front-proxy"
	// IdentityKubelet: CN "system:node:<hostname>", O "system:nodes".
	IdentityKubelet = "kubelet"
	// IdentityKubeProxy: CN "system:kube-proxy" (bound to
	// system:node-proxier by Kubernetes' default RBAC).
	IdentityKubeProxy = "kube-proxy"
	// IdentityControllerManager: CN "system:kube-controller-manager" and
	// IdentityScheduler: CN "system:kube-scheduler", each bound by
	// Kubernetes' default RBAC to what that component needs, nothing more.
	IdentityControllerManager = "controller-manager"
	IdentityScheduler         = "scheduler"
	// etcd knows a client by its certificate's common name (its etcd
	// user); roles.EtcdUsers says what each may do.
	// IdentityEtcdMember: CN "plinth:etcd-member", etcd's root role —
	// membership changes and setting up authorisation.
	IdentityEtcdMember = "etcd-member"
	// IdentityEtcdAPIServer: CN "plinth:etcd-kube-apiserver", read-write
	// on Kubernetes' keys.
	IdentityEtcdAPIServer = "etcd-apiserver"
	// IdentityEtcdFlannel: CN "plinth:etcd-flannel", read-write on
	// flannel's keys only.
	IdentityEtcdFlannel = "etcd-flannel"
)

// SchemaVersion is the version of Config this tree writes and reads.
// Raise it with any change an older reader would misread (a field
// renamed, removed or given a new meaning); a new optional field does not
// need it, but an older machine refuses the document that carries one.
const SchemaVersion = 2

// Decode parses and validates a Config. It is strict: an unknown field, a
// second document or another schema version is an error, so a profile a
// machine cannot fully apply is refused rather than partly applied.
func Decode(b []byte) (*Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("machine config: %w", err)
	}
	if dec.More() {
		return nil, errors.New("machine config: more than one document")
	}
	if c.Version != SchemaVersion {
		return nil, fmt.Errorf("machine config: schema version %d, this image reads %d (image and boot server are of different plinth releases)", c.Version, SchemaVersion)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks the fields /init relies on.
func (c *Config) Validate() error {
	if !validHostname(c.Hostname) {
		return fmt.Errorf("machine config: hostname %q is not a valid host name", c.Hostname)
	}
	if c.State != nil {
		if _, err := ParseDiskSelector(c.State.Disk); err != nil {
			return fmt.Errorf("machine config: state.disk: %w", err)
		}
		if !validUUID(c.State.PartUUID) {
			return fmt.Errorf("machine config: state.part_uuid %q is not a UUID", c.State.PartUUID)
		}
	}
	if c.Network != nil && c.Network.Address != "" {
		if _, err := netip.ParsePrefix(c.Network.Address); err != nil {
			return fmt.Errorf("machine config: network.address: %w", err)
		}
	}
	if c.Network != nil {
		if err := c.Network.checkLinks(); err != nil {
			return fmt.Errorf("machine config: network: %w", err)
		}
	}
	return nil
}

func validHostname(h string) bool {
	if h == "" || len(h) > 63 {
		return false
	}
	for i, r := range h {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
		case r == '-' && i > 0 && i < len(h)-1:
		default:
			return false
		}
	}
	return !strings.HasPrefix(h, "-")
}

// validUUID accepts a lower-case 8-4-4-4-12 UUID.
func validUUID(u string) bool {
	if len(u) != 36 {
		return false
	}
	for i, r := range u {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if r != '-' {
				return false
			}
		case r >= '0' && r <= '9', r >= 'a' && r <= 'f':
		default:
			return false
		}
	}
	return true
}
