package profiles

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
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

func TestExampleLabLoads(t *testing.T) {
	s, err := LoadSite("examples/qemu-lab")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Machines) != 6 || s.Name != "lab" {
		t.Fatalf("site %q with %d machines", s.Name, len(s.Machines))
	}
	c, err := s.Render(s.Machine("minion-1"), "http://10.77.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Cluster.EtcdMembers) != 3 || c.Cluster.EtcdMembers[0].Address != "10.77.0.11" || c.Cluster.BootServer != "http://10.77.0.1:8080" {
		t.Errorf("rendered cluster %+v", c.Cluster)
	}
}

func TestMatchPrefersMACThenUUIDThenMostLabels(t *testing.T) {
	dir := writeSite(t, map[string]string{"a.toml": `
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
`})
	s, err := LoadSite(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mac, uuid string
		labels    map[string]string
		want      string
	}{
		{"52:54:00:aa:bb:cc", "0f0e0d0c-0000-0000-0000-000000000001", nil, "by-mac"},
		{"52:54:00:00:00:01", "0F0E0D0C-0000-0000-0000-000000000001", nil, "by-uuid"},
		{"52:54:00:00:00:01", "", map[string]string{"rack": "r1", "slot": "3"}, "rack-slot"},
		{"52:54:00:00:00:01", "", map[string]string{"rack": "r1", "slot": "4"}, "rack"},
		{"52:54:00:00:00:01", "", nil, "m-525400000001"},
	} {
		m, err := s.Match(tc.mac, tc.uuid, tc.labels)
		if err != nil || m.Name != tc.want {
			t.Errorf("Match(%s, %s, %v) = %v, %v; want %s", tc.mac, tc.uuid, tc.labels, m, err, tc.want)
		}
	}
}

func TestMatchRefusesUnknownMachineByDefault(t *testing.T) {
	s, err := LoadSite(writeSite(t, map[string]string{"a.toml": "[site]\nname = \"s\"\n"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Match("52:54:00:00:00:01", "", nil); !errors.Is(err, ErrUnknownMachine) {
		t.Fatalf("err = %v, want ErrUnknownMachine", err)
	}
}

func TestLoadSiteReportsEveryProblemAcrossFiles(t *testing.T) {
	dir := writeSite(t, map[string]string{
		"a.toml": "[site]\nname = \"s\"\nenrolment = \"maybe\"\n[[machine]]\nname = \"m1\"\nmac = \"52:54:00:00:00:01\"\nimage = \"x\"\n",
		"b.toml": "[site]\nname = \"t\"\n[[machine]]\nname = \"m2\"\nmac = \"52:54:00:00:00:01\"\nimage = \"x\"\naddress = \"10.0.0.1\"\ncolour = \"red\"\n[[machine]]\nname = \"m3\"\nimage = \"x\"\n",
	})
	_, err := LoadSite(dir)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		"a.toml:3:1: site.enrolment: \"maybe\": want none or token",
		"b.toml:1:1: site: [site] is already set in",
		"b.toml:7:1: machine[0].address: \"10.0.0.1\": want an address with its prefix length",
		"b.toml:8:1: machine[0].colour: unknown key",
		"b.toml:9:1: machine[1]: a machine needs a mac, a uuid or labels",
		"MAC 52:54:00:00:00:01 of \"m2\" is also machine \"m1\"'s",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}

func FuzzLoadSiteFile(f *testing.F) {
	seed, _ := os.ReadFile("examples/qemu-lab/site.toml")
	f.Add(seed)
	f.Add([]byte("[site]\nname=\"x\"\n[[machine]]\nname=\"a\"\nlabels={r=\"1\"}\nimage=\"i\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "s.toml"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := LoadSite(dir)
		if err != nil {
			return
		}
		for _, m := range s.Machines {
			if _, err := s.Render(m, ""); err != nil {
				t.Fatalf("accepted machine %s does not render: %v", m.Name, err)
			}
		}
	})
}
