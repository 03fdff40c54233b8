package profiles

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/internal/testutil"
	"github.com/plinth-dev/plinth/internal/tomlx"
	"github.com/plinth-dev/plinth/roles"
)

func writeSite(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func mustLoad(t *testing.T, dir string) *Site {
	t.Helper()
	s, err := LoadSite(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestLoadSiteReportsEveryProblemOfABadSite loads each testdata/bad/<case>
// directory and compares the whole report, one `file:line:col: field: msg`
// a line, with testdata/bad/<case>.golden.
func TestLoadSiteReportsEveryProblemOfABadSite(t *testing.T) {
	entries, err := os.ReadDir("testdata/bad")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join("testdata/bad", e.Name())
		t.Run(filepath.Base(dir), func(t *testing.T) {
			_, err := LoadSite(dir)
			if err == nil {
				t.Fatal("accepted")
			}
			var rep *tomlx.Report
			if !errors.As(err, &rep) {
				t.Fatalf("error %T is not a *tomlx.Report: %v", err, err)
			}
			for _, p := range rep.Problems {
				// Only a problem of the directory itself has no position.
				if p.Line == 0 && p.File != dir {
					t.Errorf("problem without a position: %s", p)
				}
			}
			testutil.Golden(t, dir+".golden", []byte(err.Error()+"\n"))
		})
	}
}

func TestLoadSiteRefusesADirectoryWithoutTOMLFiles(t *testing.T) {
	for _, dir := range []string{t.TempDir(), filepath.Join(t.TempDir(), "absent")} {
		if _, err := LoadSite(dir); err == nil {
			t.Errorf("LoadSite(%s) accepted", dir)
		}
	}
}

func TestExamplesLoad(t *testing.T) {
	for _, tc := range []struct {
		dir      string
		name     string
		machines int
	}{
		{"examples/qemu-lab", "lab", 7},
		{"examples/rack", "dc1-r07", 9},
		{"examples/demo", "demo", 3},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			s := mustLoad(t, tc.dir)
			if s.Name != tc.name || len(s.Machines) != tc.machines {
				t.Errorf("site %q with %d machines, want %q with %d", s.Name, len(s.Machines), tc.name, tc.machines)
			}
		})
	}
}

func TestLoadSiteAppliesDefaultsAndNormalises(t *testing.T) {
	s := mustLoad(t, writeSite(t, map[string]string{"a.toml": `
[site]
name = "s"
[[machine]]
name = "m1"
mac = "52-54-00-AA-BB-CC"
uuid = "4C4C4544-0051-3510-8052-B4C04F473432"
image = "x"
`}))
	if s.Enrolment != "none" || s.Network.Backend != "vxlan" || s.Default.Action != "refuse" || s.DHCP.Mode != "off" || s.DHCP.Lease != "1h" {
		t.Errorf("defaults not applied: %+v", s)
	}
	m := s.Machine("m1")
	if m == nil || m.Hostname != "m1" || m.MAC != "52:54:00:aa:bb:cc" || m.UUID != "4c4c4544-0051-3510-8052-b4c04f473432" || filepath.Base(m.File) != "a.toml" {
		t.Errorf("machine %+v", m)
	}
	if s.Machine("m2") != nil {
		t.Error("Machine(m2) found a machine that does not exist")
	}
}

func TestLoadSiteMergesMachinesOfEveryFile(t *testing.T) {
	s := mustLoad(t, writeSite(t, map[string]string{
		"00-site.toml": "[site]\nname = \"s\"\n[network]\ndns = [\"10.0.0.53\"]\n",
		"b.toml":       "[[machine]]\nname = \"b\"\nmac = \"52:54:00:00:00:02\"\nimage = \"x\"\n",
		"a.toml":       "[[machine]]\nname = \"a\"\nmac = \"52:54:00:00:00:01\"\nimage = \"x\"\n[dhcp]\nmode = \"proxy\"\n",
	}))
	var names []string
	for _, m := range s.Machines {
		names = append(names, m.Name)
	}
	if !reflect.DeepEqual(names, []string{"a", "b"}) || s.DHCP.Mode != "proxy" || len(s.Network.DNS) != 1 {
		t.Errorf("machines %v, dhcp %+v, network %+v", names, s.DHCP, s.Network)
	}
}

