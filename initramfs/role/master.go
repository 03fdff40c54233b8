package role

import (
	"context"
	"errors"
	"slices"
	"strconv"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// Master configures a Kubernetes control-plane machine: kube-apiserver
// with the site's etcd as its store, controller-manager and scheduler
// (leader-elected, so a site may run several masters), and flanneld. Nodes
// reach the API through the site's API name, which the boot server answers
// with every ready master.
type Master struct{}

// Name is "master".
func (Master) Name() string { return "master" }

// Configure writes the plan into root.
func (m Master) Configure(_ context.Context, root Root, cfg *node.Config) error {
	p, err := m.Plan(cfg)
	if err != nil {
		return err
	}
	return p.Apply(root)
}

// servingCert is what the controller manager and the scheduler serve
// their health and metrics with: the node's certificate (localhost and
// 127.0.0.1 among its names). Without one each makes a self-signed RSA
// pair in memory at every start, seconds of CPU under emulation, at the
// moment the API server on the same machine needs it most.
func servingCert() []string {
	return []string{"--tls-cert-file=" + NodeCert, "--tls-private-key-file=" + NodeKey}
}

// IdentityKubeconfig is the kubeconfig of a component that runs as
// identity id against its master's own API server.
func IdentityKubeconfig(id string) string { return KubeDir + "/" + id + ".kubeconfig" }

// Plan renders the master's files and units.
func (Master) Plan(cfg *node.Config) (*Plan, error) {
	cl, err := needCluster(cfg)
	if err != nil {
		return nil, err
	}
	if cl.ServiceCIDR == "" {
		return nil, errors.New("the profile has no service CIDR")
	}
	if cl.Flannel == "" {
		return nil, errors.New("the site has no [network] flannel network")
	}
	p := &Plan{Services: roles.Get("master").Services}
	if err := tlsFiles(p, cfg, node.IdentityKubeletClient, node.IdentityFrontProxy, node.IdentityControllerManager, node.IdentityScheduler,
		node.IdentityEtcdAPIServer, node.IdentityEtcdFlannel); err != nil {
		return nil, err
	}
	if cfg.TLS.ServiceAccountKey == "" {
		return nil, errors.New("the profile carries no service account key (masters get one from the boot server)")
	}
	p.file(SAKeyFile, 0o600, cfg.TLS.ServiceAccountKey)
	port := apiPort(cl)
	local := "https://" + hostPort("127.0.0.1", port)
	// The controller manager and the scheduler each run as themselves,
	// with what Kubernetes' default RBAC grants them, not as admin.
	cmKubeconfig, schedKubeconfig := IdentityKubeconfig(node.IdentityControllerManager), IdentityKubeconfig(node.IdentityScheduler)
	p.file(cmKubeconfig, 0o600, kubeconfig(local, IdentityCert(node.IdentityControllerManager), IdentityKey(node.IdentityControllerManager)))
	p.file(schedKubeconfig, 0o600, kubeconfig(local, IdentityCert(node.IdentityScheduler), IdentityKey(node.IdentityScheduler)))
	kernelSetup(p)
	if err := flannel(p, cfg); err != nil {
		return nil, err
	}
	eps, err := etcdEndpoints(cl)
	if err != nil {
		return nil, err
	}
	api := []string{"/usr/bin/kube-apiserver",
		"--etcd-servers=" + eps,
		"--etcd-cafile=" + CAFile,
		"--etcd-certfile=" + IdentityCert(node.IdentityEtcdAPIServer), "--etcd-keyfile=" + IdentityKey(node.IdentityEtcdAPIServer),
		"--bind-address=0.0.0.0",
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + NodeCert, "--tls-private-key-file=" + NodeKey,
		"--client-ca-file=" + CAFile,
		"--kubelet-client-certificate=" + IdentityCert(node.IdentityKubeletClient),
		"--kubelet-client-key=" + IdentityKey(node.IdentityKubeletClient),
		"--kubelet-certificate-authority=" + CAFile,
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--service-cluster-ip-range=" + cl.ServiceCIDR,
		"--service-account-key-file=" + SAKeyFile,
		"--service-account-signing-key-file=" + SAKeyFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		// Masters run no kube-proxy, so a Service's cluster IP leads nowhere
		// from here: admission and conversion webhooks and aggregated APIs
		// are reached at their endpoints' addresses instead.
		"--enable-aggregator-routing=true",
		// The aggregation layer: requests proxied to an aggregated API
		// server (metrics-server, the conformance suite's sample API
		// server) carry the caller in X-Remote-* headers, which API
		// servers believe only from roles.FrontProxy's certificate.
		"--proxy-client-cert-file=" + IdentityCert(node.IdentityFrontProxy),
		"--proxy-client-key-file=" + IdentityKey(node.IdentityFrontProxy),
		"--requestheader-client-ca-file=" + CAFile,
		"--requestheader-allowed-names=" + roles.FrontProxy.CommonName,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--profiling=false",
	}
	if ip := nodeIP(cfg); ip != "" {
		api = append(api, "--advertise-address="+ip)
	}
	if err := service(p, "kube-apiserver.service", "Kubernetes API server", api,
		"flanneld.service network-online.target", ""); err != nil {
		return nil, err
	}
	cm := []string{"/usr/bin/kube-controller-manager",
		"--kubeconfig=" + cmKubeconfig,
		"--authentication-kubeconfig=" + cmKubeconfig,
		"--authorization-kubeconfig=" + cmKubeconfig,
		"--bind-address=127.0.0.1",
		"--root-ca-file=" + CAFile,
		"--service-account-private-key-file=" + SAKeyFile,
		"--use-service-account-credentials=true",
		"--service-cluster-ip-range=" + cl.ServiceCIDR,
		"--cluster-cidr=" + cl.Flannel,
		"--allocate-node-cidrs=false",
		"--profiling=false",
	}
	cm = slices.Concat(cm, servingCert(), leaderElection)
	// Both start once the local API server serves (firstboot's wait-api
	// says why): no waiting limit, since under TCG a boot can take long.
	waitAPI, err := cmdline(AgentPath, "wait-api", local)
	if err != nil {
		return nil, err
	}
	afterAPI := []*unit.UnitOption{opt("Service", "ExecStartPre", waitAPI), opt("Service", "TimeoutStartSec", "infinity")}
	if err := service(p, "kube-controller-manager.service", "Kubernetes controller manager", cm,
		"kube-apiserver.service", "", afterAPI...); err != nil {
		return nil, err
	}
	sched := []string{"/usr/bin/kube-scheduler",
		"--kubeconfig=" + schedKubeconfig,
		"--authentication-kubeconfig=" + schedKubeconfig,
		"--authorization-kubeconfig=" + schedKubeconfig,
		"--bind-address=127.0.0.1",
		"--profiling=false",
	}
	sched = slices.Concat(sched, servingCert(), leaderElection)
	if err := service(p, "kube-scheduler.service", "Kubernetes scheduler", sched,
		"kube-apiserver.service", "", afterAPI...); err != nil {
		return nil, err
	}
	return p, nil
}

// leaderElection is how the controller manager and the scheduler share
// the work among masters. Kubernetes' defaults (a 15 s lease renewed within
// 10 s) assume a responsive API: on a loaded machine (the e2e's TCG VMs:
// 8 leadership losses in 15 minutes, each a restart, and the default
// service account never made) a renewal took longer, the leader stepped
// down and restarted. A longer lease only delays a failover to another
// master, to a minute at most.
var leaderElection = []string{
	"--leader-elect=true",
	"--leader-elect-lease-duration=60s",
	"--leader-elect-renew-deadline=40s",
	"--leader-elect-retry-period=5s",
}

// service adds a long-running unit, restarted when it stops, enabled for
// multi-user.target.
func service(p *Plan, name, desc string, args []string, after, requires string, extra ...*unit.UnitOption) error {
	exec, err := cmdline(args...)
	if err != nil {
		return err
	}
	o := []*unit.UnitOption{opt("Unit", "Description", desc)}
	if requires != "" {
		o = append(o, opt("Unit", "Requires", requires))
	}
	if after != "" {
		o = append(o, opt("Unit", "After", after))
	}
	o = append(o, extra...)
	o = append(o,
		opt("Service", "ExecStart", exec),
		opt("Service", "Restart", "always"),
		opt("Service", "RestartSec", "3"),
		opt("Install", "WantedBy", "multi-user.target"),
	)
	p.unit(Unit{Name: name, Options: o, WantedBy: "multi-user.target"})
	return nil
}
