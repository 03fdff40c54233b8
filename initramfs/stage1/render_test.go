package stage1

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/internal/testutil"
	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// dumpTree renders every file and link under dir, with modes, sorted: the
// form golden files compare.
func dumpTree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			fmt.Fprintf(&b, "== /%s -> %s\n", rel, l)
			return nil
		}
		c, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "== /%s %04o\n%s", rel, info.Mode().Perm(), c)
		if len(c) > 0 && c[len(c)-1] != '\n' {
			b.WriteString("\n(no newline at end)\n")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// imageWithNetworkd is a root whose image ships systemd-networkd.
func imageWithNetworkd(t *testing.T) string {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "usr/lib/systemd"), 0o755)
	os.WriteFile(filepath.Join(dir, "usr/lib/systemd/systemd-networkd"), nil, 0o755)
	os.Symlink("usr/lib", filepath.Join(dir, "lib")) // merged /usr, as Debian 12
	return dir
}

func TestRenderGolden(t *testing.T) {
	static := &node.Config{Machine: "m1", Hostname: "node-one", Domain: "lab.example", Role: "etcd",
		Network: &node.Network{Address: "10.0.0.5/24", Gateway: "10.0.0.1", DNS: []string{"10.0.0.2"}},
		Cluster: &node.Cluster{Name: "lab", BootServer: "http://10.0.0.1:8080"}}
	dhcp := &node.Config{Machine: "m2", Hostname: "node-two"}
	nic := &NetInfo{Iface: "eth0", MAC: "52:54:00:00:00:01", Address: "10.0.0.99/24", DNS: []string{"10.0.0.9"}, Domain: "dhcp.example", DHCP: true}
	for _, tc := range []struct {
		name     string
		cfg      *node.Config
		nic      *NetInfo
		networkd bool
	}{
		{"static-networkd", static, nic, true},
		{"dhcp-networkd", dhcp, nic, true},
		{"dhcp-no-networkd", dhcp, nic, false},
		{"embedded", dhcp, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.networkd {
				dir = imageWithNetworkd(t)
			}
			if err := Render(role.DirRoot(dir), tc.cfg, tc.nic); err != nil {
				t.Fatal(err)
			}
			os.RemoveAll(filepath.Join(dir, "usr/lib/systemd/systemd-networkd"))
			testutil.Golden(t, filepath.Join("testdata", "render-"+tc.name+".txt"), []byte(dumpTree(t, dir)))
		})
	}
}

func TestRenderRefusesToFollowAnImageSymlinkOutOfTheRoot(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	os.Symlink(outside, filepath.Join(dir, "etc"))
	// An error is fine (the path does not exist inside the root); a file
	// outside is not.
	_ = Render(role.DirRoot(dir), &node.Config{Hostname: "a"}, nil)
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("Render wrote outside the root: %v", ents)
	}
}

func TestInstallAgentGolden(t *testing.T) {
	dir := t.TempDir()
	if err := InstallAgent(role.DirRoot(dir), []byte("\x7fELF")); err != nil {
		t.Fatal(err)
	}
	testutil.Golden(t, filepath.Join("testdata", "agent.txt"), []byte(dumpTree(t, dir)))
}

type failingRole struct{}

func (failingRole) Name() string { return "etcd" }
func (failingRole) Configure(context.Context, role.Root, *node.Config) error {
	return fmt.Errorf("no etcd members")
}

type servicesRole struct{}

func (servicesRole) Name() string { return "etcd" }
func (servicesRole) Configure(ctx context.Context, root role.Root, cfg *node.Config) error {
	return root.WriteFile("/etc/etcd.conf", []byte("name: "+cfg.Hostname+"\n"), 0o644)
}

// stubRole configures nothing, under a role's name.
type stubRole string

func (r stubRole) Name() string                                           { return string(r) }
func (stubRole) Configure(context.Context, role.Root, *node.Config) error { return nil }

// A role that imports container images at first boot (the minion) has the
// import among the units the agent reports, so its progress shows; one
// that does not (the master) has not.
func TestConfigureRoleReportsTheImageImport(t *testing.T) {
	for r, want := range map[string]bool{"minion": true, "master": false} {
		dir := t.TempDir()
		if _, err := ConfigureRole(context.Background(), role.NewRegistry(stubRole(r)), role.DirRoot(dir), &node.Config{Hostname: "h1", Role: r}); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(dir, "etc/plinth/services"))
		if got := slices.Contains(strings.Fields(string(b)), role.ImagesUnit); got != want {
			t.Errorf("%s: services %q: %s listed %v, want %v", r, b, role.ImagesUnit, got, want)
		}
	}
}

func TestConfigureRole(t *testing.T) {
	cfg := &node.Config{Hostname: "e1", Role: "etcd"}
	ctx := context.Background()
	dir := t.TempDir()
	msg, err := ConfigureRole(ctx, role.NewRegistry(servicesRole{}), role.DirRoot(dir), cfg)
	if err != nil || msg != "role etcd configured (2 services)" {
		t.Errorf("msg %q err %v", msg, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "etc/plinth/services")); string(b) != "etcd.service\nplinth-etcd-promote.service\n" {
		t.Errorf("services file %q", b)
	}
	if _, err := ConfigureRole(ctx, role.NewRegistry(failingRole{}), role.DirRoot(t.TempDir()), cfg); err == nil || !strings.Contains(err.Error(), "role etcd: no etcd members") {
		t.Errorf("failing configurator: %v", err)
	}
	// A role nothing describes stops the boot instead of a ready machine
	// that runs nothing; so does one described but without a configurator.
	if msg, err := ConfigureRole(ctx, role.Builtin(), role.DirRoot(t.TempDir()), &node.Config{Hostname: "s1", Role: "storage"}); err == nil || !strings.Contains(err.Error(), `unknown role "storage"`) {
		t.Errorf("unknown role: %q, %v", msg, err)
	}
	remove, err := roles.Register(roles.Role{Name: "storage", Group: roles.GroupWorkers})
	if err != nil {
		t.Fatal(err)
	}
	defer remove()
	if msg, err := ConfigureRole(ctx, role.Builtin(), role.DirRoot(t.TempDir()), &node.Config{Hostname: "s1", Role: "storage"}); err == nil || !strings.Contains(err.Error(), `role "storage": no configurator`) {
		t.Errorf("role without a configurator: %q, %v", msg, err)
	}
}
