package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/bootserver/siteetcd"
)

// snapshotFile writes a snapshot as etcd streams it (a database and its
// sha256) with a .sha256 file saying sum ("" for the right one).
func snapshotFile(t *testing.T, path, sum string) string {
	t.Helper()
	db := make([]byte, 4096)
	for i := range db {
		db[i] = byte(i)
	}
	trailer := sha256.Sum256(db)
	data := append(db, trailer[:]...)
	whole := sha256.Sum256(data)
	if sum == "" {
		sum = hex.EncodeToString(whole[:])
	}
	os.MkdirAll(filepath.Dir(path), 0o700)
	os.WriteFile(path, data, 0o600)
	os.WriteFile(path+siteetcd.SumExt, []byte(sum+"  "+filepath.Base(path)+"\n"), 0o600)
	return hex.EncodeToString(whole[:])
}

func fakeEtcdutlOnDisk(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "etcdutl")
	os.WriteFile(p, []byte("#!/bin/sh\necho '{\"hash\":1,\"revision\":77,\"totalKey\":5,\"totalSize\":4096,\"version\":\"3.6.0\"}'\n"), 0o755)
	return p
}

func TestEtcdRestoreRefusesASnapshotWhoseSumFileDoesNotMatch(t *testing.T) {
	site := labSite(t)
	state := filepath.Join(t.TempDir(), "state")
	snap := filepath.Join(state, "etcd", "snapshots", "20260820T120000Z.db")
	snapshotFile(t, snap, strings.Repeat("0", 64))
	restoreJSON := filepath.Join(state, "etcd", siteetcd.RestoreFile)

	_, err := run("etcd", "restore", "--site", site, "--state", state, "--etcdutl", fakeEtcdutlOnDisk(t), "20260820T120000Z")
	if err == nil || !strings.Contains(err.Error(), "does not match its .sha256") {
		t.Fatalf("a snapshot its .sha256 disowns: %v", err)
	}
	if _, err := os.Stat(restoreJSON); !os.IsNotExist(err) {
		t.Fatalf("restore.json written for a refused snapshot: %v", err)
	}
}

func TestEtcdRestoreRecordsTheRequestAndCancelRemovesIt(t *testing.T) {
	site := labSite(t)
	state := filepath.Join(t.TempDir(), "state")
	snap := filepath.Join(state, "etcd", "snapshots", "20260820T120000Z.db")
	sum := snapshotFile(t, snap, "")
	restoreJSON := filepath.Join(state, "etcd", siteetcd.RestoreFile)

	out, err := run("etcd", "restore", "--site", site, "--state", state, "--etcdutl", fakeEtcdutlOnDisk(t), "20260820T120000Z.db")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{sum, "revision 77", "Reboot every etcd member", "plinth etcd restore --cancel"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	var req siteetcd.RestoreRequest
	b, err := os.ReadFile(restoreJSON)
	if err != nil || json.Unmarshal(b, &req) != nil || req.File != snap || req.SHA256 != sum || req.Requested.IsZero() {
		t.Fatalf("restore.json: %s %v", b, err)
	}

	out, err = run("etcd", "snapshots", "--site", site, "--state", state)
	if err != nil || !strings.Contains(out, "20260820T120000Z") || !strings.Contains(out, sum) {
		t.Errorf("snapshots: %v\n%s", err, out)
	}

	if _, err := run("etcd", "restore", "--site", site, "--state", state, "--cancel"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(restoreJSON); !os.IsNotExist(err) {
		t.Errorf("restore.json after --cancel: %v", err)
	}
	if out, err := run("etcd", "restore", "--site", site, "--state", state, "--cancel"); err != nil || !strings.Contains(out, "no etcd restore was requested") {
		t.Errorf("second --cancel: %v %q", err, out)
	}
	if _, err := run("etcd", "restore", "--site", site, "--state", state, "no-such-snapshot"); err == nil {
		t.Error("an unknown snapshot name was accepted")
	}
}
