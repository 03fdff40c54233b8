// Package roles describes each node role once: the services it runs, the
// ports it listens on, how its health is probed, the TLS identities it is
// issued, the first-boot steps its units run, where it comes in the boot
// order and what a lab machine of it gets. The builder, the boot server,
// the machine's init and agent and the QEMU lab all read these
// descriptors; nothing else lists roles. What a role writes into the
// machine's root (its configurator) lives in initramfs/role.
//
// The package depends only on the standard library and profiles/node (itself
// standard-library only), so it is compiled into the initramfs.
package roles

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/plinth-dev/plinth/profiles/node"
)

// Role is one role's descriptor.
type Role struct {
	// Name is how sites and image specs name the role.
	Name string
	// Group is the role's place in the boot order.
	Group Group
	// Services are the systemd units the readiness agent checks.
	Services []string
	// Listen are the ports the role's machine may listen on beyond
	// loopback; the agent reports any other as a problem.
	Listen []Port
	// Probes ask the role's servers whether they serve, beyond systemd
	// saying their units run.
	Probes []Probe
	// TLS is what the boot server's CA issues a machine of the role.
	TLS TLS
	// Steps are the plinth-agent first-boot steps the role's units run
	// (initramfs/firstboot implements them).
	Steps []string
	// EtcdMember marks the members of the site's etcd cluster: every
	// profile lists the machines of such roles as the etcd members.
	EtcdMember bool
	// Kubernetes marks roles that take part in Kubernetes: their profiles
	// carry the service network and the API port.
	Kubernetes bool
	// State are the directories the role keeps on the machine's state
	// disk when it has one (in RAM otherwise): what must survive a reboot.
	State []string
	// APIServer marks roles that serve the Kubernetes API: the boot
	// server puts the ready ones in the API name's DNS pool, and their
	// certificates carry the API names.
	APIServer bool
	// Lab is what a QEMU lab machine of the role gets.
	Lab Lab
}

// Group is a place in the boot order: a rack comes up group by group, each
// once the one before is ready.
type Group int

// The boot groups, in order.
const (
	GroupStore   Group = iota // the cluster's store (etcd)
	GroupControl              // the control plane (masters)
	GroupWorkers              // workers and machines without a role
)

// Port is a port a role listens on.
type Port struct {
	Proto  string // "tcp" or "udp"
	Number int    // ignored when API is set
	// API is the Kubernetes API port of the profile (DefaultAPIPort
	// unless the cluster settings say otherwise).
	API bool
}

// DefaultAPIPort is the port kube-apiserver serves on unless a profile
// says otherwise.
const DefaultAPIPort = 6443

// APIPort is the API port of a profile.
func APIPort(cfg *node.Config) int {
	if cfg != nil && cfg.Cluster != nil && cfg.Cluster.APIPort != 0 {
		return cfg.Cluster.APIPort
	}
	return DefaultAPIPort
}

// String is the port as "tcp/N" with the profile's API port.
func (p Port) String(cfg *node.Config) string {
	n := p.Number
	if p.API {
		n = APIPort(cfg)
	}
	return p.Proto + "/" + strconv.Itoa(n)
}

// Probe is one health check of a role's server.
type Probe struct {
	Unit   string // the unit whose server it asks
	Scheme string // "https" (with the site CA and a client certificate) or "http"
	Port   int    // ignored when API is set
	API    bool   // the profile's API port
	Path   string
	Want   string // a healthy answer contains it
	// Client is the client certificate for https: ClientNode for the
	// machine's own, else the name of one of its TLS identities.
	Client string
}

// ClientNode is the machine's own certificate as a probe's client.
const ClientNode = "node"

// URL is the probe's URL on the machine itself.
func (p Probe) URL(cfg *node.Config) string {
	port := p.Port
	if p.API {
		port = APIPort(cfg)
	}
	return fmt.Sprintf("%s://127.0.0.1:%d%s", p.Scheme, port, p.Path)
}

// TLS says what the site CA issues a machine of a role.
type TLS struct {
	// Node is the machine's own server and client certificate (with its
	// host name and address). A role without it gets no TLS material.
	Node bool
	// Identities are extra client certificates, by name (node.Identity*).
	Identities []Identity
	// ServiceAccountKey is the key that signs service-account tokens.
	ServiceAccountKey bool
}

// Identity is a client certificate's subject. "{host}" in CommonName is
// the machine's host name.
type Identity struct {
	Name         string
	CommonName   string
	Organization []string
	// Etcd is what the identity may do in the site's etcd, which knows a
	// client by its certificate's common name; nil: nothing (etcd refuses
	// every other certificate the site CA issues).
	Etcd *EtcdAccess
}

