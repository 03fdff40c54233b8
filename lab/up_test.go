package lab

import (
	"fmt"
	"testing"

	"github.com/plinth-dev/plinth/profiles"
)

// TestBootGroupsStartEtcdThenMastersThenTheRest: qemu up starts a site as
// an operator brings up a rack, and skips machines whose image is missing.
func TestBootGroupsStartEtcdThenMastersThenTheRest(t *testing.T) {
	var ms []*profiles.Machine
	for _, m := range [][2]string{{"minion-1", "minion"}, {"plain", ""}, {"master-1", "master"}, {"etcd-2", "etcd"}, {"etcd-1", "etcd"}, {"unbuilt", "etcd"}} {
		ms = append(ms, &profiles.Machine{Name: m[0], Role: m[1]})
	}
	groups := BootGroups(ms, func(m *profiles.Machine) bool { return m.Name != "unbuilt" })
	got := fmt.Sprint(names(groups))
	if want := "[[etcd-2 etcd-1] [master-1] [minion-1 plain]]"; got != want {
		t.Errorf("groups %s, want %s", got, want)
	}
	if g := BootGroups(ms[:2], func(*profiles.Machine) bool { return true }); len(g) != 1 {
		t.Errorf("a site with no etcd or master boots in %d groups, want 1", len(g))
	}
}

func names(groups [][]*profiles.Machine) [][]string {
	var out [][]string
	for _, g := range groups {
		var n []string
		for _, m := range g {
			n = append(n, m.Name)
		}
		out = append(out, n)
	}
	return out
}
