package bootserver

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"testing"

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