// EtcdAccess is an etcd user's permissions: the etcd members set them up
// (and turn etcd's authorisation on) from EtcdUsers.
type EtcdAccess struct {
	// Root is etcd's root role: membership changes, authorisation,
	// snapshots, every key.
	Root bool
	// Prefixes are key prefixes the user may read and write.
	Prefixes []string
}

// Subject is the identity's common name for a host.
func (i Identity) Subject(host string) string {
	return strings.ReplaceAll(i.CommonName, "{host}", host)
}

// Admin is the cluster administrator's identity: what `plinth credentials`
// issues (and the boot server, for itself, for one call: KubeletClient's
// binding). No role carries it. In etcd it is a root user too: the
// operator's etcdctl.
var Admin = Identity{Name: node.IdentityAdmin, CommonName: "plinth:admin", Organization: []string{"system:masters"}, Etcd: &EtcdAccess{Root: true}}

// KubeletClient is the API server's identity towards kubelets. Kubelets
// ask the API server whether it may (webhook authorization); Kubernetes'
// default RBAC has the ClusterRole for it, system:kubelet-api-admin, but
// no binding: the boot server creates KubeletClientBinding.
var KubeletClient = Identity{Name: node.IdentityKubeletClient, CommonName: "plinth:apiserver-kubelet-client"}

// FrontProxy is the API server's identity towards the aggregated API
// servers it proxies to: it passes the caller's user and groups on in
// X-Remote-User, X-Remote-Group and X-Remote-Extra-* headers. The site CA
// issues every certificate, so API servers believe those headers from a
// certificate with this common name only (--requestheader-allowed-names,
// initramfs/role/master.go): any other certificate is its own user,
// whatever headers it sends.
var FrontProxy = Identity{Name: node.IdentityFrontProxy, CommonName: "plinth:front-proxy"}

// FlannelPrefix is the etcd prefix flanneld keeps its state under; its
// network config is FlannelPrefix + "/config".
const FlannelPrefix = "/coreos.com/network"

// The etcd client identities. Their common names carry a colon, which no
// machine's host name (a node certificate's common name) can.
var (
	// EtcdMember is what an etcd member joins, promotes and sets up
	// authorisation with.
	EtcdMember = Identity{Name: node.IdentityEtcdMember, CommonName: "plinth:etcd-member", Etcd: &EtcdAccess{Root: true}}
	// EtcdAPIServer is kube-apiserver's. It is root: the API server
	// compacts etcd's history every five minutes, and etcd lets only the
	// root role compact. With read-write on /registry/ and its compactor's
	// key alone (as before) every compaction was refused, etcd kept every
	// revision, and a cluster would have stopped taking writes once etcd
	// reached its space quota. Root adds little to what /registry/ gives:
	// every Kubernetes secret, and the cluster itself.
	EtcdAPIServer = Identity{Name: node.IdentityEtcdAPIServer, CommonName: "plinth:etcd-kube-apiserver",
		Etcd: &EtcdAccess{Root: true}}
	// EtcdFlannel is flanneld's (and the flannel-config step's): flannel's
	// prefix only.
	EtcdFlannel = Identity{Name: node.IdentityEtcdFlannel, CommonName: "plinth:etcd-flannel",
		Etcd: &EtcdAccess{Prefixes: []string{FlannelPrefix + "/"}}}
	// EtcdBootServer is the boot server's (and plinth etcd's): status and
	// snapshots, which etcd gives the root role only. No machine carries
	// it.
	EtcdBootServer = Identity{Name: "boot-server", CommonName: "plinth:boot-server", Etcd: &EtcdAccess{Root: true}}
)

// EtcdRootUser is the user etcd wants to exist, with the root role, before
// it turns authorisation on. It has no password, and the site CA issues no
// certificate with its name as common name (a machine cannot be called
// that: profiles refuses it).
const EtcdRootUser = "root"

// EtcdUsers are the identities etcd knows, sorted by common name: every
// role's that has etcd access, EtcdBootServer and Admin.
func EtcdUsers() []Identity {
	out := []Identity{EtcdBootServer, Admin}
	for _, name := range Names() {
		for _, id := range Get(name).TLS.Identities {
			if id.Etcd != nil && !slices.ContainsFunc(out, func(o Identity) bool { return o.CommonName == id.CommonName }) {
				out = append(out, id)
			}
		}
	}
	slices.SortFunc(out, func(a, b Identity) int { return strings.Compare(a.CommonName, b.CommonName) })
	return out
}

// KubeletClientBinding is the name of the ClusterRoleBinding that gives
// KubeletClient system:kubelet-api-admin.
const KubeletClientBinding = "plinth:apiserver-kubelet-client"

// Cluster DNS: CoreDNS, built from its Go module by the stack fixtures and
// baked into the minion image under this name (never pulled), deployed by
// the boot server through the API, answering at ClusterDNSIP of the
// service network for names under ClusterDomain.
const (
	CoreDNSImage  = "registry.k8s.io/coredns/coredns:v1.13.1"
	ClusterDomain = "cluster.local"
)

