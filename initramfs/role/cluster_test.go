package role

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/internal/testutil"
	"github.com/plinth-dev/plinth/profiles"
	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// labConfig renders a machine of the QEMU lab site as the boot server
// would, with stand-in PEM strings for the TLS material it issues.
func labConfig(t *testing.T, machine string) *node.Config {
	t.Helper()
	site, err := profiles.LoadSite("../../profiles/examples/qemu-lab")
	if err != nil {
		t.Fatal(err)
	}
	m := site.Machine(machine)
	if m == nil {
		t.Fatalf("no machine %s", machine)
	}
	cfg, err := site.Render(m, "http://10.77.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	pem := func(what string) string {
		return "-----BEGIN " + what + "-----\n" + machine + "\n-----END " + what + "-----\n"
	}
	cfg.TLS = &node.TLS{CA: pem("CA CERTIFICATE"), Cert: pem("CERTIFICATE"), Key: pem("PRIVATE KEY"), Identities: map[string]node.KeyPair{}}
	// What the boot server issues: a certificate per identity of the role.
	for _, id := range roles.Get(cfg.Role).TLS.Identities {
		name := strings.ToUpper(id.Name)
		cfg.TLS.Identities[id.Name] = node.KeyPair{Cert: pem(name + " CERTIFICATE"), Key: pem(name + " KEY")}
	}
	if cfg.Role == "master" {
		cfg.TLS.ServiceAccountKey = pem("SA KEY")
	}
	return cfg
}

