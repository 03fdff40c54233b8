package firstboot

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/pki"
	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/internal/etcdrpc"
	"github.com/plinth-dev/plinth/roles"
)

// TestEtcdTakesEachIdentityOnlyForItsKeys starts a real etcd member as the
// etcd role does (client-certificate auth, the site CA), lets EnsureAuth
// set it up, and then tries, as each certificate the site CA gives out,
// what that certificate must not do: a minion's node certificate reads
// and writes nothing, flannel's identity touches nothing outside flannel's
// prefix, the API server's nothing outside Kubernetes' keys, none of them
// changes the membership or the users; the JSON gateway is no way around
// it, and a certificate from another CA is not even let in.
func TestEtcdTakesEachIdentityOnlyForItsKeys(t *testing.T) {
	bin := etcdBinary(t)
	dir := t.TempDir()
	ca, _, err := pki.LoadOrCreate(filepath.Join(dir, "state"), "lab", nil)
	if err != nil {
		t.Fatal(err)
	}
	const addr = "127.0.0.5"
	ep := role.ClientURL(addr)
	write := fileWriter(t, dir)
	// The member's node certificate, as the boot server issues it.
	member, err := ca.Issue(pki.Request{CommonName: "etcd-1", IPs: []netip.Addr{netip.MustParseAddr(addr)}, Server: true, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	caFile, certFile, keyFile := write("ca.pem", ca.CertPEM()), write("node.pem", member.Cert), write("node-key.pem", member.Key)
	cmd := exec.Command(bin, "--name=etcd-1", "--data-dir="+filepath.Join(dir, "data"),
		"--listen-peer-urls="+role.PeerURL(addr), "--listen-client-urls="+ep,
		"--advertise-client-urls="+ep, "--initial-advertise-peer-urls="+role.PeerURL(addr),
		"--initial-cluster=etcd-1="+role.PeerURL(addr), "--initial-cluster-state=new", "--listen-metrics-urls=",
		"--cert-file="+certFile, "--key-file="+keyFile, "--trusted-ca-file="+caFile, "--client-cert-auth",
		"--peer-cert-file="+certFile, "--peer-key-file="+keyFile, "--peer-trusted-ca-file="+caFile, "--peer-client-cert-auth")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert())
	as := func(cn string) *etcdrpc.Client {
		t.Helper()
		kp, err := ca.Issue(pki.Request{CommonName: cn, Client: true})
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.X509KeyPair([]byte(kp.Cert), []byte(kp.Key))
		if err != nil {
			t.Fatal(err)
		}
		rc := etcdrpc.New(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{c}})
		rc.Timeout = 5 * time.Second
		return rc
	}
	root := &Etcd{RPC: as(roles.EtcdMember.CommonName)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		if _, err := root.RPC.Status(ctx, ep); err == nil {
			break
		} else if ctx.Err() != nil {
			t.Fatalf("etcd never answered: %v\n%s", err, log.String())
		}
		time.Sleep(300 * time.Millisecond)
	}

	// Before authorisation, any certificate of the site does anything:
	// this is what EnsureAuth closes.
	minion := as("minion-1") // a minion's node certificate's subject
	if err := minion.Put(ctx, ep, "/registry/before", "x"); err != nil {
		t.Fatalf("before auth: %v", err)
	}
	did, err := root.EnsureAuth(ctx, []string{ep})
	if err != nil {
		t.Fatalf("EnsureAuth: %v\n%s", err, log.String())
	}
	if len(did) == 0 || did[len(did)-1] != "authorisation enabled" {
		t.Errorf("EnsureAuth did %q", did)
	}
	if did, err := root.EnsureAuth(ctx, []string{ep}); err != nil || len(did) != 0 {
		t.Errorf("EnsureAuth on a cluster set up: did %q, %v", did, err)
	}

	api, flannel, boot := as(roles.EtcdAPIServer.CommonName), as(roles.EtcdFlannel.CommonName), as(roles.EtcdBootServer.CommonName)
	// etcd refuses a user without the permission, and a certificate
	// whose common name is no user at all.
	denied := func(what string, err error) {
		t.Helper()
		if !etcdrpc.IsCode(err, etcdrpc.CodePermissionDenied) &&
			!(etcdrpc.IsCode(err, etcdrpc.CodeFailedPrecondition) && strings.Contains(err.Error(), "user name not found")) {
			t.Errorf("%s: %v, want permission denied", what, err)
		}
	}
	allowed := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	// What each identity is for.
	allowed("apiserver writes /registry/", api.Put(ctx, ep, "/registry/pods/default/p", "pod"))
	allowed("apiserver writes its compaction key", api.Put(ctx, ep, "compact_rev_key", "1"))
	// kube-apiserver compacts etcd's history every five minutes; refused,
	// etcd keeps every revision until its space quota stops all writes.
	st, err := api.Status(ctx, ep)
	allowed("apiserver asks for status", err)
	allowed("apiserver compacts etcd's history", api.Compact(ctx, ep, st.Revision))
	// RangeRequest{key, revision 1}: history before the compaction is gone.
	if _, err := api.Call(ctx, ep, etcdrpc.MethodRange, etcdrpc.Message{}.String(1, "/registry/pods/default/p").Uint(4, 1)); err == nil ||
		!strings.Contains(err.Error(), "compacted") {
		t.Errorf("read at revision 1 after compacting to %d: %v, want it compacted", st.Revision, err)
	}
	if v, _, err := api.Get(ctx, ep, "/registry/pods/default/p"); err != nil || v != "pod" {
		t.Errorf("read after compaction: %q, %v", v, err)
	}
	_, _, err = flannel.PutIfAbsent(ctx, ep, roles.FlannelPrefix+"/config", `{"Network":"10.244.0.0/16"}`)
	allowed("flannel writes its config", err)
	allowed("flannel leases a subnet", flannel.Put(ctx, ep, roles.FlannelPrefix+"/subnets/10.244.1.0-24", "{}"))
	_, err = boot.Status(ctx, ep)
	allowed("the boot server asks for status", err)
	allowed("the boot server takes a snapshot", boot.Snapshot(ctx, ep, func(etcdrpc.SnapshotChunk) error { return nil }))

	// What none may do.
	_, _, err = minion.Get(ctx, ep, "/registry/pods/default/p")
	denied("a minion's node certificate reads /registry/", err)
	denied("a minion's node certificate writes /registry/", minion.Put(ctx, ep, "/registry/clusterrolebindings/evil", "x"))
	denied("a minion's node certificate writes flannel's config", minion.Put(ctx, ep, roles.FlannelPrefix+"/config", "{}"))
	denied("a minion's node certificate makes itself a user", minion.UserAdd(ctx, ep, "minion-1"))
	denied("a minion's node certificate takes a snapshot", minion.Snapshot(ctx, ep, func(etcdrpc.SnapshotChunk) error { return nil }))
	_, err = minion.MemberAdd(ctx, ep, []string{"https://127.0.0.9:2380"}, false)
	denied("a minion's node certificate adds an etcd member", err)
	_, _, err = flannel.Get(ctx, ep, "/registry/pods/default/p")
	denied("flannel reads /registry/", err)
	denied("flannel writes /registry/", flannel.Put(ctx, ep, "/registry/secrets/kube-system/x", "x"))
	denied("flannel writes beside its prefix", flannel.Put(ctx, ep, "/coreos.com/networkx", "x"))
	denied("flannel grants itself more", flannel.RoleGrant(ctx, ep, roles.EtcdFlannel.CommonName, etcdrpc.PermReadWrite, "/", "\x00"))
	if st, err = root.RPC.Status(ctx, ep); err != nil {
		t.Fatal(err)
	}
	denied("a minion's node certificate compacts etcd", minion.Compact(ctx, ep, st.Revision))
	denied("flannel compacts etcd", flannel.Compact(ctx, ep, st.Revision))

	// Nothing refused was written.
	for _, k := range []string{"/registry/clusterrolebindings/evil", "/registry/secrets/kube-system/x", "/coreos.com/networkx"} {
		if _, found, err := root.RPC.Get(ctx, ep, k); err != nil || found {
			t.Errorf("%s: found %v, %v", k, found, err)
		}
	}
	if v, _, err := root.RPC.Get(ctx, ep, roles.FlannelPrefix+"/config"); err != nil || v != `{"Network":"10.244.0.0/16"}` {
		t.Errorf("flannel's config is %q (%v)", v, err)
	}

	// The JSON gateway takes no identity from a certificate: etcd refuses
	// such requests once authorisation is on.
	kp, _ := ca.Issue(pki.Request{CommonName: roles.EtcdAPIServer.CommonName, Client: true})
	c, _ := tls.X509KeyPair([]byte(kp.Cert), []byte(kp.Key))
	gw := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{c}}}}
	res, err := gw.Post(ep+"/v3/kv/range", "application/json", strings.NewReader(`{"key":"L3JlZ2lzdHJ5Lw=="}`))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode == http.StatusOK {
		t.Errorf("the JSON gateway answered a certificate-named client: %s", res.Status)
	}

	// A certificate from another CA gets no further than TLS.
	other, _, err := pki.LoadOrCreate(filepath.Join(dir, "other"), "other", nil)
	if err != nil {
		t.Fatal(err)
	}
	okp, _ := other.Issue(pki.Request{CommonName: roles.EtcdMember.CommonName, Client: true})
	oc, _ := tls.X509KeyPair([]byte(okp.Cert), []byte(okp.Key))
	stranger := etcdrpc.New(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{oc}})
	if _, err := stranger.MemberList(ctx, ep); err == nil || etcdrpc.IsCode(err, etcdrpc.CodePermissionDenied) {
		t.Errorf("a certificate of another CA, named as the members' identity: %v, want a TLS refusal", err)
	}
	// The member's own identity still does what members do.
	if _, err := root.RPC.MemberList(ctx, ep); err != nil {
		t.Errorf("member list as the member: %v", err)
	}
}