// ClusterDNSIP is the cluster DNS Service's address: the tenth of the
// service network (as kubeadm chooses; the first is the API's).
func ClusterDNSIP(serviceCIDR string) (netip.Addr, error) {
	p, err := netip.ParsePrefix(serviceCIDR)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("service network: %w", err)
	}
	a := p.Masked().Addr()
	for range 10 {
		a = a.Next()
	}
	if !p.Contains(a) {
		return netip.Addr{}, fmt.Errorf("service network %s is too small for the cluster DNS address", serviceCIDR)
	}
	return a, nil
}

// Lab is what a QEMU lab machine of a role gets unless told otherwise.
type Lab struct {
	MemoryMiB int // 0: DefaultLabMemory
	CPUs      int // 0: 1
}

// DefaultLabMemory is a lab machine's memory (MiB) when its role does not
// say.
const DefaultLabMemory = 1024

// Ports shared by the built-in roles.
const (
	EtcdClientPort = 2379
	EtcdPeerPort   = 2380
	KubeletPort    = 10250
	KubeletHealth  = 10248
	VXLANPort      = 8472
	DHCPClientPort = 68
)

func builtin() []Role {
	vxlan := Port{Proto: "udp", Number: VXLANPort}
	return []Role{
		{
			Name:       "etcd",
			Group:      GroupStore,
			Services:   []string{"etcd.service", "plinth-etcd-promote.service"},
			Listen:     []Port{{Proto: "tcp", Number: EtcdClientPort}, {Proto: "tcp", Number: EtcdPeerPort}},
			Probes:     []Probe{{Unit: "etcd.service", Scheme: "https", Port: EtcdClientPort, Path: "/health", Want: `"health":"true"`, Client: ClientNode}},
			TLS:        TLS{Node: true, Identities: []Identity{EtcdMember}},
			Steps:      []string{"etcd-join", "etcd-promote"},
			State:      []string{"/var/lib/etcd"},
			EtcdMember: true,
			Lab:        Lab{MemoryMiB: 768},
		},
		{
			Name:     "master",
			Group:    GroupControl,
			Services: []string{"flanneld.service", "kube-apiserver.service", "kube-controller-manager.service", "kube-scheduler.service"},
			Listen:   []Port{{Proto: "tcp", API: true}, vxlan},
			// /readyz is open to any authenticated client in Kubernetes'
			// default RBAC (system:public-info-viewer): the node's own
			// certificate will do.
			Probes: []Probe{{Unit: "kube-apiserver.service", Scheme: "https", API: true, Path: "/readyz", Want: "ok", Client: ClientNode}},
			TLS: TLS{Node: true, ServiceAccountKey: true, Identities: []Identity{KubeletClient, FrontProxy,
				{Name: node.IdentityControllerManager, CommonName: "system:kube-controller-manager"},
				{Name: node.IdentityScheduler, CommonName: "system:kube-scheduler"},
				EtcdAPIServer, EtcdFlannel,
			}},
			Steps:      []string{"flannel-config", "wait-api"},
			Kubernetes: true,
			APIServer:  true,
			// QEMU's TCG runs each vCPU on a host thread of its own: a
			// second one lets the API server bootstrap its roles inside
			// the 30 s its post-start hook allows (README, make demo).
			Lab: Lab{MemoryMiB: 2048, CPUs: 2},
		},
		{
			Name:     "minion",
			Group:    GroupWorkers,
			Services: []string{"containerd.service", "docker.service", "flanneld.service", "kube-proxy.service", "kubelet.service"},
			Listen:   []Port{{Proto: "tcp", Number: KubeletPort}, vxlan},
			Probes:   []Probe{{Unit: "kubelet.service", Scheme: "http", Port: KubeletHealth, Path: "/healthz", Want: "ok"}},
			TLS: TLS{Node: true, Identities: []Identity{
				{Name: node.IdentityKubelet, CommonName: "system:node:{host}", Organization: []string{"system:nodes"}},
				{Name: node.IdentityKubeProxy, CommonName: "system:kube-proxy"},
				EtcdFlannel,
			}},
			Steps:      []string{"flannel-config", "flannel-net", "import-images"},
			State:      []string{"/var/lib/containerd", "/var/lib/docker", "/var/lib/kubelet"},
			Kubernetes: true,
			Lab:        Lab{MemoryMiB: 1536},
		},
	}
}

var (
	mu       sync.RWMutex
	registry = map[string]Role{}
)

func init() {
	for _, r := range builtin() {
		if err := r.check(); err != nil {
			panic(err)
		}
		registry[r.Name] = r
	}
}