// dump lists a root: every file with its mode and content, every symlink
// with its target, sorted by path.
func dump(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel := "/" + filepath.ToSlash(strings.TrimPrefix(p, dir+"/"))
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, "=== %s -> %s\n", rel, target)
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "=== %s (%04o)\n%s", rel, fi.Mode().Perm(), data)
		if len(data) > 0 && data[len(data)-1] != '\n' {
			b.WriteString("\n")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// configureLab runs a lab machine's role into a fresh root and returns it.
func configureLab(t *testing.T, machine string) string {
	t.Helper()
	cfg := labConfig(t, machine)
	c, err := Builtin().Lookup(cfg.Role)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := c.Configure(context.Background(), DirRoot(dir), cfg); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestRolesRenderTheLabProfile is the renderers' golden test: a profile
// in, the files and units each role writes out.
func TestRolesRenderTheLabProfile(t *testing.T) {
	for _, machine := range []string{"etcd-1", "master-1", "minion-1", "minion-2"} {
		t.Run(machine, func(t *testing.T) {
			dir := configureLab(t, machine)
			testutil.Golden(t, filepath.Join("testdata", "roles", machine+".txt"), []byte(dump(t, dir)))
			// Keys are readable by root only.
			for _, k := range []string{NodeKey, SAKeyFile, IdentityKey(node.IdentityKubelet), IdentityKey(node.IdentityKubeletClient)} {
				if fi, err := os.Stat(filepath.Join(dir, k)); err == nil && fi.Mode().Perm() != 0o600 {
					t.Errorf("%s has mode %o", k, fi.Mode().Perm())
				}
			}
		})
	}
}

func TestRolesRefuseAProfileTheyCannotRun(t *testing.T) {
	for _, tc := range []struct {
		machine string
		change  func(*node.Config)
		want    string
	}{
		{"etcd-1", func(c *node.Config) { c.TLS = nil }, "no TLS material"},
		{"etcd-1", func(c *node.Config) { c.Machine = "etcd-9" }, "machine etcd-9 is not among the site's etcd members"},
		{"master-1", func(c *node.Config) { c.TLS.ServiceAccountKey = "" }, "no service account key"},
		{"master-1", func(c *node.Config) { delete(c.TLS.Identities, node.IdentityKubeletClient) }, `no "kubelet-client" client certificate`},
		{"minion-1", func(c *node.Config) { c.Cluster.APIName = "" }, "no api_name"},
		{"minion-1", func(c *node.Config) { c.Cluster.EtcdMembers = nil }, "no etcd members"},
		{"minion-1", func(c *node.Config) { c.Cluster.Proxy = &node.Proxy{HTTP: "http://p:3128 --evil"} }, "cannot be written to a unit"},
		{"minion-1", func(c *node.Config) { c.Cluster.Flannel = "" }, "no [network] flannel"},
	} {
		cfg := labConfig(t, tc.machine)
		tc.change(cfg)
		c, _ := Builtin().Lookup(cfg.Role)
		dir := t.TempDir()
		err := c.Configure(context.Background(), DirRoot(dir), cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.machine, err, tc.want)
		}
	}
}

// TestEveryRoleRunsTheStepsItsDescriptorNames: the first-boot steps a
// role's units run are the ones its descriptor lists (and package
// firstboot checks it implements each).
func TestEveryRoleRunsTheStepsItsDescriptorNames(t *testing.T) {
	for _, machine := range []string{"etcd-1", "master-1", "minion-1", "minion-2"} {
		cfg := labConfig(t, machine)
		dir := configureLab(t, machine)
		units, _ := filepath.Glob(filepath.Join(dir, UnitDir, "*.service"))
		var steps []string
		for _, u := range units {
			b, err := os.ReadFile(u)
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(string(b), "\n") {
				k, v, _ := strings.Cut(line, "=")
				if f := strings.Fields(v); strings.HasPrefix(k, "Exec") && len(f) > 1 && strings.TrimLeft(f[0], "-+!@") == AgentPath {
					steps = append(steps, f[1])
				}
			}
		}
		slices.Sort(steps)
		want := slices.Clone(roles.Get(cfg.Role).Steps)
		if cfg.State != nil {
			want = append(want, "state-disk") // every role that keeps state, with a state disk
		}
		slices.Sort(want)
		if !slices.Equal(slices.Compact(steps), want) {
			t.Errorf("%s (%s): units run the steps %v, the descriptor lists %v", machine, cfg.Role, steps, want)
		}
	}
}

// TestEveryUnitARoleWritesIsPulledIn: a unit nothing enables, requires or
// wants never runs; the minion's image import once sat there while
// kubelet went to a registry for its pause image.
func TestEveryUnitARoleWritesIsPulledIn(t *testing.T) {
	for _, machine := range []string{"etcd-1", "master-1", "minion-1", "minion-2"} {
		t.Run(machine, func(t *testing.T) {
			dir := configureLab(t, machine)
			pulled := map[string]bool{}
			sys := filepath.Join(dir, UnitDir)
			err := filepath.WalkDir(sys, func(p string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				if strings.HasSuffix(filepath.Dir(p), ".wants") {
					pulled[d.Name()] = true
					return nil
				}
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				for _, line := range strings.Split(string(b), "\n") {
					k, v, ok := strings.Cut(line, "=")
					if ok && (k == "Requires" || k == "Wants" || k == "BindsTo") {
						for _, u := range strings.Fields(v) {
							pulled[u] = true
						}
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			units, _ := filepath.Glob(filepath.Join(sys, "*.service"))
			if len(units) == 0 {
				t.Fatal("the role wrote no units")
			}
			for _, u := range units {
				if name := filepath.Base(u); !pulled[name] {
					t.Errorf("%s: nothing enables, requires or wants it", name)
				}
			}
		})
	}
}

// TestEtcdJoinLooksAtMountedData: etcd-join decides from the data
// directory, so it runs after that directory's mount (on a power cut, the
// directory under the mount is empty and the member would wait for data
// it holds).
func TestEtcdJoinLooksAtMountedData(t *testing.T) {
	for _, machine := range []string{"etcd-1", "etcd-2"} {
		dir := configureLab(t, machine)
		b, err := os.ReadFile(filepath.Join(dir, UnitDir, "plinth-etcd-join.service"))
		if err != nil {
			t.Fatal(err)
		}
		var after, requires bool
		for _, l := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(l, "=")
			has := slices.Contains(strings.Fields(v), MountUnit(EtcdDataDir))
			after = after || k == "After" && has
			requires = requires || k == "Requires" && has
		}
		if !after || !requires {
			t.Errorf("%s: plinth-etcd-join.service does not require and follow %s:\n%s", machine, MountUnit(EtcdDataDir), b)
		}
	}
}
