package role

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/plinth-dev/plinth/internal/testutil"
	"github.com/plinth-dev/plinth/profiles/node"
)

func TestRegistryMapsTheEmptyRoleToNoneAndNamesWhatItHas(t *testing.T) {
	r := Builtin()
	for _, name := range []string{"", "none"} {
		c, err := r.Lookup(name)
		if err != nil || c.Name() != "none" {
			t.Errorf("Lookup(%q) = %v, %v", name, c, err)
		}
	}
	_, err := r.Lookup("storage")
	if err == nil || !strings.Contains(err.Error(), `role "storage"`) || !strings.Contains(err.Error(), "[etcd master minion none]") {
		t.Errorf("Lookup(storage) err = %v", err)
	}
}

func TestNoneWritesNothing(t *testing.T) {
	dir := t.TempDir()
	if err := (None{}).Configure(context.Background(), DirRoot(dir), &node.Config{Hostname: "a"}); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("none wrote %v", ents)
	}
}

func TestDirRootWritesWithTheAskedModeAndReplacesSymlinks(t *testing.T) {
	dir := t.TempDir()
	r := DirRoot(dir)
	outside := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(outside, []byte("keep"), 0o644)
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	os.Symlink(outside, filepath.Join(dir, "etc", "resolv.conf"))
	if err := r.WriteFile("/etc/resolv.conf", []byte("nameserver 10.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteFile("/etc/plinth/secret", []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(outside); string(b) != "keep" {
		t.Errorf("write followed the symlink out of the root: victim now %q", b)
	}
	st, err := os.Lstat(filepath.Join(dir, "etc/resolv.conf"))
	if err != nil || !st.Mode().IsRegular() {
		t.Errorf("resolv.conf is %v, %v; want a regular file", st, err)
	}
	if st, _ := os.Stat(filepath.Join(dir, "etc/plinth/secret")); st == nil || st.Mode().Perm() != 0o600 {
		t.Errorf("secret mode %v", st)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "etc")); len(ents) != 2 {
		t.Errorf("temporary files left: %v", ents)
	}
}

func TestDirRootResolvesAbsoluteSymlinksInsideTheRoot(t *testing.T) {
	dir := t.TempDir()
	escape := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "var"), 0o755)
	os.MkdirAll(filepath.Join(dir, "run"), 0o755)
	// As in Debian: /var/run -> /run. And one aiming at the host's dir.
	os.Symlink("/run", filepath.Join(dir, "var", "run"))
	os.Symlink(escape, filepath.Join(dir, "var", "escape"))
	if err := DirRoot(dir).WriteFile("/var/run/x", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "run", "x")); err != nil {
		t.Errorf("/var/run/x did not land in the root's /run: %v", err)
	}
	_ = DirRoot(dir).WriteFile("/var/escape/y", []byte("y"), 0o644)
	if _, err := os.Stat(filepath.Join(escape, "y")); err == nil {
		t.Error("a write through an absolute symlink left the root")
	}
}

func TestDirRootRefusesRelativeAndUncleanPaths(t *testing.T) {
	for _, p := range []string{"etc/x", "/etc/../x", "/", ""} {
		if err := DirRoot(t.TempDir()).WriteFile(p, nil, 0o644); err == nil {
			t.Errorf("WriteFile(%q) accepted", p)
		}
	}
}

func TestExistsCountsDanglingSymlinks(t *testing.T) {
	dir := t.TempDir()
	r := DirRoot(dir)
	if err := r.Symlink("/nowhere", "/lib/x"); err != nil {
		t.Fatal(err)
	}
	if !r.Exists("/lib/x") || r.Exists("/lib/y") {
		t.Errorf("Exists: x=%v y=%v", r.Exists("/lib/x"), r.Exists("/lib/y"))
	}
}

func TestWriteUnitRendersAndEnables(t *testing.T) {
	dir := t.TempDir()
	err := WriteUnit(DirRoot(dir), Unit{Name: "etcd.service", WantedBy: "multi-user.target", Options: []*unit.UnitOption{
		unit.NewUnitOption("Unit", "Description", "etcd member"),
		unit.NewUnitOption("Unit", "After", "network-online.target"),
		unit.NewUnitOption("Service", "ExecStart", "/usr/local/bin/etcd --name a"),
		unit.NewUnitOption("Install", "WantedBy", "multi-user.target"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "etc/systemd/system/etcd.service"))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Golden(t, filepath.Join("testdata", "etcd.service"), b)
	if l, err := os.Readlink(filepath.Join(dir, "etc/systemd/system/multi-user.target.wants/etcd.service")); err != nil || l != "/etc/systemd/system/etcd.service" {
		t.Errorf("wants link %q, %v", l, err)
	}
}

func TestWriteUnitRefusesInjection(t *testing.T) {
	for name, u := range map[string]Unit{
		"newline in value": {Name: "x.service", Options: []*unit.UnitOption{unit.NewUnitOption("Service", "ExecStart", "/bin/true\nExecStartPre=/bin/evil")}},
		"path in name":     {Name: "../x.service"},
		"no type":          {Name: "x"},
		"bad key":          {Name: "x.service", Options: []*unit.UnitOption{unit.NewUnitOption("Service", "A=B", "c")}},
		"bad wanted by":    {Name: "x.service", WantedBy: "../../etc"},
	} {
		dir := t.TempDir()
		if err := WriteUnit(DirRoot(dir), u); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: wrote %v anyway", name, ents)
		}
	}
}

func TestWriteServicesListsOnePerLine(t *testing.T) {
	dir := t.TempDir()
	if err := WriteServices(DirRoot(dir), []string{"etcd.service", "docker.service"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "etc/plinth/services")); string(b) != "etcd.service\ndocker.service\n" {
		t.Errorf("services %q", b)
	}
	if err := WriteServices(DirRoot(dir), []string{"a b.service"}); err == nil {
		t.Error("a name with a space was accepted")
	}
}