// None is the descriptor of a machine without a role: it runs its image
// and nothing else, and boots with the workers.
var None = Role{Group: GroupWorkers}

// Lookup returns the descriptor of a role; the empty name is None. An
// unknown role is an error naming the known ones.
func Lookup(name string) (Role, error) {
	if name == "" {
		return None, nil
	}
	mu.RLock()
	r, ok := registry[name]
	mu.RUnlock()
	if !ok {
		return Role{}, fmt.Errorf("unknown role %q: want %s", name, strings.Join(Names(), ", "))
	}
	return r, nil
}

// Get is Lookup for a role already validated: an unknown name is None.
func Get(name string) Role {
	r, err := Lookup(name)
	if err != nil {
		return None
	}
	return r
}

// Names lists the roles, in boot order then by name.
func Names() []string {
	mu.RLock()
	defer mu.RUnlock()
	rs := make([]Role, 0, len(registry))
	for _, r := range registry {
		rs = append(rs, r)
	}
	slices.SortFunc(rs, func(a, b Role) int {
		if a.Group != b.Group {
			return int(a.Group - b.Group)
		}
		return strings.Compare(a.Name, b.Name)
	})
	n := make([]string, len(rs))
	for i, r := range rs {
		n[i] = r.Name
	}
	return n
}

// Register adds a role (a fork's own, or a test's) and returns the
// function that removes it again.
func Register(r Role) (remove func(), err error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	if _, ok := registry[r.Name]; ok {
		return nil, fmt.Errorf("role %q is already registered", r.Name)
	}
	registry[r.Name] = r
	return func() {
		mu.Lock()
		delete(registry, r.Name)
		mu.Unlock()
	}, nil
}

// check is what every descriptor must satisfy.
func (r Role) check() error {
	if r.Name == "" || strings.ContainsAny(r.Name, " \t\n/") {
		return fmt.Errorf("role %q: not a role name", r.Name)
	}
	if r.Group < GroupStore || r.Group > GroupWorkers {
		return fmt.Errorf("role %s: boot group %d out of range", r.Name, r.Group)
	}
	for _, d := range r.State {
		if !strings.HasPrefix(d, "/var/lib/") || strings.Contains(d[len("/var/lib/"):], "/") || strings.ContainsAny(d, " \t\n\\") {
			return fmt.Errorf("role %s: state directory %q: want /var/lib/NAME", r.Name, d)
		}
	}
	for _, p := range r.Listen {
		if p.Proto != "tcp" && p.Proto != "udp" {
			return fmt.Errorf("role %s: port %v: protocol %q", r.Name, p, p.Proto)
		}
	}
	for _, p := range r.Probes {
		if !slices.Contains(r.Services, p.Unit) {
			return fmt.Errorf("role %s: probe of %s, which is not one of its services", r.Name, p.Unit)
		}
		if p.Scheme != "http" && p.Scheme != "https" {
			return fmt.Errorf("role %s: probe of %s: scheme %q", r.Name, p.Unit, p.Scheme)
		}
		if p.Scheme == "https" && p.Client != ClientNode && !slices.ContainsFunc(r.TLS.Identities, func(i Identity) bool { return i.Name == p.Client }) {
			return fmt.Errorf("role %s: probe of %s: client %q is not one of its TLS identities", r.Name, p.Unit, p.Client)
		}
		if p.Scheme == "https" && !r.TLS.Node {
			return fmt.Errorf("role %s: probe of %s over https, but the role gets no TLS", r.Name, p.Unit)
		}
	}
	return nil
}

// ListenPorts are the ports a role's machine may listen on beyond
// loopback, sorted, as "tcp/N" or "udp/N"; DHCP's client port is allowed
// everywhere.
func (r Role) ListenPorts(cfg *node.Config) []string {
	p := []string{"udp/" + strconv.Itoa(DHCPClientPort)}
	for _, l := range r.Listen {
		p = append(p, l.String(cfg))
	}
	slices.Sort(p)
	return slices.Compact(p)
}

// MachineSize is the memory (MiB) and vCPUs of a lab machine of the role;
// memory or cpus > 0 override the role's.
func (r Role) MachineSize(memory, cpus int) (int, int) {
	if memory <= 0 {
		memory = r.Lab.MemoryMiB
	}
	if memory <= 0 {
		memory = DefaultLabMemory
	}
	if cpus <= 0 {
		cpus = max(r.Lab.CPUs, 1)
	}
	return memory, cpus
}

// IdentityNames lists, sorted, every TLS identity a role may carry: what
// a machine that does not know its role yet makes keys for.
func IdentityNames() []string {
	var out []string
	for _, name := range Names() {
		for _, id := range Get(name).TLS.Identities {
			if !slices.Contains(out, id.Name) {
				out = append(out, id.Name)
			}
		}
	}
	slices.Sort(out)
	return out
}
