package role

import (
	"context"
	"fmt"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// Etcd configures a member of the site's etcd cluster. Whether it founds
// the cluster or joins a running one is decided at boot, before etcd
// starts, by `plinth-agent etcd-join` (see package agent): the profile
// lists every member the site has now, which for a member added later is
// more than the running cluster has.
type Etcd struct{}

// Name is "etcd".
func (Etcd) Name() string { return "etcd" }

// Configure writes the plan into root.
func (e Etcd) Configure(_ context.Context, root Root, cfg *node.Config) error {
	p, err := e.Plan(cfg)
	if err != nil {
		return err
	}
	return p.Apply(root)
}

// EtcdDataDir is etcd's data directory: on the state disk when the machine
// has one, else on its own tmpfs.
const EtcdDataDir = "/var/lib/etcd"

// EtcdClusterToken is the etcd cluster's --initial-cluster-token: the
// site's name.
func EtcdClusterToken(cl *node.Cluster) string {
	if cl.Name == "" {
		return "plinth"
	}
	return cl.Name
}

// Plan renders the etcd member's files and units.
func (Etcd) Plan(cfg *node.Config) (*Plan, error) {
	cl, err := needCluster(cfg)
	if err != nil {
		return nil, err
	}
	var self *node.Member
	for i, m := range cl.EtcdMembers {
		if m.Name == cfg.Machine {
			self = &cl.EtcdMembers[i]
		}
	}
	if self == nil {
		return nil, fmt.Errorf("machine %s is not among the site's etcd members", cfg.Machine)
	}
	p := &Plan{Services: roles.Get("etcd").Services}
	if err := tlsFiles(p, cfg, node.IdentityEtcdMember); err != nil {
		return nil, err
	}
	p.file("/etc/plinth/etcdctl.env", 0o644, strings.Join([]string{
		"# plinth: source this to use etcdctl on this member (as etcd's root role)",
		"ETCDCTL_ENDPOINTS=" + ClientURL("127.0.0.1"),
		"ETCDCTL_CACERT=" + CAFile,
		"ETCDCTL_CERT=" + IdentityCert(node.IdentityEtcdMember),
		"ETCDCTL_KEY=" + IdentityKey(node.IdentityEtcdMember),
	}, "\n")+"\n")
	if err := stateMounts(p, cfg, roles.Get("etcd").State); err != nil {
		return nil, err
	}

	// It decides from the data directory, so it runs once that is
	// mounted (the state disk's, or the tmpfs).
	join, err := agentUnit("plinth-etcd-join.service", "plinth: found or join the etcd cluster",
		[]string{"etcd-join"},
		opt("Unit", "Wants", "network-online.target"),
		opt("Unit", "Requires", MountUnit(EtcdDataDir)),
		opt("Unit", "After", "network-online.target "+MountUnit(EtcdDataDir)),
		opt("Unit", "Before", "etcd.service"))
	if err != nil {
		return nil, err
	}
	p.unit(join)

	cluster := EtcdClusterToken(cl)
	exec, err := cmdline("/usr/bin/etcd",
		"--name="+self.Name,
		"--data-dir="+EtcdDataDir,
		"--listen-peer-urls="+PeerURL("0.0.0.0"),
		"--listen-client-urls="+ClientURL("0.0.0.0"),
		"--advertise-client-urls="+ClientURL(self.Address),
		"--initial-advertise-peer-urls="+PeerURL(self.Address),
		"--initial-cluster-token="+cluster,
		// 5x etcd's defaults: a busy or emulated machine (a QEMU lab under
		// TCG) otherwise loses its leader over and over; a real failover
		// takes ~5 s instead of ~1 s.
		"--heartbeat-interval=500", "--election-timeout=5000",
		"--cert-file="+NodeCert, "--key-file="+NodeKey,
		"--trusted-ca-file="+CAFile, "--client-cert-auth",
		"--peer-cert-file="+NodeCert, "--peer-key-file="+NodeKey,
		"--peer-trusted-ca-file="+CAFile, "--peer-client-cert-auth",
	)
	if err != nil {
		return nil, err
	}
	// A member that joined as a learner is promoted to a voting member
	// once it has caught up with the leader; the agent waits for it.
	promote, err := agentUnit("plinth-etcd-promote.service", "plinth: promote this etcd member once it has caught up",
		[]string{"etcd-promote"},
		opt("Unit", "Requires", "etcd.service"),
		opt("Unit", "After", "etcd.service"),
		opt("Install", "WantedBy", "multi-user.target"))
	if err != nil {
		return nil, err
	}
	promote.WantedBy = "multi-user.target"
	p.unit(promote)

	p.unit(Unit{
		Name: "etcd.service",
		Options: []*unit.UnitOption{
			opt("Unit", "Description", "etcd member "+self.Name+" of cluster "+cluster),
			opt("Unit", "Requires", "plinth-etcd-join.service var-lib-etcd.mount"),
			opt("Unit", "After", "plinth-etcd-join.service var-lib-etcd.mount network-online.target"),
			opt("Service", "Type", "notify"),
			// A founding member is ready only once a quorum of the others
			// booted: wait for them rather than fail the unit.
			opt("Service", "TimeoutStartSec", "infinity"),
			// ETCD_INITIAL_CLUSTER and ETCD_INITIAL_CLUSTER_STATE.
			opt("Service", "EnvironmentFile", EtcdEnvFile),
			opt("Service", "ExecStart", exec),
			opt("Service", "Restart", "always"),
			opt("Service", "RestartSec", "3"),
			opt("Service", "LimitNOFILE", "65536"),
			opt("Install", "WantedBy", "multi-user.target"),
		},
		WantedBy: "multi-user.target",
	})
	return p, nil
}
