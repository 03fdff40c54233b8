package firstboot

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/initramfs/stage1/events"
	"github.com/plinth-dev/plinth/internal/etcdrpc"
	"github.com/plinth-dev/plinth/profiles/node"
)

// etcdBinary finds the etcd the stack fixtures built, or skips (fails
// under CI when PLINTH_E2E asks for the stack).
func etcdBinary(t *testing.T) string {
	if p := os.Getenv("PLINTH_ETCD"); p != "" {
		return p
	}
	fx := os.Getenv("PLINTH_FIXTURES")
	if fx == "" {
		home, _ := os.UserHomeDir()
		fx = filepath.Join(home, ".cache", "plinth", "fixtures")
	}
	m, _ := filepath.Glob(filepath.Join(fx, "bin", "etcd-*", "etcd"))
	if len(m) == 0 {
		if os.Getenv("PLINTH_E2E") != "" {
			t.Fatal("no etcd binary: make stack-fixtures")
		}
		t.Skip("no etcd binary (make stack-fixtures builds one; or set PLINTH_ETCD)")
	}
	return m[len(m)-1]
}

// testPKI writes a CA and one certificate for 127.0.0.1-127.0.0.9 (server
// and client auth), as the boot server would issue them.
func testPKI(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "member"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	for i := 1; i <= 9; i++ {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IPv4(127, 0, 0, byte(i)))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(k)
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("node.pem", "CERTIFICATE", der), write("node-key.pem", "EC PRIVATE KEY", kder)
}