const matchSite = `
[site]
name = "s"
[default]
action = "boot"
image = "minion"
role = "minion"
[[machine]]
name = "by-mac"
mac = "52-54-00-AA-BB-CC"
image = "x"
[[machine]]
name = "by-uuid"
uuid = "0F0E0D0C-0000-0000-0000-000000000001"
image = "x"
[[machine]]
name = "rack"
labels = { rack = "r1" }
image = "x"
[[machine]]
name = "rack-slot"
labels = { rack = "r1", slot = "3" }
image = "x"
[[machine]]
name = "zz-row"
labels = { row = "a" }
image = "x"
[[machine]]
name = "aa-room"
labels = { room = "1" }
image = "x"
`

func TestMatchPrefersMACThenUUIDThenMostLabelsThenDefault(t *testing.T) {
	s := mustLoad(t, writeSite(t, map[string]string{"a.toml": matchSite}))
	for _, tc := range []struct {
		name, mac, uuid string
		labels          map[string]string
		want            string
	}{
		{"MAC beats UUID and labels", "52:54:00:aa:bb:cc", "0f0e0d0c-0000-0000-0000-000000000001", map[string]string{"rack": "r1"}, "by-mac"},
		{"MAC with dashes and upper case", "52-54-00-AA-BB-CC", "", nil, "by-mac"},
		{"UUID in upper case beats labels", "52:54:00:00:00:01", "0F0E0D0C-0000-0000-0000-000000000001", map[string]string{"rack": "r1"}, "by-uuid"},
		{"more labels win", "52:54:00:00:00:01", "", map[string]string{"rack": "r1", "slot": "3"}, "rack-slot"},
		{"all of a machine's labels must match", "52:54:00:00:00:01", "", map[string]string{"rack": "r1", "slot": "4"}, "rack"},
		{"equal label counts go to the first name", "52:54:00:00:00:01", "", map[string]string{"row": "a", "room": "1"}, "aa-room"},
		{"unknown gets the default named by MAC", "52:54:00:00:01:01", "", map[string]string{"rack": "r2"}, "m-525400000101"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := s.Match(tc.mac, tc.uuid, tc.labels)
			if err != nil || m.Name != tc.want {
				t.Fatalf("Match(%s, %s, %v) = %v, %v; want %s", tc.mac, tc.uuid, tc.labels, m, err, tc.want)
			}
		})
	}
}

func TestMatchDefaultMachineCarriesTheDefaultImageAndRole(t *testing.T) {
	s := mustLoad(t, writeSite(t, map[string]string{"a.toml": matchSite}))
	m, err := s.Match("52-54-00-00-01-01", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Machine{Name: "m-525400000101", Hostname: "m-525400000101", MAC: "52:54:00:00:01:01", Role: "minion", Image: "minion"}
	if !reflect.DeepEqual(*m, want) {
		t.Errorf("default machine %+v, want %+v", *m, want)
	}
	if s.Machine(m.Name) != nil {
		t.Error("the synthesised machine became part of the site")
	}
}

func TestMatchRefuses(t *testing.T) {
	refusing := mustLoad(t, writeSite(t, map[string]string{"a.toml": "[site]\nname = \"s\"\n[[machine]]\nname = \"m\"\nlabels = { rack = \"1\" }\nimage = \"x\"\n"}))
	booting := mustLoad(t, writeSite(t, map[string]string{"a.toml": matchSite}))
	for _, tc := range []struct {
		name      string
		s         *Site
		mac, uuid string
	}{
		{"unknown machine when the default refuses", refusing, "52:54:00:00:00:01", ""},
		{"labels of nobody's", refusing, "52:54:00:00:00:01", ""},
		{"no MAC to name a default machine by", booting, "", "0f0e0d0c-0000-0000-0000-0000000000ff"},
		{"a MAC that is not six bytes", booting, "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", ""},
		{"garbage", booting, "zz", "zz"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := tc.s.Match(tc.mac, tc.uuid, map[string]string{"rack": "2"})
			if !errors.Is(err, ErrUnknownMachine) {
				t.Fatalf("Match = %v, %v; want ErrUnknownMachine", m, err)
			}
		})
	}
}

