package stage1

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/profiles/node"
)

// NetInfo is what the boot NIC was configured with.
type NetInfo struct {
	Iface   string
	MAC     string
	Address string // CIDR
	Gateway string
	DNS     []string
	DHCP    bool
}

// Paths of the agent inside the machine's root.
const (
	AgentBinary = "/usr/local/lib/plinth/bb"
	AgentLink   = "/usr/local/sbin/plinth-agent"
	AgentUnit   = "plinth-agent.service"
	ConfigPath  = "/etc/plinth/config.json"
)

// Render writes the machine's identity and profile into root: host name,
// hosts, resolver, network configuration for systemd-networkd when the
// image has it, the profile's files and the profile itself for later
// stages.
func Render(root role.Root, cfg *node.Config, n *NetInfo) error {
	w := func(p string, mode os.FileMode, s string) error {
		if err := root.WriteFile(p, []byte(s), mode); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
		return nil
	}
	if err := w("/etc/hostname", 0o644, cfg.Hostname+"\n"); err != nil {
		return err
	}
	fqdn := cfg.Hostname
	if cfg.Domain != "" {
		fqdn = cfg.Hostname + "." + cfg.Domain + " " + cfg.Hostname
	}
	hosts := "127.0.0.1\tlocalhost\n127.0.1.1\t" + fqdn + "\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if err := w("/etc/hosts", 0o644, hosts); err != nil {
		return err
	}
	dns := []string{}
	if n != nil {
		dns = append(dns, n.DNS...)
	}
	if cfg.Network != nil && len(cfg.Network.DNS) > 0 {
		dns = cfg.Network.DNS
	}
	if len(dns) > 0 {
		var b strings.Builder
		if cfg.Domain != "" {
			fmt.Fprintf(&b, "search %s\n", cfg.Domain)
		}
		for _, d := range dns {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		if err := w("/etc/resolv.conf", 0o644, b.String()); err != nil {
			return err
		}
	}
	if nw := networkUnit(cfg, n); nw != "" && (root.Exists("/lib/systemd/systemd-networkd") || root.Exists("/usr/lib/systemd/systemd-networkd")) {
		if err := w("/etc/systemd/network/10-plinth.network", 0o644, nw); err != nil {
			return err
		}
		if err := root.Symlink("/lib/systemd/system/systemd-networkd.service",
			"/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"); err != nil {
			return err
		}
	}
	files := append([]node.File(nil), cfg.Files...)
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for _, f := range files {
		if err := w(f.Path, os.FileMode(f.Mode), f.Content); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return w(ConfigPath, 0o600, string(b)+"\n")
}

// networkUnit renders a systemd-networkd file for the boot NIC: the
// profile's static address, or DHCP as stage 1 did.
func networkUnit(cfg *node.Config, n *NetInfo) string {
	if n == nil || n.MAC == "" {
		return ""
	}
	if _, err := net.ParseMAC(n.MAC); err != nil {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[Match]\nMACAddress=%s\n\n[Network]\n", n.MAC)
	if cfg.Network != nil && cfg.Network.Address != "" {
		fmt.Fprintf(&b, "Address=%s\n", cfg.Network.Address)
		if cfg.Network.Gateway != "" {
			fmt.Fprintf(&b, "Gateway=%s\n", cfg.Network.Gateway)
		}
		for _, d := range cfg.Network.DNS {
			fmt.Fprintf(&b, "DNS=%s\n", d)
		}
	} else {
		b.WriteString("DHCP=ipv4\n")
	}
	return b.String()
}

// InstallAgent copies the running busybox binary into root and enables the
// readiness agent's unit, which runs once the default target is reached.
func InstallAgent(root role.Root, self []byte) error {
	if err := root.WriteFile(AgentBinary, self, 0o755); err != nil {
		return err
	}
	if err := root.Symlink("../lib/plinth/bb", AgentLink); err != nil {
		return err
	}
	return role.WriteUnit(root, role.Unit{
		Name: AgentUnit,
		Options: []*unit.UnitOption{
			unit.NewUnitOption("Unit", "Description", "plinth readiness agent"),
			unit.NewUnitOption("Unit", "After", "multi-user.target"),
			unit.NewUnitOption("Service", "Type", "oneshot"),
			unit.NewUnitOption("Service", "RemainAfterExit", "yes"),
			unit.NewUnitOption("Service", "ExecStart", AgentLink),
			unit.NewUnitOption("Service", "StandardOutput", "journal+console"),
			unit.NewUnitOption("Install", "WantedBy", "multi-user.target"),
		},
		WantedBy: "multi-user.target",
	})
}

// ConfigureRole runs the role's configurator, if this build has one.
func ConfigureRole(ctx context.Context, root role.Root, cfg *node.Config) (string, error) {
	if cfg.Role == "" {
		return "no role", nil
	}
	c := role.Lookup(cfg.Role)
	if c == nil {
		return "", fmt.Errorf("role %q: no configurator in this build (have: %s)", cfg.Role, strings.Join(role.Names(), ", "))
	}
	if err := c.Configure(ctx, root, cfg); err != nil {
		return "", fmt.Errorf("role %s: %w", cfg.Role, err)
	}
	return "role " + cfg.Role + " configured", nil
}
