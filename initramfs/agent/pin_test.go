package agent

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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

// A pinned API server that stopped answering goes behind those that
// answer, and comes back first when it answers again; nothing else in
// the file moves, and none is dropped.
func TestAPIServersThatDoNotAnswerGoLast(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	// 127.0.0.2 is loopback too, with nothing listening on port: its
	// connections are refused, as a dead master's time out.
	pool := api.APIPool{Name: "api.lab.example", Addrs: []string{"127.0.0.1", "127.0.0.2"}}
	machine := ""
	for _, m := range []string{"a", "b", "c", "d", "e", "f"} {
		b, _ := PinHosts(nil, pool, m)
		if PinnedAddrs(b)[0] == "127.0.0.2" {
			machine = m
			break
		}
	}
	if machine == "" {
		t.Fatal("no machine name starts with the second address")
	}
	b, err := PinHosts([]byte(stage1Hosts+"# after\n"), pool, machine)
	if err != nil {
		t.Fatal(err)
	}
	hosts := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hosts, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var did string
	check := func(want ...string) {
		t.Helper()
		var err error
		if did, err = preferLiveAPI(t.Context(), hosts, port); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(hosts)
		if !slices.Equal(PinnedAddrs(got), want) || !strings.HasPrefix(string(got), stage1Hosts) || !strings.HasSuffix(string(got), pinEnd+"\n") {
			t.Fatalf("hosts (want %v first):\n%s", want, got)
		}
		if c := strings.Count(string(got), "# after\n"); c != 1 {
			t.Fatalf("a line outside the block appears %d times:\n%s", c, got)
		}
	}
	check("127.0.0.1", "127.0.0.2")
	if want := fmt.Sprintf("pinned order now 127.0.0.1 127.0.0.2 (no answer on port %d from 127.0.0.2)", port); did != want {
		t.Errorf("the agent would log %q, want %q", did, want)
	}

	// Both up: the order the boot server's pin gave is kept.
	ln2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	if err := os.WriteFile(hosts, b, 0o644); err != nil {
		t.Fatal(err)
	}
	check("127.0.0.2", "127.0.0.1")
	// The first stops answering: it goes last.
	ln2.Close()
	check("127.0.0.1", "127.0.0.2")
	// None answers: left as it is.
	ln.Close()
	check("127.0.0.1", "127.0.0.2")
}
