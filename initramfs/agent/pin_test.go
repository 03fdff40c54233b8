package agent

import (
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/bootserver/api"
)

const stage1Hosts = "127.0.0.1\tlocalhost\n127.0.1.1\tnode-1.lab.example\n::1\tlocalhost ip6-localhost ip6-loopback\n"

func TestThePoolIsPinnedReplacedAndRemovedKeepingTheRestOfHosts(t *testing.T) {
	pool := api.APIPool{Name: "api.lab.example", Addrs: []string{"10.77.0.22", "10.77.0.21", "10.77.0.21"}}
	b, err := PinHosts([]byte(stage1Hosts), pool, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	if !strings.HasPrefix(got, stage1Hosts) || strings.Count(got, "api.lab.example") != 2 ||
		!strings.Contains(got, "10.77.0.21\tapi.lab.example\n") || !strings.Contains(got, "10.77.0.22\tapi.lab.example\n") {
		t.Fatalf("pinned:\n%s", got)
	}
	if got := PinnedAddrs(b); len(got) != 2 || got[0] == got[1] {
		t.Errorf("PinnedAddrs = %v", got)
	}
	// Pinning again with one server left replaces the block, not adds one.
	b, err = PinHosts(b, api.APIPool{Name: "api.lab.example", Addrs: []string{"10.77.0.22"}}, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(b); strings.Count(got, pinBegin) != 1 || strings.Contains(got, "10.77.0.21") || !strings.Contains(got, "10.77.0.22\tapi.lab.example") {
		t.Fatalf("re-pinned:\n%s", got)
	}
	// An empty pool gives the name back to DNS: the file is as stage 1 wrote it.
	b, err = PinHosts(b, api.APIPool{Name: "api.lab.example"}, "node-1")
	if err != nil || string(b) != stage1Hosts {
		t.Fatalf("unpinned (%v):\n%s", err, b)
	}
}

func TestNodesStartWithDifferentAPIServers(t *testing.T) {
	pool := api.APIPool{Name: "api.lab.example", Addrs: []string{"10.77.0.21", "10.77.0.22"}}
	first := map[string]bool{}
	for _, m := range []string{"minion-1", "minion-2", "minion-3", "minion-4", "minion-5", "minion-6"} {
		b, err := PinHosts(nil, pool, m)
		if err != nil {
			t.Fatal(err)
		}
		_, block, _ := strings.Cut(string(b), pinBegin+"\n")
		first[strings.Fields(block)[0]] = true
	}
	if len(first) != 2 {
		t.Errorf("six nodes all start with %v", first)
	}
}

func TestABadPoolIsRefusedNotWritten(t *testing.T) {
	for _, pool := range []api.APIPool{
		{Name: "api.lab.example", Addrs: []string{"not-an-address"}},
		{Name: "api lab", Addrs: []string{"10.77.0.21"}},
	} {
		if _, err := PinHosts([]byte(stage1Hosts), pool, "node-1"); err == nil {
			t.Errorf("pinned %+v", pool)
		}
	}
	if _, err := PinHosts([]byte(stage1Hosts+pinBegin+"\n10.0.0.1 x\n"), api.APIPool{}, "n"); err == nil {
		t.Error("a block without its end marker was rewritten")
	}
}