// TestRenderGolden renders every machine of the examples, and a default
// machine of the rack, and compares the JSON with testdata/render/.
func TestRenderGolden(t *testing.T) {
	for _, ex := range []string{"qemu-lab", "rack"} {
		s := mustLoad(t, filepath.Join("examples", ex))
		machines := s.Machines
		if m, err := s.Match("52:54:00:99:00:01", "", nil); err == nil {
			machines = append(machines, m)
		}
		for _, m := range machines {
			t.Run(ex+"/"+m.Name, func(t *testing.T) {
				c, err := s.Render(m, "http://10.77.0.1:8080")
				if err != nil {
					t.Fatal(err)
				}
				got, err := json.MarshalIndent(c, "", "  ")
				if err != nil {
					t.Fatal(err)
				}
				testutil.Golden(t, filepath.Join("testdata", "render", ex, m.Name+".json"), append(got, '\n'))
			})
		}
	}
}

func TestRenderLeavesTheSiteUnchanged(t *testing.T) {
	s := mustLoad(t, "examples/rack")
	before, _ := json.Marshal(s)
	m := s.Machine("etcd-a")
	c, err := s.Render(m, "")
	if err != nil {
		t.Fatal(err)
	}
	c.Network.DNS[0] = "192.0.2.1"
	c.Cluster.EtcdMembers[0].Name = "changed"
	if after, _ := json.Marshal(s); !bytes.Equal(before, after) {
		t.Error("rendering or changing its result changed the site")
	}
	if _, err := s.Render(nil, ""); err == nil {
		t.Error("Render(nil) succeeded")
	}
}

func TestDigestChangesWithTheFiles(t *testing.T) {
	dir := writeSite(t, map[string]string{"a.toml": "[site]\nname = \"s\"\n"})
	d1 := mustLoad(t, dir).Digest()
	if d2 := mustLoad(t, dir).Digest(); d1 != d2 || !strings.HasPrefix(d1, "sha256:") {
		t.Fatalf("digests %s, %s of unchanged files", d1, d2)
	}
	for _, change := range []func(){
		func() { os.WriteFile(filepath.Join(dir, "a.toml"), []byte("[site]\nname = \"t\"\n"), 0o644) },
		func() { os.WriteFile(filepath.Join(dir, "b.toml"), []byte("# empty\n"), 0o644) },
		func() { os.Rename(filepath.Join(dir, "b.toml"), filepath.Join(dir, "c.toml")) },
		func() { os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("x"), 0o644) }, // not part of the site
	} {
		change()
		d2 := mustLoad(t, dir).Digest()
		if _, err := os.Stat(filepath.Join(dir, "notes.txt")); err == nil {
			if d2 != d1 {
				t.Errorf("a file that is not *.toml changed the digest")
			}
		} else if d2 == d1 {
			t.Errorf("digest unchanged after a change of the files")
		}
		d1 = d2
	}
}

// FuzzLoadSiteFile loads arbitrary bytes as a one-file site: it must not
// panic, and an accepted site must render every machine, find each machine
// by its MAC, UUID or labels, and load again to the same digest.
func FuzzLoadSiteFile(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/bad/*/*.toml")
	examples, _ := filepath.Glob("examples/*/*.toml")
	for _, p := range append(seeds, examples...) {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("[site]\nname=\"x\"\n[[machine]]\nname=\"a\"\nlabels={r=\"1\"}\nimage=\"i\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "s.toml"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := LoadSite(dir)
		if err != nil {
			var rep *tomlx.Report
			if !errors.As(err, &rep) {
				t.Fatalf("error is not a report: %v", err)
			}
			return
		}
		for _, m := range s.Machines {
			if _, err := s.Render(m, ""); err != nil {
				t.Fatalf("accepted machine %s does not render: %v", m.Name, err)
			}
			var labels map[string]string
			if m.MAC == "" && m.UUID == "" {
				labels = m.Labels
			}
			if got, err := s.Match(m.MAC, m.UUID, labels); err != nil || got != m {
				t.Fatalf("Match finds %v, %v for machine %s", got, err, m.Name)
			}
		}
		again, err := LoadSite(dir)
		if err != nil || again.Digest() != s.Digest() {
			t.Fatalf("second load: %v", err)
		}
	})
}