// TestJoinAgainstRealEtcd runs real etcd members on loopback addresses
// (127.0.0.1-4, the profile's "machines", all with state disks) the way
// the etcd role does: each asks Join how to start, then starts with that.
// Three found the cluster; a fourth, added to the profile later, joins as
// a learner and is promoted; a member that restarts with its data starts
// as itself; one that lost its data is replaced by a learner; members
// without quorum make a member with no data wait; and after every member
// is killed at once (a power cut) the cluster re-forms with its data.
func TestJoinAgainstRealEtcd(t *testing.T) {
	bin := etcdBinary(t)
	dir := t.TempDir()
	ca, cert, key := testPKI(t, dir)
	client, err := TLSClient(ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := events.TLSConfig(events.TLSFiles{CA: ca, Cert: cert, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	e := &Etcd{RPC: etcdrpc.New(tlsCfg)}
	e.RPC.Timeout = 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	profile := func(n int) []node.Member {
		var ms []node.Member
		for i := 1; i <= n; i++ {
			ms = append(ms, node.Member{Name: fmt.Sprintf("etcd-%d", i), Address: fmt.Sprintf("127.0.0.%d", i), Durable: true})
		}
		return ms
	}
	clusterID := ""
	config := func(name string, members []node.Member) *node.Config {
		return &node.Config{Machine: name, Hostname: name, Cluster: &node.Cluster{Name: "lab", EtcdMembers: members, EtcdClusterID: clusterID}}
	}
	procs := map[string]*exec.Cmd{}
	t.Cleanup(func() {
		for _, p := range procs {
			p.Process.Kill()
			p.Wait()
		}
	})
	kill := func(names ...string) {
		for _, n := range names {
			procs[n].Process.Kill()
			procs[n].Wait()
			delete(procs, n)
		}
	}
	dataDir := func(name string) string { return filepath.Join(dir, name) }
	// start asks Join until it has a plan (it may have to wait, as the
	// step does), then starts etcd with it.
	start := func(name string, members []node.Member) JoinPlan {
		t.Helper()
		var plan JoinPlan
		var err error
		for {
			if plan, err = e.Join(ctx, config(name, members), HasEtcdData(dataDir(name))); err == nil {
				break
			}
			t.Logf("%s: join: %v (trying again)", name, err)
			if ctx.Err() != nil {
				t.Fatalf("%s: join: %v", name, err)
			}
			time.Sleep(time.Second)
		}
		var self node.Member
		for _, m := range members {
			if m.Name == name {
				self = m
			}
		}
		cmd := exec.Command(bin, "--name="+name, "--data-dir="+dataDir(name),
			"--listen-peer-urls="+role.PeerURL(self.Address), "--listen-client-urls="+role.ClientURL(self.Address),
			"--advertise-client-urls="+role.ClientURL(self.Address), "--initial-advertise-peer-urls="+role.PeerURL(self.Address),
			"--initial-cluster-token=lab", "--listen-metrics-urls=",
			"--cert-file="+cert, "--key-file="+key, "--trusted-ca-file="+ca, "--client-cert-auth",
			"--peer-cert-file="+cert, "--peer-key-file="+key, "--peer-trusted-ca-file="+ca, "--peer-client-cert-auth")
		cmd.Env = append(os.Environ(), "ETCD_INITIAL_CLUSTER="+plan.Initial, "ETCD_INITIAL_CLUSTER_STATE="+plan.State)
		logf, _ := os.OpenFile(filepath.Join(dir, name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs[name] = cmd
		t.Logf("%s: %s (%s)", name, plan.State, plan.Why)
		return plan
	}
	healthy := func(members []node.Member) {
		t.Helper()
		for _, m := range members {
			url := role.ClientURL(m.Address) + "/health"
			for {
				resp, err := client.Get(url)
				if err == nil {
					var b [256]byte
					n, _ := resp.Body.Read(b[:])
					resp.Body.Close()
					if strings.Contains(string(b[:n]), `"health":"true"`) {
						break
					}
				}
				if ctx.Err() != nil {
					log, _ := os.ReadFile(filepath.Join(dir, m.Name+".log"))
					t.Fatalf("%s never healthy: %v\n%s", m.Name, err, log)
				}
				time.Sleep(300 * time.Millisecond)
			}
		}
	}
	// members lists the cluster: ID by name, and the learners.
	members := func() (map[string]string, []string) {
		t.Helper()
		ms, _, err := e.Members(ctx, []string{role.ClientURL("127.0.0.1")})
		if err != nil {
			t.Fatal(err)
		}
		ids := map[string]string{}
		var learners []string
		for _, m := range ms {
			ids[m.Name] = m.ID
			if m.IsLearner {
				learners = append(learners, m.Name)
			}
		}
		return ids, learners
	}
	// promote does what the etcd-promote step does, until it is a voter.
	promote := func(m node.Member) time.Duration {
		t.Helper()
		began := time.Now()
		for {
			var eps []string
			for _, o := range profile(4) {
				if o.Name != m.Name {
					eps = append(eps, role.ClientURL(o.Address))
				}
			}
			ok, err := e.PromoteSelf(ctx, append(eps, role.ClientURL(m.Address)), role.PeerURL(m.Address))
			if ok {
				return time.Since(began)
			}
			if ctx.Err() != nil {
				t.Fatalf("%s never promoted: %v", m.Name, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	status := func(ep string) string {
		t.Helper()
		st, err := e.RPC.Status(ctx, ep)
		if err != nil {
			t.Fatal(err)
		}
		return strconv.FormatUint(st.ClusterID, 16)
	}
	put := func(k, v string) {
		t.Helper()
		if err := e.RPC.Put(ctx, role.ClientURL("127.0.0.1"), k, v); err != nil {
			t.Fatal(err)
		}
	}
	get := func(ep, k string) string {
		t.Helper()
		v, _, err := e.RPC.Get(ctx, ep, k)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	// Founding: nobody has data, the boot server has seen no cluster.
	three := profile(3)
	for _, m := range three[:2] {
		if p := start(m.Name, three); p.State != "new" {
			t.Errorf("%s founding: %+v", m.Name, p)
		}
	}
	healthy(three[:2])
	// The third boots late: the cluster lists it, never started.
	if p := start("etcd-3", three); p.State != "existing" || !strings.Contains(p.Why, "never started") {
		t.Errorf("etcd-3: %+v", p)
	}
	healthy(three)
	clusterID = status(role.ClientURL("127.0.0.1")) // what the boot server records
	put("/plinth/test/a", "before")

	// A fourth member added to the profile joins as a learner, and is
	// promoted once caught up.
	four := profile(4)
	if p := start("etcd-4", four); p.State != "existing" || p.Why != "not in the running cluster: added as a learner" {
		t.Errorf("etcd-4: %+v", p)
	}
	// A learner publishes its name like any member once it runs: etcd
	// told systemd it is ready (the unit is Type=notify, and the promote
	// step waits for it).
	for {
		ids, learners := members()
		if _, ok := ids["etcd-4"]; ok && slices.Equal(learners, []string{"etcd-4"}) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("etcd-4 never published itself as a learner: %v, learners %v", ids, learners)
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Logf("etcd-4 promoted %s after it was started", promote(four[3]))
	healthy(four)
	ids, learners := members()
	if len(ids) != 4 || len(learners) != 0 {
		t.Fatalf("members %v, learners %v", ids, learners)
	}

	// etcd-2 restarts with its data: it starts as itself.
	kill("etcd-2")
	if p := start("etcd-2", four); !strings.Contains(p.Why, "starting as itself") {
		t.Errorf("etcd-2 restarted with data: %+v", p)
	}
	healthy(four)
	if now, _ := members(); !maps.Equal(now, ids) {
		t.Errorf("membership changed by a restart with data: %v, was %v", now, ids)
	}

	// etcd-3 loses its data (a new disk): its old self is removed and it
	// rejoins as a learner, then is promoted; nothing written is lost.
	kill("etcd-3")
	os.RemoveAll(dataDir("etcd-3"))
	if p := start("etcd-3", four); !strings.Contains(p.Why, "removed its old self, added again as a learner") {
		t.Errorf("etcd-3 with no data: %+v", p)
	}
	promote(four[2])
	healthy(four)
	if v := get(role.ClientURL("127.0.0.3"), "/plinth/test/a"); v != "before" {
		t.Errorf("etcd-3 reads %q after rejoining, want before", v)
	}
	ids, _ = members()

	// Three of four down: etcd-1 runs without quorum. A member with no
	// data waits, and says why; so does one when nobody answers at all.
	kill("etcd-2", "etcd-3", "etcd-4")
	os.RemoveAll(dataDir("etcd-4"))
	if p, err := e.Join(ctx, config("etcd-4", four), false); !errors.Is(err, ErrWait) || !strings.Contains(err.Error(), "no quorum") {
		t.Errorf("etcd-4 with no data, cluster without quorum: %+v, %v", p, err)
	}
	kill("etcd-1")
	if p, err := e.Join(ctx, config("etcd-4", four), false); !errors.Is(err, ErrWait) || !strings.Contains(err.Error(), "waiting for them") {
		t.Errorf("etcd-4 with no data, nobody answering: %+v, %v", p, err)
	}

	// Power comes back: the members with data start as themselves and the
	// cluster re-forms; etcd-4, which lost its data, rejoins as a learner.
	for _, n := range []string{"etcd-1", "etcd-2", "etcd-3"} {
		if p := start(n, four); !strings.Contains(p.Why, "starting as itself") {
			t.Errorf("%s after the power cut: %+v", n, p)
		}
	}
	healthy(four[:3])
	if id := status(role.ClientURL("127.0.0.2")); id != clusterID {
		t.Errorf("cluster ID %s after the power cut, was %s", id, clusterID)
	}
	if v := get(role.ClientURL("127.0.0.2"), "/plinth/test/a"); v != "before" {
		t.Errorf("read %q after the power cut, want before", v)
	}
	start("etcd-4", four)
	promote(four[3])
	healthy(four)

	// The flannel config is written once: a second writer keeps the first.
	eps := EtcdEndpoints(&node.Cluster{EtcdMembers: four})
	v, set, err := e.PutIfAbsent(ctx, eps, role.FlannelPrefix+"/config", `{"Network":"10.244.0.0/16"}`)
	if err != nil || !set || v != `{"Network":"10.244.0.0/16"}` {
		t.Fatalf("first put: %q %v %v", v, set, err)
	}
	v, set, err = e.PutIfAbsent(ctx, eps[1:], role.FlannelPrefix+"/config", `{"Network":"10.99.0.0/16"}`)
	if err != nil || set || v != `{"Network":"10.244.0.0/16"}` {
		t.Fatalf("second put: %q %v %v", v, set, err)
	}
}
