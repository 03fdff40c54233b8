package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/manifest"
)

// TestValidateWithArtifactsChecksEachMachinesImageAndRole: what an
// operator runs before serving a site; each problem at its line.
func TestValidateWithArtifactsChecksEachMachinesImageAndRole(t *testing.T) {
	dir := t.TempDir()
	site := filepath.Join(dir, "site")
	os.MkdirAll(site, 0o755)
	os.WriteFile(filepath.Join(site, "site.toml"), []byte(`[site]
name = "lab"

[default]
action = "boot"
image = "minion"
role = "master"

[[machine]]
name = "etcd-1"
mac = "52:54:00:00:00:01"
role = "etcd"
image = "etcd"

[[machine]]
name = "master-1"
mac = "52:54:00:00:00:02"
role = "master"
image = "minion"

[[machine]]
name = "minion-1"
mac = "52:54:00:00:00:03"
role = "minion"
image = "minion-v2"
`), 0o644)
	art := filepath.Join(dir, "artifacts")
	for name, role := range map[string]string{"etcd": "etcd", "minion": "minion"} {
		os.MkdirAll(filepath.Join(art, name), 0o755)
		b, _ := (&manifest.Manifest{Schema: manifest.Schema, Name: name, Role: role}).Encode()
		os.WriteFile(filepath.Join(art, name, manifest.FileName), b, 0o644)
	}
	var warn strings.Builder
	if _, err := validateOne(site, "", false, &warn); err != nil {
		t.Fatalf("without --artifacts: %v", err)
	}
	// The etcd member has no state disk: valid, and said.
	if w := warn.String(); !strings.Contains(w, "(etcd): no state disk: what it keeps (/var/lib/etcd) is in RAM, lost at every reboot") {
		t.Errorf("warnings %q", w)
	}
	_, err := validateOne(site, art, false, io.Discard)
	want := site + `/site.toml:7:1: default.role: role "master", but image "minion" was built for role "minion"
` + site + `/site.toml:18:1: machine[1].role: role "master", but image "minion" was built for role "minion"
` + site + `/site.toml:25:1: machine[2].image: image "minion-v2" is not built`
	if err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
}
