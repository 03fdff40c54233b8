package bootserver

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
)

func post(t *testing.T, h http.Handler, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	r := asMachine(httptest.NewRequest(http.MethodPost, path, strings.NewReader(body)), "node-1")
	r.RemoteAddr = "10.77.0.100:5555"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func event(machine, stage string) string {
	b, _ := json.Marshal(api.Event{Machine: machine, Stage: stage, Time: time.Now()})
	return string(b)
}

func TestAJournalTheMachineSentIsServedAndListed(t *testing.T) {
	s, _ := fixture(t, "none")
	h := s.Handler()
	if w := post(t, h, api.PathEvents, event("node-1", api.StageServices)); w.Code != http.StatusNoContent {
		t.Fatalf("event: %d %s", w.Code, w.Body)
	}
	if w := get(t, h, api.LogPath("node-1", "kubelet.service")); w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), "has sent no journal of kubelet.service") {
		t.Errorf("before any upload: %d %q", w.Code, w.Body)
	}
	if w := post(t, h, api.LogPath("node-1", "kubelet.service"), "line 1\nline 2\n"); w.Code != http.StatusNoContent {
		t.Fatalf("upload: %d %s", w.Code, w.Body)
	}
	// "kubelet" means kubelet.service, as systemctl reads it.
	w := get(t, h, api.LogPath("node-1", "kubelet"))
	if w.Code != http.StatusOK || w.Body.String() != "line 1\nline 2\n" || w.Header().Get(api.HeaderLogTime) == "" {
		t.Errorf("journal: %d %q %v", w.Code, w.Body, w.Header())
	}
	if st, _ := s.state.get("node-1"); len(st.Journals) != 1 || st.Journals[0] != "kubelet.service" {
		t.Errorf("status lists journals %v", st.Journals)
	}
}

func TestJournalsAreRefusedForUnknownMachinesBadNamesAndOversizedBodies(t *testing.T) {
	s, _ := fixture(t, "none")
	h := s.Handler()
	for _, tc := range []struct {
		path, body string
		code       int
	}{
		{api.LogPath("nobody", "kubelet.service"), "x", http.StatusNotFound},
		{api.LogPath("node-1", ".hidden"), "x", http.StatusBadRequest},
		{"/v1/machines/node-1/logs/a%20b", "x", http.StatusBadRequest},
		{api.LogPath("node-1", "kubelet.service"), strings.Repeat("x", api.MaxLogBytes+1), http.StatusRequestEntityTooLarge},
	} {
		if w := post(t, h, tc.path, tc.body); w.Code != tc.code {
			t.Errorf("POST %s (%d bytes): %d %s, want %d", tc.path, len(tc.body), w.Code, w.Body, tc.code)
		}
	}
	if st, _ := s.state.get("node-1"); len(st.Journals) != 0 {
		t.Errorf("a refused upload was kept: %v", st.Journals)
	}
}

func TestAnOperatorAsksForAFreshJournalThroughTheMachinesNextReport(t *testing.T) {
	s, _ := fixture(t, "none")
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	postEvent := func() api.EventReply {
		req, _ := http.NewRequest(http.MethodPost, ts.URL+api.PathEvents, strings.NewReader(event("node-1", api.StageReady)))
		resp, err := http.DefaultClient.Do(asMachine(req, "node-1"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var rep api.EventReply
		if resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
				t.Fatal(err)
			}
		} else if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("event: %s", resp.Status)
		}
		return rep
	}
	if rep := postEvent(); len(rep.Logs) != 0 {
		t.Fatalf("nobody asked, the reply asks for %v", rep.Logs)
	}
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get(ts.URL + api.LogPath("node-1", "kube-proxy") + "?fresh=20")
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- resp.Status + " " + string(b)
	}()
	// The machine's next report learns of the request and answers it.
	deadline := time.Now().Add(10 * time.Second)
	var rep api.EventReply
	for len(rep.Logs) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		rep = postEvent()
	}
	if len(rep.Logs) != 1 || rep.Logs[0] != "kube-proxy.service" {
		t.Fatalf("reply asks for %v, want kube-proxy.service", rep.Logs)
	}
	req, _ := http.NewRequest(http.MethodPost, ts.URL+api.LogPath("node-1", "kube-proxy.service"), bytes.NewReader([]byte("proxy is fine\n")))
	resp, err := http.DefaultClient.Do(asMachine(req, "node-1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if g := <-got; g != "200 OK proxy is fine\n" {
		t.Errorf("fresh journal: %q", g)
	}
	if rep := postEvent(); len(rep.Logs) != 0 {
		t.Errorf("an answered request is asked again: %v", rep.Logs)
	}
}

func TestJournalsStayWithinTheirMemoryBudget(t *testing.T) {
	j := newJournals()
	big := bytes.Repeat([]byte("x"), api.MaxLogBytes)
	t0 := time.Now()
	for i := 0; i < 3*journalBudget/api.MaxLogBytes; i++ {
		j.put("m"+string(rune('a'+i%26))+string(rune('a'+i/26)), "u.service", big, t0.Add(time.Duration(i)*time.Second))
	}
	if j.bytes > journalBudget {
		t.Errorf("%d bytes held, budget %d", j.bytes, journalBudget)
	}
	for i := 0; i < unitsPerMachine+5; i++ {
		j.put("one", "u"+string(rune('a'+i))+".service", []byte("x"), t0.Add(time.Hour+time.Duration(i)*time.Second))
	}
	if n := len(j.logs["one"]); n != unitsPerMachine {
		t.Errorf("one machine holds %d journals, want at most %d", n, unitsPerMachine)
	}
	if _, ok := j.get("one", "never.service"); ok {
		t.Error("never uploaded, yet found")
	}
	if _, ok := j.get("one", "ua.service"); ok {
		t.Error("the oldest journal of a machine over its units limit was kept")
	}
}
