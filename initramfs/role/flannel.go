package role

import (
	"fmt"
	"io"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/plinth-dev/plinth/profiles/node"
)

// flannel adds flanneld with etcd as its store, and the step that writes
// the site's network config to etcd once (whichever node is first; see
// `plinth-agent flannel-config`).
func flannel(p *Plan, cfg *node.Config) error {
	cl := cfg.Cluster
	if cl.Flannel == "" {
		return fmt.Errorf("the site has no [network] flannel network")
	}
	eps, err := etcdEndpoints(cl)
	if err != nil {
		return err
	}
	conf, err := agentUnit("plinth-flannel-config.service", "plinth: the flannel network config in etcd",
		[]string{"flannel-config"},
		opt("Unit", "Wants", "network-online.target"),
		opt("Unit", "After", "network-online.target"),
		opt("Unit", "Before", "flanneld.service"))
	if err != nil {
		return err
	}
	p.unit(conf)
	args := []string{"/usr/bin/flanneld",
		"--etcd-endpoints=" + eps,
		"--etcd-prefix=" + FlannelPrefix,
		"--etcd-cafile=" + CAFile,
		"--etcd-certfile=" + IdentityCert(node.IdentityEtcdFlannel), "--etcd-keyfile=" + IdentityKey(node.IdentityEtcdFlannel),
		"--ip-masq",
	}
	if ip := nodeIP(cfg); ip != "" {
		args = append(args, "--iface="+ip)
	}
	exec, err := cmdline(args...)
	if err != nil {
		return err
	}
	p.unit(Unit{
		Name: "flanneld.service",
		Options: []*unit.UnitOption{
			opt("Unit", "Description", "flannel: the pod network over etcd ("+cl.Backend+")"),
			opt("Unit", "Requires", "plinth-flannel-config.service"),
			opt("Unit", "After", "plinth-flannel-config.service network-online.target"),
			opt("Service", "Type", "notify"),
			// Ready once it holds a lease, which needs etcd: wait for it
			// rather than fail the units that require this one.
			opt("Service", "TimeoutStartSec", "infinity"),
			opt("Service", "ExecStart", exec),
			opt("Service", "Restart", "always"),
			opt("Service", "RestartSec", "3"),
			opt("Install", "WantedBy", "multi-user.target"),
		},
		WantedBy: "multi-user.target",
	})
	return nil
}

// dropIn writes UnitDir/NAME.d/FILE: options added to a unit the image
// ships (Debian's docker.service, containerd.service).
func dropIn(p *Plan, name, file string, opts []*unit.UnitOption) error {
	if err := checkUnitName(name); err != nil {
		return err
	}
	if err := checkOptions(name, opts); err != nil {
		return err
	}
	b, err := io.ReadAll(unit.Serialize(opts))
	if err != nil {
		return err
	}
	p.file(UnitDir+"/"+name+".d/"+file, 0o644, "# Written by plinth at first boot.\n"+string(b))
	return nil
}

// enable adds the .wants link `systemctl enable` makes for a unit the
// image ships at /lib/systemd/system.
func (p *Plan) enable(name, target string) {
	p.Links = append(p.Links, Link{Target: "/lib/systemd/system/" + name, Path: UnitDir + "/" + target + ".wants/" + name})
}
