package roles

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/profiles/node"
)

// TestMachineSizeGivesTheMasterTwoVCPUsUnlessTold: the master's API server
// bootstraps on both host cores; --memory and --cpus override every role.
func TestMachineSizeGivesTheMasterTwoVCPUsUnlessTold(t *testing.T) {
	for _, tc := range []struct {
		role             string
		memory, cpus     int
		wantMem, wantCPU int
	}{
		{"master", 0, 0, 2048, 2},
		{"etcd", 0, 0, 768, 1},
		{"minion", 0, 0, 1536, 1},
		{"", 0, 0, 1024, 1},
		{"master", 4096, 1, 4096, 1},
		{"etcd", 0, 3, 768, 3},
	} {
		if mem, cpus := Get(tc.role).MachineSize(tc.memory, tc.cpus); mem != tc.wantMem || cpus != tc.wantCPU {
			t.Errorf("%q.MachineSize(%d, %d) = %d MiB, %d vCPUs; want %d, %d", tc.role, tc.memory, tc.cpus, mem, cpus, tc.wantMem, tc.wantCPU)
		}
	}
}

// TestListenPortsAreWhatEachRoleServes: the agent reports any other
// listener as a problem, so these are the ports an operator's firewall
// opens.
func TestListenPortsAreWhatEachRoleServes(t *testing.T) {
	custom := &node.Config{Cluster: &node.Cluster{APIPort: 8443}}
	for _, tc := range []struct {
		role string
		cfg  *node.Config
		want string
	}{
		{"etcd", nil, "tcp/2379 tcp/2380 udp/68"},
		{"master", nil, "tcp/6443 udp/68 udp/8472"},
		{"master", custom, "tcp/8443 udp/68 udp/8472"},
		{"minion", nil, "tcp/10250 udp/68 udp/8472"},
		{"", nil, "udp/68"},
	} {
		if got := strings.Join(Get(tc.role).ListenPorts(tc.cfg), " "); got != tc.want {
			t.Errorf("%q: %s, want %s", tc.role, got, tc.want)
		}
	}
}

func TestLookupRefusesAnUnknownRoleNamingTheKnownOnes(t *testing.T) {
	_, err := Lookup("worker")
	if err == nil || err.Error() != `unknown role "worker": want etcd, master, minion` {
		t.Errorf("Lookup(worker): %v", err)
	}
	if r, err := Lookup(""); err != nil || r.Name != "" || r.Group != GroupWorkers {
		t.Errorf("Lookup(\"\") = %+v, %v; want None", r, err)
	}
}

func TestNamesAreInBootOrder(t *testing.T) {
	if got := strings.Join(Names(), " "); got != "etcd master minion" {
		t.Errorf("Names() = %s", got)
	}
}

func TestRegisterChecksTheDescriptor(t *testing.T) {
	for _, tc := range []struct {
		r    Role
		want string
	}{
		{Role{Name: "etcd"}, "already registered"},
		{Role{Name: "a b"}, "not a role name"},
		{Role{Name: "x", Group: 7}, "boot group"},
		{Role{Name: "x", Listen: []Port{{Proto: "sctp", Number: 1}}}, "protocol"},
		{Role{Name: "x", Probes: []Probe{{Unit: "x.service", Scheme: "http"}}}, "not one of its services"},
		{Role{Name: "x", Services: []string{"x.service"}, Probes: []Probe{{Unit: "x.service", Scheme: "https", Client: ClientNode}}}, "gets no TLS"},
		{Role{Name: "x", Services: []string{"x.service"}, TLS: TLS{Node: true}, Probes: []Probe{{Unit: "x.service", Scheme: "https", Client: "admin"}}}, "not one of its TLS identities"},
	} {
		remove, err := Register(tc.r)
		if err == nil {
			remove()
			t.Errorf("Register(%+v) accepted", tc.r)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Register(%+v): %v, want %q", tc.r, err, tc.want)
		}
	}
	remove, err := Register(Role{Name: "storage", Group: GroupWorkers, Services: []string{"nfs.service"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(Names(), " "); got != "etcd master minion storage" {
		t.Errorf("after Register: %s", got)
	}
	remove()
	if _, err := Lookup("storage"); err == nil {
		t.Error("the removed role is still known")
	}
}

// TestImportsOnlyTheStandardLibraryAndNode keeps the descriptors usable
// from the initramfs, which must not pull in the builder's dependencies.
func TestImportsOnlyTheStandardLibraryAndNode(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if first, _, _ := strings.Cut(p, "/"); strings.Contains(first, ".") && p != "github.com/plinth-dev/plinth/profiles/node" {
				t.Errorf("%s imports %s: roles must stay standard library (and profiles/node) only", name, p)
			}
		}
	}
}

// TestEtcdUsersAreNamedAsNoMachineCanBe: etcd takes a certificate's common
// name as its user, and a machine's certificate carries its host name; an
// etcd user named like a host would be that machine's for the taking.
func TestEtcdUsersAreNamedAsNoMachineCanBe(t *testing.T) {
	var names []string
	for _, id := range EtcdUsers() {
		names = append(names, id.CommonName)
		if !strings.Contains(id.CommonName, ":") || id.CommonName == EtcdRootUser {
			t.Errorf("etcd user %q could be a machine's host name", id.CommonName)
		}
		if id.Etcd.Root == (len(id.Etcd.Prefixes) > 0) {
			t.Errorf("etcd user %s: root %v with prefixes %v", id.CommonName, id.Etcd.Root, id.Etcd.Prefixes)
		}
	}
	want := []string{"plinth:admin", "plinth:boot-server", "plinth:etcd-flannel", "plinth:etcd-kube-apiserver", "plinth:etcd-member"}
	if !slices.Equal(names, want) {
		t.Errorf("etcd users %v, want %v", names, want)
	}
}

// The stack fixtures build and bake the CoreDNS that the addons name.
func TestCoreDNSImageIsTheOneTheStackBuilds(t *testing.T) {
	b, err := os.ReadFile("../qemu-tests/fixtures/stack.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^COREDNS_VERSION=\$\{COREDNS_VERSION:-(v[0-9.]+)\}$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("stack.sh sets no COREDNS_VERSION")
	}
	if want := "registry.k8s.io/coredns/coredns:" + string(m[1]); CoreDNSImage != want {
		t.Errorf("CoreDNSImage is %s; stack.sh bakes %s", CoreDNSImage, want)
	}
}

func TestClusterDNSIP(t *testing.T) {
	for cidr, want := range map[string]string{"10.96.0.0/12": "10.96.0.10", "10.32.5.0/24": "10.32.5.10", "10.0.0.0/28": "10.0.0.10"} {
		if got, err := ClusterDNSIP(cidr); err != nil || got.String() != want {
			t.Errorf("ClusterDNSIP(%s) = %v, %v; want %s", cidr, got, err, want)
		}
	}
	for _, bad := range []string{"10.0.0.0/29", "nonsense", ""} {
		if got, err := ClusterDNSIP(bad); err == nil {
			t.Errorf("ClusterDNSIP(%q) = %v, want an error", bad, got)
		}
	}
}
