package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
)

func TestLogsAsksTheServerForAFreshJournalOfTheUnit(t *testing.T) {
	var asked string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = r.URL.RequestURI()
		w.Header().Set(api.HeaderLogTime, time.Now().UTC().Format(time.RFC3339))
		w.Write([]byte("apiserver: serving\n"))
	}))
	defer srv.Close()
	var out, errOut bytes.Buffer
	if err := printJournal(context.Background(), srv.Client(), &out, &errOut, srv.URL, "master-1", "kube-apiserver", 45*time.Second); err != nil {
		t.Fatal(err)
	}
	if asked != "/v1/machines/master-1/logs/kube-apiserver.service?fresh=45" || out.String() != "apiserver: serving\n" {
		t.Errorf("asked %q, printed %q", asked, out.String())
	}
	if !strings.HasPrefix(errOut.String(), "-- kube-apiserver.service on master-1, sent ") {
		t.Errorf("note %q", errOut.String())
	}
}

func TestLogsSaysWhatTheServerSaidWhenThereIsNoJournal(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "logs: master-1 has sent no journal of etcd.service", http.StatusNotFound)
	}))
	defer srv.Close()
	err := printJournal(context.Background(), srv.Client(), &bytes.Buffer{}, &bytes.Buffer{}, srv.URL, "master-1", "etcd", 0)
	if err == nil || !strings.Contains(err.Error(), "404 Not Found: logs: master-1 has sent no journal of etcd.service") {
		t.Errorf("error %v", err)
	}
	for _, bad := range [][2]string{{"master-1", "a/b"}, {"../x", "etcd"}} {
		if err := printJournal(context.Background(), srv.Client(), &bytes.Buffer{}, &bytes.Buffer{}, srv.URL, bad[0], bad[1], 0); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}
