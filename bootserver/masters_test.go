package bootserver

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
)

type sinkFunc func(string, []netip.Addr)

func (f sinkFunc) ReadyMasters(name string, addrs []netip.Addr) { f(name, addrs) }

func TestMasterSinkFollowsReadyMastersOnly(t *testing.T) {
	s, _ := fixture(t, "none")
	type call struct {
		name  string
		addrs []netip.Addr
	}
	var calls []call
	s.cfg.Masters = sinkFunc(func(name string, a []netip.Addr) { calls = append(calls, call{name, a}) })
	post := func(machine, stage, from string) {
		t.Helper()
		b, _ := json.Marshal(api.Event{Machine: machine, Stage: stage})
		r := httptest.NewRequest(http.MethodPost, api.PathEvents, bytes.NewReader(b))
		r.RemoteAddr = from + ":1234"
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, r)
		if w.Code != http.StatusNoContent {
			t.Fatalf("event: %d", w.Code)
		}
	}
	master := []netip.Addr{netip.MustParseAddr("10.77.0.12")}
	post("node-2", api.StageInit, "10.77.0.12")   // a master not ready yet: empty set, sent once
	post("node-1", api.StageReady, "10.77.0.100") // a minion: no change
	post("node-2", api.StageReady, "10.77.0.12")  // ready: in
	post("node-2", api.StageReady, "10.77.0.12")  // again: no change
	post("node-2", api.StageError, "10.77.0.12")  // failed: out
	want := []call{{"api.lab.example", nil}, {"api.lab.example", master}, {"api.lab.example", nil}}
	if !slices.EqualFunc(calls, want, func(a, b call) bool { return a.name == b.name && slices.Equal(a.addrs, b.addrs) }) {
		t.Errorf("sink got %v, want %v", calls, want)
	}
	if got := s.ReadyMasters(); len(got) != 0 {
		t.Errorf("ReadyMasters after an error = %v", got)
	}
}

type namesSink struct {
	masters []netip.Addr
	domain  string
	hosts   map[string]netip.Addr
}

func (n *namesSink) ReadyMasters(_ string, a []netip.Addr)   { n.masters = a }
func (n *namesSink) Hosts(d string, h map[string]netip.Addr) { n.domain, n.hosts = d, h }

func TestSilentMasterLeavesAfterItsTTLAndHostsFollowAddresses(t *testing.T) {
	s, _ := fixture(t, "none")
	sink := &namesSink{}
	s.cfg.Masters = sink
	s.cfg.MasterTTL = time.Hour
	b, _ := json.Marshal(api.Event{Machine: "node-2", Stage: api.StageReady})
	r := httptest.NewRequest(http.MethodPost, api.PathEvents, bytes.NewReader(b))
	r.RemoteAddr = "10.77.0.12:1234"
	s.Handler().ServeHTTP(httptest.NewRecorder(), r)
	if want := []netip.Addr{netip.MustParseAddr("10.77.0.12")}; !slices.Equal(sink.masters, want) {
		t.Fatalf("ready master: sink has %v, want %v", sink.masters, want)
	}
	// node-1 is on DHCP: its host name follows the address it asks from.
	getFrom(s.Handler(), "10.77.0.150", api.ProfilePath("node-1"))
	want := map[string]netip.Addr{"node-1": netip.MustParseAddr("10.77.0.150"), "node-2": netip.MustParseAddr("10.77.0.12")}
	if sink.domain != "lab.example" || !maps.Equal(sink.hosts, want) {
		t.Errorf("hosts %s %v, want lab.example %v", sink.domain, sink.hosts, want)
	}
	// An hour without a heartbeat: the next tick drops it.
	s.state.update("node-2", func(st *MachineStatus) { st.LastSeen = time.Now().Add(-61 * time.Minute) })
	s.notifyMasters()
	if len(sink.masters) != 0 {
		t.Errorf("a master silent for longer than its TTL is still served: %v", sink.masters)
	}
}
