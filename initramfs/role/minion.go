package role

import (
	"context"
	"fmt"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// Minion configures a Kubernetes worker: flanneld with etcd as its store;
// Docker on the node's flannel subnet behind the site's proxy; containerd,
// which kubelet runs pods with over CRI (Debian's containerd; cri-dockerd
// is not packaged), with the pods on the same flannel subnet; kubelet and
// kube-proxy pointed at the site's API name.
//
// The node's flannel subnet is known only once flanneld has its lease, so
// `plinth-agent flannel-net` splits it at boot: the lower half is Docker's
// bridge (docker0), the upper half the pods' (cni0). flanneld routes the
// whole subnet to this node.
type Minion struct{}

// Name is "minion".
func (Minion) Name() string { return "minion" }

// Configure writes the plan into root.
func (m Minion) Configure(_ context.Context, root Root, cfg *node.Config) error {
	p, err := m.Plan(cfg)
	if err != nil {
		return err
	}
	return p.Apply(root)
}

// Files of the minion's Kubernetes components.
const (
	KubeletConfig     = KubeDir + "/kubelet.yaml"
	KubeletKubeconfig = KubeDir + "/kubelet.kubeconfig"
	ProxyConfig       = KubeDir + "/kube-proxy.yaml"
	ProxyKubeconfig   = KubeDir + "/kube-proxy.kubeconfig"
	ContainerdConfig  = "/etc/containerd/config.toml"
	// PauseImage is the sandbox image baked into the minion image.
	PauseImage = "registry.k8s.io/pause:3.10"
)

// Plan renders the minion's files and units.
func (Minion) Plan(cfg *node.Config) (*Plan, error) {
	cl, err := needCluster(cfg)
	if err != nil {
		return nil, err
	}
	server, err := apiURL(cl)
	if err != nil {
		return nil, err
	}
	p := &Plan{Services: roles.Get("minion").Services}
	if err := tlsFiles(p, cfg, node.IdentityKubelet, node.IdentityKubeProxy, node.IdentityEtcdFlannel); err != nil {
		return nil, err
	}
	kernelSetup(p)
	if err := flannel(p, cfg); err != nil {
		return nil, err
	}
	env, err := proxyEnv(cl)
	if err != nil {
		return nil, err
	}
	if err := stateMounts(p, cfg, roles.Get("minion").State); err != nil {
		return nil, err
	}

	// The subnet split, after flanneld has a lease, before the runtimes.
	nw, err := agentUnit("plinth-flannel-net.service", "plinth: Docker and pod networks on the flannel subnet",
		[]string{"flannel-net"},
		opt("Unit", "Requires", "flanneld.service"),
		opt("Unit", "After", "flanneld.service"),
		opt("Unit", "Before", "docker.service containerd.service kubelet.service"))
	if err != nil {
		return nil, err
	}
	p.unit(nw)

	// Docker: its configuration is written at boot by flannel-net.
	dockerd, err := cmdline("/usr/sbin/dockerd", "-H", "fd://",
		"--containerd=/run/containerd/containerd.sock", "--config-file="+DockerConfig)
	if err != nil {
		return nil, err
	}
	d := []*unit.UnitOption{
		opt("Unit", "Requires", "plinth-flannel-net.service var-lib-docker.mount"),
		opt("Unit", "After", "plinth-flannel-net.service var-lib-docker.mount"),
		opt("Service", "ExecStart", ""),
		opt("Service", "ExecStart", dockerd),
	}
	for _, e := range env {
		d = append(d, opt("Service", "Environment", e))
	}
	if err := dropIn(p, "docker.service", "10-plinth.conf", d); err != nil {
		return nil, err
	}
	p.enable("docker.service", "multi-user.target")

	// containerd: kubelet's runtime over CRI.
	p.file(ContainerdConfig, 0o644, containerdConfig())
	c := []*unit.UnitOption{
		opt("Unit", "Requires", "var-lib-containerd.mount"),
		opt("Unit", "After", "var-lib-containerd.mount plinth-flannel-net.service"),
	}
	for _, e := range env {
		c = append(c, opt("Service", "Environment", e))
	}
	if err := dropIn(p, "containerd.service", "10-plinth.conf", c); err != nil {
		return nil, err
	}
	p.enable("containerd.service", "multi-user.target")

	imp, err := agentUnit(ImagesUnit, "plinth: import the image's baked-in container images",
		[]string{"import-images", ImagesDir},
		opt("Unit", "Requires", "containerd.service"),
		opt("Unit", "After", "containerd.service"),
		opt("Unit", "Before", "kubelet.service"))
	if err != nil {
		return nil, err
	}
	p.unit(imp)

	// kubelet.
	p.file(KubeletKubeconfig, 0o600, kubeconfig(server, IdentityCert(node.IdentityKubelet), IdentityKey(node.IdentityKubelet)))
	dns, err := roles.ClusterDNSIP(cl.ServiceCIDR)
	if err != nil {
		return nil, fmt.Errorf("cluster DNS: %w", err)
	}
	p.file(KubeletConfig, 0o644, kubeletConfig(dns.String()))
	kubelet := []string{"/usr/bin/kubelet", "--config=" + KubeletConfig, "--kubeconfig=" + KubeletKubeconfig}
	if ip := nodeIP(cfg); ip != "" {
		kubelet = append(kubelet, "--node-ip="+ip)
	}
	// Not after Docker: kubelet runs pods with containerd, and a slow
	// dockerd must not hold the node back. It requires the image import:
	// nothing else pulls that in, and without it the sandbox image is
	// looked for in a registry.
	if err := service(p, "kubelet.service", "Kubernetes node agent", kubelet,
		"containerd.service plinth-images.service plinth-flannel-net.service var-lib-kubelet.mount",
		"containerd.service plinth-images.service var-lib-kubelet.mount"); err != nil {
		return nil, err
	}

	// kube-proxy.
	p.file(ProxyKubeconfig, 0o600, kubeconfig(server, IdentityCert(node.IdentityKubeProxy), IdentityKey(node.IdentityKubeProxy)))
	p.file(ProxyConfig, 0o644, proxyConfig(cl.Flannel))
	if err := service(p, "kube-proxy.service", "Kubernetes service proxy",
		[]string{"/usr/bin/kube-proxy", "--config=" + ProxyConfig},
		"network-online.target flanneld.service", ""); err != nil {
		return nil, err
	}
	return p, nil
}

func containerdConfig() string {
	return strings.Join([]string{
		"# Written by plinth at first boot: kubelet's runtime over CRI.",
		"version = 2",
		"",
		`[plugins."io.containerd.grpc.v1.cri"]`,
		`  sandbox_image = "` + PauseImage + `"`,
		`  [plugins."io.containerd.grpc.v1.cri".containerd]`,
		`    snapshotter = "overlayfs"`,
		`  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]`,
		`    runtime_type = "io.containerd.runc.v2"`,
		`  [plugins."io.containerd.grpc.v1.cri".cni]`,
		`    bin_dir = "/usr/lib/cni"`,
		`    conf_dir = "/etc/cni/net.d"`,
		"",
	}, "\n")
}

// kubeletConfig is kubelet's configuration; pods resolve names through
// the cluster DNS Service at dnsIP.
func kubeletConfig(dnsIP string) string {
	return fmt.Sprintf(`# Written by plinth at first boot.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
tlsCertFile: %s
tlsPrivateKeyFile: %s
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
clusterDomain: %s
clusterDNS:
- %s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
failSwapOn: false
resolvConf: /etc/resolv.conf
`, CAFile, NodeCert, NodeKey, roles.ClusterDomain, dnsIP)
}

func proxyConfig(clusterCIDR string) string {
	return fmt.Sprintf(`# Written by plinth at first boot.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
mode: iptables
clusterCIDR: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
`, ProxyKubeconfig, clusterCIDR)
}
