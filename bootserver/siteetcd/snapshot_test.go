package siteetcd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/siteetcd/etcdtest"
	"github.com/plinth-dev/plinth/internal/etcdrpc"
)

func plainClient() *Client { return &Client{RPC: etcdrpc.Plain()} }

// dirNames lists a directory, hidden files included.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestSaveChecksTheTrailingSHA256AndPublishesWithASumFile(t *testing.T) {
	m := etcdtest.New(t, 0xabc, 1)
	db := etcdtest.DB(3 * 4096)
	m.Set(func(s *etcdtest.State) { s.Data, s.Chunk = db, 5000 }) // chunks across the trailer
	store := Store{Dir: t.TempDir()}
	path := store.NewSnapshotPath(time.Date(2026, 8, 20, 15, 13, 15, 0, time.UTC))
	if filepath.Base(path) != "20260820T151315Z.db" {
		t.Fatalf("snapshot named %s", path)
	}
	s, err := Save(context.Background(), plainClient(), []string{m.URL()}, path, "")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	sum := sha256.Sum256(db)
	want := append(bytes.Clone(db), sum[:]...) // as etcdctl snapshot save writes it
	if !bytes.Equal(got, want) {
		t.Fatalf("file is %d bytes, want the database and its sha256 (%d)", len(got), len(want))
	}
	whole := sha256.Sum256(want)
	if s.SHA256 != hex.EncodeToString(whole[:]) || s.Size != int64(len(want)) || s.Version != "3.6.0" {
		t.Errorf("saved %+v", s)
	}
	side, _ := os.ReadFile(path + SumExt)
	if string(side) != hex.EncodeToString(whole[:])+"  20260820T151315Z.db\n" {
		t.Errorf(".sha256 is %q", side)
	}
	if _, err := Check(context.Background(), path, ""); err != nil {
		t.Errorf("Check of what Save published: %v", err)
	}
	if names := dirNames(t, store.SnapshotDir()); len(names) != 2 {
		t.Errorf("snapshot directory holds %v, want the .db and its .sha256", names)
	}
}

func TestABadSnapshotStreamPublishesNothing(t *testing.T) {
	for name, set := range map[string]func(*etcdtest.State){
		"corrupted trailing checksum": func(s *etcdtest.State) { s.CorruptChecksum = true },
		"error in the stream":         func(s *etcdtest.State) { s.StreamError = true },
		"member down":                 func(s *etcdtest.State) { s.Down = true },
		"no trailer (odd size)":       func(s *etcdtest.State) { s.Data = s.Data[:len(s.Data)-100] },
	} {
		t.Run(name, func(t *testing.T) {
			m := etcdtest.New(t, 0xabc, 1)
			m.Set(func(s *etcdtest.State) { s.Data, s.Chunk = etcdtest.DB(2*4096), 4096 })
			m.Set(set)
			store := Store{Dir: t.TempDir()}
			path := store.NewSnapshotPath(time.Now())
			_, err := Save(context.Background(), plainClient(), []string{m.URL()}, path, "")
			if err == nil {
				t.Fatal("saved")
			}
			if name == "corrupted trailing checksum" && !errors.Is(err, ErrChecksum) {
				t.Errorf("err %v, want ErrChecksum", err)
			}
			if names := dirNames(t, store.SnapshotDir()); len(names) != 0 {
				t.Errorf("left %v behind", names)
			}
		})
	}
}

func TestSaveFallsBackToTheNextMember(t *testing.T) {
	bad := etcdtest.New(t, 0xabc, 1)
	bad.Set(func(s *etcdtest.State) { s.Data, s.CorruptChecksum = etcdtest.DB(4096), true })
	good := etcdtest.New(t, 0xabc, 2)
	good.Set(func(s *etcdtest.State) { s.Data = etcdtest.DB(4096) })
	store := Store{Dir: t.TempDir()}
	s, err := Save(context.Background(), plainClient(), []string{bad.URL(), good.URL()}, store.NewSnapshotPath(time.Now()), "")
	if err != nil || s.Endpoint != good.URL() {
		t.Fatalf("%+v %v", s, err)
	}
}

// fakeEtcdutl is a script answering etcdutl snapshot status -w json.
func fakeEtcdutl(t *testing.T, out string, code int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "etcdutl")
	script := "#!/bin/sh\n[ \"$1 $2 $4 $5\" = \"snapshot status -w json\" ] || { echo usage >&2; exit 2; }\n[ -f \"$3\" ] || exit 3\necho '" + out + "'\nexit " + string(rune('0'+code)) + "\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEtcdutlStatusIsSavedBesideTheSnapshotAndRefusalPublishesNothing(t *testing.T) {
	m := etcdtest.New(t, 0xabc, 1)
	m.Set(func(s *etcdtest.State) { s.Data = etcdtest.DB(4096) })
	store := Store{Dir: t.TempDir()}
	ok := fakeEtcdutl(t, `{"hash":12,"revision":42,"totalKey":7,"totalSize":4096,"version":"3.6.0"}`, 0)
	s, err := Save(context.Background(), plainClient(), []string{m.URL()}, store.NewSnapshotPath(time.Now()), ok)
	if err != nil {
		t.Fatal(err)
	}
	if s.Status == nil || s.Status.Revision != 42 {
		t.Fatalf("status %+v", s.Status)
	}
	list, _ := store.Snapshots()
	if len(list) != 1 || list[0].Status == nil || list[0].Status.TotalKey != 7 || list[0].SHA256 != s.SHA256 {
		t.Fatalf("listed %+v", list)
	}

	store2 := Store{Dir: t.TempDir()}
	bad := fakeEtcdutl(t, `{}`, 1)
	if _, err := Save(context.Background(), plainClient(), []string{m.URL()}, store2.NewSnapshotPath(time.Now()), bad); err == nil || !strings.Contains(err.Error(), "etcdutl snapshot status") {
		t.Fatalf("etcdutl refused it, yet: %v", err)
	}
	if names := dirNames(t, store2.SnapshotDir()); len(names) != 0 {
		t.Errorf("left %v behind", names)
	}
}

