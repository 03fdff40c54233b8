package stage1

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// NetInfo is what the boot NIC was configured with.
type NetInfo struct {
	Iface   string
	MAC     string
	Address string // CIDR
	Gateway string
	DNS     []string
	Domain  string // from DHCP, if any
	DHCP    bool
	// NICs are the physical NICs stage 1 brought up (looking for carrier),
	// each with the name the kernel gave it and its MAC.
	NICs []NIC
}

// NIC is a physical NIC as stage 1 saw it.
type NIC struct{ Name, MAC string }

// Paths of the agent inside the machine's root.
const (
	AgentBinary = "/usr/local/lib/plinth/bb"
	AgentLink   = "/usr/local/sbin/plinth-agent"
	AgentUnit   = "plinth-agent.service"
)

// Render writes the machine's identity and profile into root: host name,
// hosts, an empty machine-id (systemd makes one per boot), resolver,
// network configuration for systemd-networkd when the image has it, the
// profile's files and the profile itself for later stages.
func Render(root role.Root, cfg *node.Config, n *NetInfo) error {
	type file struct {
		path string
		mode os.FileMode
		data string
	}
	fqdn := cfg.Hostname
	if cfg.Domain != "" {
		fqdn = cfg.Hostname + "." + cfg.Domain + " " + cfg.Hostname
	}
	files := []file{
		{"/etc/hostname", 0o644, cfg.Hostname + "\n"},
		{"/etc/hosts", 0o644, "127.0.0.1\tlocalhost\n127.0.1.1\t" + fqdn + "\n::1\tlocalhost ip6-localhost ip6-loopback\n"},
		// Empty, not absent: systemd then generates an id at boot instead
		// of every machine sharing the one baked into the image.
		{"/etc/machine-id", 0o444, ""},
	}
	if rc := resolvConf(cfg, n); rc != "" {
		files = append(files, file{"/etc/resolv.conf", 0o644, rc})
	}
	networkd := root.Exists("/lib/systemd/systemd-networkd") || root.Exists("/usr/lib/systemd/systemd-networkd")
	nw := NetworkdFiles(cfg, n)
	if networkd {
		for _, p := range slices.Sorted(maps.Keys(nw)) {
			files = append(files, file{p, 0o644, nw[p]})
		}
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	files = append(files, file{role.ConfigPath, 0o600, string(b) + "\n"})
	for _, f := range files {
		if err := root.WriteFile(f.path, []byte(f.data), f.mode); err != nil {
			return fmt.Errorf("write %s: %w", f.path, err)
		}
	}
	if networkd && len(nw) > 0 {
		// Enabled as `systemctl enable` would; an image that already
		// enables it gets the same link again.
		if err := root.Symlink("/lib/systemd/system/systemd-networkd.service",
			role.UnitDir+"/multi-user.target.wants/systemd-networkd.service"); err != nil {
			return fmt.Errorf("enable systemd-networkd: %w", err)
		}
	}
	return nil
}

// resolvConf renders the resolver: the profile's static DNS servers, else
// those DHCP gave.
func resolvConf(cfg *node.Config, n *NetInfo) string {
	var dns []string
	domain := cfg.Domain
	if n != nil {
		dns = n.DNS
		if domain == "" {
			domain = n.Domain
		}
	}
	if cfg.Network != nil && len(cfg.Network.DNS) > 0 {
		dns = cfg.Network.DNS
	}
	var b strings.Builder
	if domain != "" && isWord(domain) {
		fmt.Fprintf(&b, "search %s\n", domain)
	}
	for _, d := range dns {
		if _, err := netip.ParseAddr(d); err == nil {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
	}
	if !strings.Contains(b.String(), "nameserver") {
		return ""
	}
	return b.String()
}

// isWord keeps whitespace and line breaks from a server out of files.
func isWord(s string) bool { return s != "" && !strings.ContainsAny(s, " \t\r\n\x00") }

// InstallAgent copies the running busybox binary into root and enables the
// readiness agent's unit, which starts with the network and reports while
// the role's services come up.
func InstallAgent(root role.Root, self []byte) error {
	if err := root.WriteFile(AgentBinary, self, 0o755); err != nil {
		return err
	}
	// Relative, so it resolves the same before and after switch_root.
	if err := root.Symlink("../lib/plinth/bb", AgentLink); err != nil {
		return err
	}
	return role.WriteUnit(root, role.Unit{
		Name: AgentUnit,
		Options: []*unit.UnitOption{
			unit.NewUnitOption("Unit", "Description", "plinth readiness agent"),
			// Early, not after multi-user.target: the target waits for
			// every service to start (a minion's dockerd and image import
			// take minutes under TCG), and the agent's reports while they
			// start are what tells a slow machine from a stuck one. The
			// target does not wait for it (Type=exec). It keeps running:
			// it waits for the role's services, then reports changes and
			// a heartbeat.
			unit.NewUnitOption("Unit", "After", "network-online.target"),
			unit.NewUnitOption("Service", "Type", "exec"),
			unit.NewUnitOption("Service", "ExecStart", AgentLink),
			unit.NewUnitOption("Service", "Restart", "always"),
			unit.NewUnitOption("Service", "RestartSec", "10"),
			unit.NewUnitOption("Service", "StandardOutput", "journal+console"),
			unit.NewUnitOption("Service", "StandardError", "journal+console"),
			unit.NewUnitOption("Install", "WantedBy", "multi-user.target"),
		},
		WantedBy: "multi-user.target",
	})
}

// ConfigureRole runs the role's configurator and records the services its
// descriptor lists for the agent. A role this build has no descriptor or
// no configurator for stops the boot: a machine that cannot be what its
// profile says must not report ready.
func ConfigureRole(ctx context.Context, cs role.Registry, root role.Root, cfg *node.Config) (string, error) {
	d, err := roles.Lookup(cfg.Role)
	if err != nil {
		return "", err
	}
	c, err := cs.Lookup(cfg.Role)
	if err != nil {
		return "", err
	}
	if err := c.Configure(ctx, root, cfg); err != nil {
		return "", fmt.Errorf("role %s: %w", c.Name(), err)
	}
	services := d.Services
	if cfg.State != nil && len(d.State) > 0 {
		// The agent reports the state disk step: a refused disk is why
		// the role's services never start.
		services = append(slices.Clone(services), role.StateUnit)
	}
	if slices.Contains(d.Steps, "import-images") {
		// Minutes on a slow machine, before kubelet can start: the agent
		// shows the import's progress rather than an inactive kubelet.
		services = append(slices.Clone(services), role.ImagesUnit)
	}
	if err := role.WriteServices(root, services); err != nil {
		return "", fmt.Errorf("role %s: %w", c.Name(), err)
	}
	return fmt.Sprintf("role %s configured (%d services)", c.Name(), len(services)), nil
}
