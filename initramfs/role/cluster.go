package role

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// Paths the cluster roles write and the agent's helpers read at run time.
const (
	PKIDir = "/etc/plinth/pki"
	// CAFile is the site CA every service trusts.
	CAFile = PKIDir + "/ca.pem"
	// NodeCert and NodeKey are the machine's own certificate (server and
	// client auth).
	NodeCert = PKIDir + "/node.pem"
	NodeKey  = PKIDir + "/node-key.pem"
	// SAKeyFile is the masters' shared service account signing key.
	SAKeyFile = PKIDir + "/sa-key.pem"
	// KubeDir holds kubeconfigs and component configuration.
	KubeDir = "/etc/kubernetes"
	// AgentPath is the readiness agent inside the root (see stage 1).
	AgentPath = "/usr/local/sbin/plinth-agent"
	// FlannelPrefix is the etcd prefix flanneld keeps its state under; the
	// network config is FlannelPrefix + "/config".
	FlannelPrefix = roles.FlannelPrefix
	// FlannelSubnetFile is where flanneld writes the node's subnet.
	FlannelSubnetFile = "/run/flannel/subnet.env"
	// EtcdEnvFile is written by `plinth-agent etcd-join` before etcd
	// starts: whether it founds the cluster or joins a running one.
	EtcdEnvFile = "/run/plinth/etcd.env"
	// DockerConfig is written by `plinth-agent flannel-net`: dockerd's
	// configuration on the node's flannel subnet.
	DockerConfig = "/run/plinth/docker.json"
	// CNIConfig is written by `plinth-agent flannel-net`: the pods' network
	// on the node's flannel subnet.
	CNIConfig = "/etc/cni/net.d/10-plinth.conflist"
	// ImagesDir holds container images baked into the image, imported into
	// containerd before kubelet starts (no registry needed).
	ImagesDir = "/usr/share/plinth/images"
	// ImagesUnit imports them (the import-images step) before kubelet
	// starts; the agent reports it, with how far it is, until it is done.
	ImagesUnit = "plinth-images.service"
)

// File is one file a role writes.
type File struct {
	Path string
	Mode uint32
	Data string
}

// Plan is what a role writes into the root: files, then units. Roles build
// it as a pure function of the profile, so it is tested file by file.
type Plan struct {
	Files    []File
	Units    []Unit
	Links    []Link   // symlinks, after files and units
	Services []string // the units the agent checks
}

// Link is a symlink a role makes.
type Link struct{ Target, Path string }

func (p *Plan) file(path string, mode uint32, data string) {
	p.Files = append(p.Files, File{path, mode, data})
}

func (p *Plan) unit(u Unit) { p.Units = append(p.Units, u) }

// Apply writes the plan into root.
func (p *Plan) Apply(root Root) error {
	for _, f := range p.Files {
		if err := root.WriteFile(f.Path, []byte(f.Data), osMode(f.Mode)); err != nil {
			return fmt.Errorf("write %s: %w", f.Path, err)
		}
	}
	for _, u := range p.Units {
		if err := WriteUnit(root, u); err != nil {
			return err
		}
	}
	for _, l := range p.Links {
		if err := root.Symlink(l.Target, l.Path); err != nil {
			return fmt.Errorf("link %s: %w", l.Path, err)
		}
	}
	return nil
}

// opt is short for unit.NewUnitOption.
func opt(section, name, value string) *unit.UnitOption {
	return unit.NewUnitOption(section, name, value)
}

// cmdline joins a command for ExecStart; every argument is checked to
// need no quoting, so what systemd runs is exactly what the plan says.
func cmdline(args ...string) (string, error) {
	for _, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'\\$%;\n") {
			return "", fmt.Errorf("command argument %q cannot be written to a unit", a)
		}
	}
	return strings.Join(args, " "), nil
}

// tlsFiles writes the machine's certificates and keys under PKIDir.
func tlsFiles(p *Plan, cfg *node.Config, need ...string) error {
	t := cfg.TLS
	if t == nil || t.CA == "" || t.Cert == "" || t.Key == "" {
		return errors.New("the profile carries no TLS material: the boot server must hold a site CA (plinth serve --state)")
	}
	p.file(CAFile, 0o644, t.CA)
	p.file(NodeCert, 0o644, t.Cert)
	p.file(NodeKey, 0o600, t.Key)
	for _, id := range need {
		kp, ok := t.Identities[id]
		if !ok || kp.Cert == "" || kp.Key == "" {
			return fmt.Errorf("the profile carries no %q client certificate", id)
		}
		p.file(IdentityCert(id), 0o644, kp.Cert)
		p.file(IdentityKey(id), 0o600, kp.Key)
	}
	return nil
}

// IdentityCert and IdentityKey are where a Kubernetes identity's
// certificate and key go.
func IdentityCert(id string) string { return PKIDir + "/" + id + ".pem" }

// IdentityKey: see IdentityCert.
func IdentityKey(id string) string { return PKIDir + "/" + id + "-key.pem" }

// nodeIP is the machine's static address, or "" when DHCP gives it.
func nodeIP(cfg *node.Config) string {
	if cfg.Network == nil || cfg.Network.Address == "" {
		return ""
	}
	p, err := netip.ParsePrefix(cfg.Network.Address)
	if err != nil {
		return ""
	}
	return p.Addr().String()
}