func TestPruneKeepsTheNewestNAndTheRestoresSnapshot(t *testing.T) {
	store := Store{Dir: t.TempDir()}
	os.MkdirAll(store.SnapshotDir(), 0o700)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var paths []string
	for i := range 6 {
		p := store.NewSnapshotPath(base.Add(time.Duration(i) * time.Hour))
		os.WriteFile(p+SumExt, []byte(strings.Repeat("a", 64)+"  x\n"), 0o600)
		os.WriteFile(p+StatusExt, []byte(`{"revision":1}`), 0o600)
		os.WriteFile(p, []byte("db"), 0o600)
		paths = append(paths, p)
	}
	orphan := filepath.Join(store.SnapshotDir(), "20250101T000000Z.db"+SumExt) // a publish cut short
	os.WriteFile(orphan, []byte("x"), 0o600)
	removed, err := store.Prune(3, paths[1])
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 2 || removed[0] != paths[0] || removed[1] != paths[2] {
		t.Errorf("removed %v", removed)
	}
	list, _ := store.Snapshots()
	var left []string
	for _, s := range list {
		left = append(left, s.Path)
	}
	want := []string{paths[1], paths[3], paths[4], paths[5]}
	if strings.Join(left, " ") != strings.Join(want, " ") {
		t.Errorf("left %v, want %v", left, want)
	}
	if n := len(dirNames(t, store.SnapshotDir())); n != 12 {
		t.Errorf("%d files left, want 4 snapshots with 2 sidecars each: %v", n, dirNames(t, store.SnapshotDir()))
	}
}

func TestCheckRefusesASnapshotThatDoesNotMatchItsSumFile(t *testing.T) {
	m := etcdtest.New(t, 0xabc, 1)
	m.Set(func(s *etcdtest.State) { s.Data = etcdtest.DB(4096) })
	store := Store{Dir: t.TempDir()}
	path := store.NewSnapshotPath(time.Now())
	if _, err := Save(context.Background(), plainClient(), []string{m.URL()}, path, ""); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	b[100] ^= 1
	os.WriteFile(path, b, 0o600)
	if _, err := Check(context.Background(), path, ""); !errors.Is(err, ErrSumMismatch) {
		t.Errorf("a changed snapshot: %v", err)
	}
	// Its .sha256 rewritten to match: etcd's own checksum still catches it.
	sum := sha256.Sum256(b)
	os.WriteFile(path+SumExt, []byte(hex.EncodeToString(sum[:])+"  x\n"), 0o600)
	if _, err := Check(context.Background(), path, ""); !errors.Is(err, ErrChecksum) {
		t.Errorf("a changed snapshot with a matching .sha256: %v", err)
	}
	os.Remove(path + SumExt)
	if _, err := Check(context.Background(), path, ""); err == nil {
		t.Error("a snapshot without .sha256 passed")
	}
}

// FuzzSnapshotStream feeds the snapshot sink chunks decoded from arbitrary
// bytes (each chunk a one-byte length, then that many bytes of protobuf):
// whatever it accepts ends with a sha256 of what came before.
func FuzzSnapshotStream(f *testing.F) {
	chunk := func(ch etcdrpc.SnapshotChunk) []byte {
		m := etcdrpc.EncodeSnapshotChunk(ch)
		return append([]byte{byte(len(m))}, m...)
	}
	data := etcdtest.DB(480)
	sum := sha256.Sum256(data[:448])
	f.Add(append(chunk(etcdrpc.SnapshotChunk{Remaining: 64, Blob: data[:448], Version: "3.6.0"}), chunk(etcdrpc.SnapshotChunk{Blob: sum[:]})...))
	f.Add(chunk(etcdrpc.SnapshotChunk{Remaining: 3, Blob: []byte("abc")}))
	f.Add([]byte{3, 0x10, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		var out bytes.Buffer
		s := newSnapshotSink(&out)
		var err error
		for len(b) > 0 && err == nil {
			n := min(int(b[0]), len(b)-1)
			var ch etcdrpc.SnapshotChunk
			if ch, err = etcdrpc.DecodeSnapshotChunk(b[1 : 1+n]); err == nil {
				err = s.add(ch)
			}
			b = b[1+n:]
		}
		if err == nil {
			err = s.finish()
		}
		if s.tw.n != int64(out.Len()) {
			t.Fatalf("reported %d bytes, wrote %d", s.tw.n, out.Len())
		}
		if err == nil {
			data := out.Bytes()
			sum := sha256.Sum256(data[:len(data)-sha256.Size])
			if !bytes.Equal(sum[:], data[len(data)-sha256.Size:]) {
				t.Fatal("accepted a stream whose trailer does not match")
			}
		}
	})
}
