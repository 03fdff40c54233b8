package qemutests

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/profiles"
)

// What the durable-state parts of the e2e scenarios check, as an operator
// would: the boot server's log of each machine's events, its status
// fields, etcdctl's view of the cluster, and etcd's own metrics.

var eventLine = regexp.MustCompile(`msg=event machine=(\S+) stage=(\S+) message=("(?:[^"\\]|\\.)*"|\S*)`)

// events are the messages the boot server logged for a machine at a stage.
func (sc *scenario) events(t *testing.T, machine, stage string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join(sc.logDir, "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		m := eventLine.FindStringSubmatch(s.Text())
		if m == nil || m[1] != machine || m[2] != stage {
			continue
		}
		msg := m[3]
		if u, err := strconv.Unquote(msg); err == nil {
			msg = u
		}
		out = append(out, msg)
	}
	return out
}

// since are the events after the first n.
func since(all []string, n int) []string {
	if n > len(all) {
		return nil
	}
	return all[n:]
}

func anyContains(msgs []string, sub string) bool {
	for _, m := range msgs {
		if strings.Contains(m, sub) {
			return true
		}
	}
	return false
}

// stateSays waits until each machine's agent reports a state disk message
// containing want.
func (sc *scenario) stateSays(t *testing.T, ctx context.Context, want string, ms ...*profiles.Machine) {
	t.Helper()
	for _, m := range ms {
		var last string
		waitFor(t, ctx, m.Name+" reporting its state disk: "+want, func() bool {
			list, err := sc.c.Machines(ctx)
			if err != nil {
				return false
			}
			last = list[m.Name].Fields["state"]
			return strings.Contains(last, want)
		})
		t.Logf("%s: %s", m.Name, last)
	}
}

// etcdIdentity is the cluster's ID and each member's ID by name, and the
// names of the learners, from etcdctl.
func (sc *scenario) etcdIdentity(t *testing.T, ctx context.Context, etcdctl string, via *profiles.Machine) (string, map[string]string, []string) {
	t.Helper()
	out, err := inLab(ctx, sc.c.Lab, etcdctl, append(sc.tlsArgs, "--endpoints", "https://"+ip(via)+":2379", "member", "list", "-w", "json")...)
	if err != nil {
		t.Fatalf("member list: %v\n%s", err, out)
	}
	var l struct {
		Header struct {
			ClusterID uint64 `json:"cluster_id"`
		} `json:"header"`
		Members []struct {
			ID        uint64 `json:"ID"`
			Name      string `json:"name"`
			IsLearner bool   `json:"isLearner"`
		} `json:"members"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("member list: %v\n%s", err, out)
	}
	ids := map[string]string{}
	var learners []string
	for _, m := range l.Members {
		ids[m.Name] = fmt.Sprintf("%x", m.ID)
		if m.IsLearner {
			learners = append(learners, m.Name)
		}
	}
	return fmt.Sprintf("%x", l.Header.ClusterID), ids, learners
}

// etcdctl runs etcdctl against the members' client URLs.
func (sc *scenario) etcdctl(ctx context.Context, etcdctl string, ms []*profiles.Machine, args ...string) (string, error) {
	var eps []string
	for _, m := range ms {
		eps = append(eps, "https://"+ip(m)+":2379")
	}
	return inLab(ctx, sc.c.Lab, etcdctl, append(append(sc.tlsArgs, "--endpoints", strings.Join(eps, ",")), args...)...)
}

// moveLeader makes the member named to (hex member ID id) the leader of
// the members ms, unless it leads already.
func (sc *scenario) moveLeader(t *testing.T, ctx context.Context, etcdctl string, ms []*profiles.Machine, to, id string) {
	t.Helper()
	out, err := sc.etcdctl(ctx, etcdctl, ms, "endpoint", "status", "-w", "json")
	if err != nil {
		t.Fatalf("endpoint status: %v\n%s", err, out)
	}
	var st []struct {
		Status struct {
			Leader uint64 `json:"leader"`
		} `json:"Status"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st) == 0 {
		t.Fatalf("endpoint status: %v\n%s", err, out)
	}
	if fmt.Sprintf("%x", st[0].Status.Leader) == id {
		t.Logf("%s leads etcd already", to)
		return
	}
	if out, err := sc.etcdctl(ctx, etcdctl, ms, "move-leader", id); err != nil {
		t.Fatalf("move the etcd leadership to %s: %v\n%s", to, err, out)
	}
	t.Logf("etcd leadership moved from %x to %s", st[0].Status.Leader, to)
}

// fsyncFigure reports etcd's WAL fsync latency on a member's state disk,
// from its own histogram (etcd_disk_wal_fsync_duration_seconds).
func (sc *scenario) fsyncFigure(t *testing.T, ctx context.Context, label string, m *profiles.Machine) {
	t.Helper()
	ca, err := os.ReadFile(filepath.Join(sc.cred, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.LoadX509KeyPair(filepath.Join(sc.cred, "admin.pem"), filepath.Join(sc.cred, "admin-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: sc.c.Lab.Dial,
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{kp}}}}
	res, err := client.Get("https://" + ip(m) + ":2379/metrics")
	if err != nil {
		t.Errorf("%s metrics: %v", m.Name, err)
		return
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	count, sum, buckets := histogram(string(b), "etcd_disk_wal_fsync_duration_seconds")
	if count == 0 {
		t.Errorf("%s: no WAL fsync in its metrics", m.Name)
		return
	}
	figure(t, "%s: %s WAL fsync on its state disk: %.0f fsyncs, mean %.1f ms, p50 <= %s, p99 <= %s (etcd_disk_wal_fsync_duration_seconds)",
		label, m.Name, count, 1000*sum/count, quantile(buckets, count, 0.5), quantile(buckets, count, 0.99))
}

type bucket struct {
	le    float64
	count float64
}

// histogram reads a Prometheus histogram's count, sum and buckets.
func histogram(text, name string) (count, sum float64, bs []bucket) {
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		switch {
		case f[0] == name+"_count":
			count = v
		case f[0] == name+"_sum":
			sum = v
		case strings.HasPrefix(f[0], name+`_bucket{le="`):
			le, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(f[0], name+`_bucket{le="`), `"}`), 64)
			if err != nil {
				le = math.Inf(1)
			}
			bs = append(bs, bucket{le, v})
		}
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	return count, sum, bs
}

// quantile is the upper bound of the bucket holding the q quantile.
func quantile(bs []bucket, count, q float64) string {
	for _, b := range bs {
		if b.count >= q*count {
			if math.IsInf(b.le, 1) {
				return "+Inf"
			}
			return fmt.Sprintf("%g ms", b.le*1000)
		}
	}
	return "?"
}

// headTail is the sha256 of a disk file's first and last 4 MiB, where a
// partition table, a filesystem's superblock and GPT's backup live.
func headTail(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, io.LimitReader(f, 4<<20))
	end, _ := f.Seek(0, io.SeekEnd)
	f.Seek(max(0, end-4<<20), io.SeekStart)
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

// foreignDisk makes a disk file holding someone else's ext4 filesystem.
func foreignDisk(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Truncate(path, 8<<30); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-L", "someones-data", path).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
}

// runPlinth runs plinth on the host and returns its output and error.
func runPlinth(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, plinthBin, args...)
	cmd.Dir = srcDir
	out, err := cmd.CombinedOutput()
	return string(out), err
}