// etcdEndpoints are the client URLs of the profile's etcd members.
func etcdEndpoints(cl *node.Cluster) (string, error) {
	if len(cl.EtcdMembers) == 0 {
		return "", errors.New("the site has no etcd members")
	}
	var eps []string
	for _, m := range cl.EtcdMembers {
		eps = append(eps, ClientURL(m.Address))
	}
	return strings.Join(eps, ","), nil
}

// ClientURL and PeerURL are an etcd member's URLs at address.
func ClientURL(address string) string { return "https://" + hostPort(address, roles.EtcdClientPort) }

// PeerURL: see ClientURL.
func PeerURL(address string) string { return "https://" + hostPort(address, roles.EtcdPeerPort) }

func hostPort(address string, port int) string {
	if a, err := netip.ParseAddr(address); err == nil && a.Is6() {
		return "[" + address + "]:" + strconv.Itoa(port)
	}
	return address + ":" + strconv.Itoa(port)
}

// tmpfsMount is a mount unit putting a tmpfs at path: etcd's, containerd's
// and Docker's state cannot live on the root overlay (overlay on overlay).
func tmpfsMount(path string) Unit {
	name := strings.ReplaceAll(strings.Trim(path, "/"), "/", "-") + ".mount"
	return Unit{
		Name: name,
		Options: []*unit.UnitOption{
			opt("Unit", "Description", "plinth: tmpfs for "+path),
			opt("Unit", "DefaultDependencies", "no"),
			opt("Unit", "Conflicts", "umount.target"),
			opt("Unit", "Before", "local-fs.target umount.target"),
			opt("Mount", "What", "tmpfs"),
			opt("Mount", "Where", path),
			opt("Mount", "Type", "tmpfs"),
			opt("Mount", "Options", "mode=0711"),
			opt("Install", "WantedBy", "local-fs.target"),
		},
		WantedBy: "local-fs.target",
	}
}

// kernelSetup loads the modules and sets the sysctls pod networking needs.
func kernelSetup(p *Plan) {
	p.file("/etc/modules-load.d/plinth.conf", 0o644, "# plinth: pod networking\noverlay\nbr_netfilter\nvxlan\n")
	p.file("/etc/sysctl.d/90-plinth.conf", 0o644,
		"# plinth: pod networking\nnet.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\n")
}

// proxyEnv lists the site's proxy settings as Environment= values.
func proxyEnv(cl *node.Cluster) ([]string, error) {
	if cl.Proxy == nil {
		return nil, nil
	}
	var env []string
	for _, kv := range [][2]string{{"HTTP_PROXY", cl.Proxy.HTTP}, {"HTTPS_PROXY", cl.Proxy.HTTPS}, {"NO_PROXY", cl.Proxy.NoProxy}} {
		if kv[1] == "" {
			continue
		}
		if strings.ContainsAny(kv[1], " \t\"'\\$%\n") {
			return nil, fmt.Errorf("proxy setting %s=%q cannot be written to a unit", kv[0], kv[1])
		}
		env = append(env, kv[0]+"="+kv[1], strings.ToLower(kv[0])+"="+kv[1])
	}
	return env, nil
}

// kubeconfig renders a kubeconfig for a client certificate.
func kubeconfig(server, cert, key string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: plinth
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: plinth
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: plinth
  context:
    cluster: plinth
    user: plinth
current-context: plinth
`, server, CAFile, cert, key)
}

// apiURL is where nodes reach the API: the site's round-robin name.
func apiURL(cl *node.Cluster) (string, error) {
	if cl.APIName == "" {
		return "", errors.New("the site has no api_name: nodes reach the API servers by that name")
	}
	return "https://" + hostPort(cl.APIName, apiPort(cl)), nil
}

func apiPort(cl *node.Cluster) int { return roles.APIPort(&node.Config{Cluster: cl}) }

// needCluster checks the profile has the site-wide settings.
func needCluster(cfg *node.Config) (*node.Cluster, error) {
	if cfg.Cluster == nil {
		return nil, errors.New("the profile has no cluster settings")
	}
	return cfg.Cluster, nil
}

// agentUnit is a oneshot unit running one of the agent's helpers.
func agentUnit(name, desc string, args []string, unitOpts ...*unit.UnitOption) (Unit, error) {
	cmd, err := cmdline(append([]string{AgentPath}, args...)...)
	if err != nil {
		return Unit{}, err
	}
	o := []*unit.UnitOption{opt("Unit", "Description", desc)}
	o = append(o, unitOpts...)
	o = append(o,
		opt("Service", "Type", "oneshot"),
		opt("Service", "RemainAfterExit", "yes"),
		// The step retries until what it waits for is there (its own
		// limit is 15 minutes).
		opt("Service", "TimeoutStartSec", "infinity"),
		// A step may say how far it is (sd_notify STATUS=).
		opt("Service", "NotifyAccess", "main"),
		opt("Service", "ExecStart", cmd),
		opt("Service", "StandardOutput", "journal+console"),
		opt("Service", "StandardError", "journal+console"),
	)
	return Unit{Name: name, Options: o}, nil
}

func osMode(m uint32) os.FileMode { return os.FileMode(m) }