// TestPromoteGoesToTheLeaderWithAuthOn runs three real etcd members as the
// etcd role does (client-certificate auth, EnsureAuth done), the third
// added as a learner, and promotes it the way the etcd-promote step does,
// with a follower listed first: the promotion must reach the leader. A
// follower forwards a promotion to the leader without the caller's
// certificate identity, so asked first it never promotes anyone (the e2e
// etcd scenario stalled on exactly this when a power cut had moved the
// leadership away from the first member).
func TestPromoteGoesToTheLeaderWithAuthOn(t *testing.T) {
	bin := etcdBinary(t)
	dir := t.TempDir()
	ca, _, err := pki.LoadOrCreate(filepath.Join(dir, "state"), "lab", nil)
	if err != nil {
		t.Fatal(err)
	}
	addrs := []string{"127.0.0.6", "127.0.0.7", "127.0.0.8"}
	write := fileWriter(t, dir)
	caFile := write("ca.pem", ca.CertPEM())
	logs := map[string]*bytes.Buffer{}
	start := func(i int, state, initial string) {
		t.Helper()
		name, addr := fmt.Sprintf("etcd-%d", i+1), addrs[i]
		// 127.0.0.1 too: a peer's connections leave from it on loopback,
		// and etcd checks a peer's certificate against where it came from.
		kp, err := ca.Issue(pki.Request{CommonName: name, IPs: []netip.Addr{netip.MustParseAddr(addr), netip.MustParseAddr("127.0.0.1")}, Server: true, Client: true})
		if err != nil {
			t.Fatal(err)
		}
		cert, key := write(name+".pem", kp.Cert), write(name+"-key.pem", kp.Key)
		cmd := exec.Command(bin, "--name="+name, "--data-dir="+filepath.Join(dir, name),
			"--listen-peer-urls="+role.PeerURL(addr), "--listen-client-urls="+role.ClientURL(addr),
			"--advertise-client-urls="+role.ClientURL(addr), "--initial-advertise-peer-urls="+role.PeerURL(addr),
			"--initial-cluster="+initial, "--initial-cluster-state="+state, "--initial-cluster-token=promote",
			"--listen-metrics-urls=",
			"--cert-file="+cert, "--key-file="+key, "--trusted-ca-file="+caFile, "--client-cert-auth",
			"--peer-cert-file="+cert, "--peer-key-file="+key, "--peer-trusted-ca-file="+caFile, "--peer-client-cert-auth")
		logs[name] = &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = logs[name], logs[name]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert())
	kp, err := ca.Issue(pki.Request{CommonName: roles.EtcdMember.CommonName, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair([]byte(kp.Cert), []byte(kp.Key))
	if err != nil {
		t.Fatal(err)
	}
	e := &Etcd{RPC: etcdrpc.New(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{c}})}
	e.RPC.Timeout = 5 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ep := func(i int) string { return role.ClientURL(addrs[i]) }
	status := func(i int) etcdrpc.Status {
		t.Helper()
		for {
			st, err := e.RPC.Status(ctx, ep(i))
			if err == nil && st.Leader != 0 {
				return st
			}
			if ctx.Err() != nil {
				t.Fatalf("etcd-%d: no status with a leader: %v\n%s", i+1, err, logs[fmt.Sprintf("etcd-%d", i+1)])
			}
			time.Sleep(300 * time.Millisecond)
		}
	}

	two := fmt.Sprintf("etcd-1=%s,etcd-2=%s", role.PeerURL(addrs[0]), role.PeerURL(addrs[1]))
	start(0, "new", two)
	start(1, "new", two)
	status(0)
	status(1)
	if _, err := e.EnsureAuth(ctx, []string{ep(0)}); err != nil {
		t.Fatalf("EnsureAuth: %v", err)
	}
	ms, err := e.addLearner(ctx, ep(0), role.PeerURL(addrs[2]))
	if err != nil {
		t.Fatalf("add the learner: %v", err)
	}
	start(2, "existing", two+",etcd-3="+role.PeerURL(addrs[2]))
	status(2)

	// The endpoints in the order the step gives them: the follower
	// first, then the leader, the learner itself last.
	st := status(0)
	leader, follower := 0, 1
	if st.Leader != st.MemberID {
		leader, follower = 1, 0
	}
	eps := []string{ep(follower), ep(leader), ep(2)}
	if !slices.ContainsFunc(ms, func(m Member) bool { return m.IsLearner && slices.Contains(m.PeerURLs, role.PeerURL(addrs[2])) }) {
		t.Fatalf("etcd-3 is not a learner after its add: %+v", ms)
	}
	for {
		ok, err := e.PromoteSelf(ctx, eps, role.PeerURL(addrs[2]))
		if ok {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("etcd-3 never promoted with etcd-%d (the follower) asked first: %v", follower+1, err)
		}
		t.Logf("not yet: %v", err)
		time.Sleep(time.Second)
	}
	now, _, err := e.Members(ctx, eps)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range now {
		if m.IsLearner {
			t.Errorf("%s is still a learner: %+v", m.Name, now)
		}
	}
}

// fileWriter writes files of a test into dir (0600) and returns their
// paths.
func fileWriter(t *testing.T, dir string) func(name, data string) string {
	return func(name, data string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
}