func TestRenderEtcdMembersSortedAndAddressed(t *testing.T) {
	s := mustLoad(t, writeSite(t, map[string]string{"a.toml": `
[site]
name = "s"
domain = "lab.example"
[network]
dns = ["10.0.0.53"]
[[machine]]
name = "etcd-b"
mac = "52:54:00:00:00:02"
role = "etcd"
image = "etcd"
[[machine]]
name = "etcd-a"
mac = "52:54:00:00:00:01"
role = "etcd"
image = "etcd"
address = "10.0.0.11/24"
[[machine]]
name = "w"
mac = "52:54:00:00:00:03"
image = "minion"
`}))
	for _, tc := range []struct {
		machine string
		network string // JSON of the rendered network
	}{
		{"etcd-a", `{"address":"10.0.0.11/24","dns":["10.0.0.53"]}`},
		{"etcd-b", `null`},
		{"w", `null`},
	} {
		t.Run(tc.machine, func(t *testing.T) {
			c, err := s.Render(s.Machine(tc.machine), "")
			if err != nil {
				t.Fatal(err)
			}
			members, _ := json.Marshal(c.Cluster.EtcdMembers)
			if want := `[{"name":"etcd-a","address":"10.0.0.11"},{"name":"etcd-b","address":"etcd-b.lab.example"}]`; string(members) != want {
				t.Errorf("members %s, want %s", members, want)
			}
			if network, _ := json.Marshal(c.Network); string(network) != tc.network {
				t.Errorf("network %s, want %s", network, tc.network)
			}
		})
	}
}

// TestARegisteredRoleIsOneDescriptorAway: a role added with roles.Register
// loads in a site, renders with what its descriptor says (here an etcd
// member outside Kubernetes), and nothing else needs to list it.
func TestARegisteredRoleIsOneDescriptorAway(t *testing.T) {
	remove, err := roles.Register(roles.Role{Name: "witness", Group: roles.GroupStore, Services: []string{"etcd.service"}, EtcdMember: true})
	if err != nil {
		t.Fatal(err)
	}
	defer remove()
	dir := writeSite(t, map[string]string{"a.toml": `
[site]
name = "s"
[[machine]]
name = "etcd-1"
mac = "52:54:00:00:00:01"
role = "etcd"
image = "etcd"
[[machine]]
name = "w-1"
mac = "52:54:00:00:00:02"
role = "witness"
image = "witness"
`})
	s := mustLoad(t, dir)
	c, err := s.Render(s.Machine("w-1"), "")
	if err != nil {
		t.Fatal(err)
	}
	members, _ := json.Marshal(c.Cluster.EtcdMembers)
	if c.Role != "witness" || c.Cluster.ServiceCIDR != "" || string(members) != `[{"name":"etcd-1","address":"etcd-1"},{"name":"w-1","address":"w-1"}]` {
		t.Errorf("rendered role %q, service CIDR %q, members %s", c.Role, c.Cluster.ServiceCIDR, members)
	}
	remove()
	if _, err := LoadSite(dir); err == nil || !strings.Contains(err.Error(), `machine[1].role: unknown role "witness"`) {
		t.Errorf("after the role is removed: %v", err)
	}
}

// Enrolment defaults to token for a site whose machines get certificates
// (any role, on a machine or on what [default] boots), none for one
// without; what the site says stands.
func TestEnrolmentIsTokenByDefaultForASiteWithRoles(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"[[machine]]\nname = \"m1\"\nmac = \"52:54:00:00:00:01\"\nimage = \"x\"\n", "none"},
		{"[[machine]]\nname = \"m1\"\nmac = \"52:54:00:00:00:01\"\nimage = \"x\"\nrole = \"minion\"\n", "token"},
		{"[default]\naction = \"boot\"\nimage = \"x\"\nrole = \"minion\"\n", "token"},
	} {
		s := mustLoad(t, writeSite(t, map[string]string{"site.toml": "[site]\nname = \"s\"\n" + tc.body}))
		if s.Enrolment != tc.want {
			t.Errorf("%s: enrolment %q, want %q", tc.body, s.Enrolment, tc.want)
		}
		s = mustLoad(t, writeSite(t, map[string]string{"site.toml": "[site]\nname = \"s\"\nenrolment = \"none\"\n" + tc.body}))
		if s.Enrolment != "none" {
			t.Errorf("%s with enrolment none: %q", tc.body, s.Enrolment)
		}
	}
}
