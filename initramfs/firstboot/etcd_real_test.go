package firstboot

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/initramfs/role"
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
// (127.0.0.1-4, the profile's "machines") the way the etcd role does: each
// asks Join how to start, then starts with that. Three found the cluster;
// a fourth, added to the profile later, joins it while it serves; a member
// that restarts with its data gone is replaced and rejoins.
func TestJoinAgainstRealEtcd(t *testing.T) {
	bin := etcdBinary(t)
	dir := t.TempDir()
	ca, cert, key := testPKI(t, dir)
	client, err := TLSClient(ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	e := &Etcd{Client: client, Timeout: 2 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	profile := func(n int) []node.Member {
		var ms []node.Member
		for i := 1; i <= n; i++ {
			ms = append(ms, node.Member{Name: fmt.Sprintf("etcd-%d", i), Address: fmt.Sprintf("127.0.0.%d", i)})
		}
		return ms
	}
	procs := map[string]*exec.Cmd{}
	t.Cleanup(func() {
		for _, p := range procs {
			p.Process.Kill()
			p.Wait()
		}
	})
	start := func(name string, members []node.Member) JoinPlan {
		t.Helper()
		cfg := &node.Config{Machine: name, Hostname: name, Cluster: &node.Cluster{Name: "lab", EtcdMembers: members}}
		var plan JoinPlan
		var err error
		for {
			if plan, err = e.Join(ctx, cfg); err == nil {
				break
			}
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
		data := filepath.Join(dir, name)
		os.RemoveAll(data) // etcd lives on tmpfs: a reboot loses it
		cmd := exec.Command(bin, "--name="+name, "--data-dir="+data,
			"--listen-peer-urls="+role.PeerURL(self.Address), "--listen-client-urls="+role.ClientURL(self.Address),
			"--advertise-client-urls="+role.ClientURL(self.Address), "--initial-advertise-peer-urls="+role.PeerURL(self.Address),
			"--initial-cluster-token=lab", "--listen-metrics-urls=",
			"--cert-file="+cert, "--key-file="+key, "--trusted-ca-file="+ca, "--client-cert-auth",
			"--peer-cert-file="+cert, "--peer-key-file="+key, "--peer-trusted-ca-file="+ca, "--peer-client-cert-auth")
		cmd.Env = append(os.Environ(), "ETCD_INITIAL_CLUSTER="+plan.Initial, "ETCD_INITIAL_CLUSTER_STATE="+plan.State)
		logf, _ := os.Create(filepath.Join(dir, name+".log"))
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
	started := func(n int) {
		t.Helper()
		ms, _, err := e.Members(ctx, []string{role.ClientURL("127.0.0.1")})
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for _, m := range ms {
			if len(m.ClientURLs) > 0 {
				got++
			}
		}
		if len(ms) != n || got != n {
			t.Fatalf("members %+v, want %d started", ms, n)
		}
	}

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
	started(3)

	// A fourth member added to the profile joins the running cluster.
	four := profile(4)
	if p := start("etcd-4", four); p.State != "existing" || !strings.Contains(p.Why, "added") {
		t.Errorf("etcd-4: %+v", p)
	}
	healthy(four)
	started(4)

	// etcd-2 reboots: its data is gone, so it is replaced and rejoins.
	procs["etcd-2"].Process.Kill()
	procs["etcd-2"].Wait()
	// (When etcd refuses the add right after the remove, as it does while
	// the cluster settles, the next try finds it gone and adds it.)
	if p := start("etcd-2", four); p.State != "existing" || !strings.Contains(p.Why, "added") {
		t.Errorf("etcd-2 after reboot: %+v", p)
	}
	healthy(four)
	started(4)

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
