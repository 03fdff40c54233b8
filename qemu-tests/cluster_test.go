package qemutests

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/lab"
	"github.com/plinth-dev/plinth/lab/qemu"
	"github.com/plinth-dev/plinth/profiles"
	"github.com/plinth-dev/plinth/roles"
)

// etcd4 is a fourth etcd member, added to the etcd scenario's site while
// its cluster runs.
const etcd4 = `
[[machine]]
name    = "etcd-4"
mac     = "52:54:00:00:01:04"
role    = "etcd"
image   = "etcd"
address = "10.77.0.14/24"
`

const apiName = "api.lab.example"

// The e2e scenarios each boot only the machines they need from the QEMU lab
// site (profiles/examples/qemu-lab): two host cores under TCG do not carry
// its six machines at once. With three etcd members and a two-vCPU master
// booted together, etcd's peers saw 1.8 s round trips and TLS handshake
// timeouts, and kube-apiserver's etcd reads timed out for 20 minutes.

// scenario is one e2e scenario's running lab.
type scenario struct {
	c                   *lab.Cluster
	site                *profiles.Site
	siteDir, siteHeader string
	state, logDir       string   // the boot server's state; consoles and its log
	disks               string   // the lab's state disk files
	cred                string   // admin credentials from the site CA
	tlsArgs             []string // etcdctl's client certificate flags
}

// upScenario builds the stock images and brings up the qemu-lab site with
// only the named machines, as `plinth qemu up` would, in boot groups.
func upScenario(t *testing.T, ctx context.Context, name string, machines ...string) *scenario {
	t.Helper()
	return upScenarioWith(t, ctx, scenarioOpts{}, name, machines...)
}

// scenarioOpts changes what upScenarioWith boots.
type scenarioOpts struct {
	specs  []string            // image specs to build (nil: the stock etcd, master and minion)
	site   func(string) string // edits the scenario's site.toml
	memory int                 // MiB for every machine (0: each role's)
	cpus   int                 // vCPUs for every machine (0: each role's)
}

func upScenarioWith(t *testing.T, ctx context.Context, o scenarioOpts, name string, machines ...string) *scenario {
	t.Helper()
	dir := t.TempDir()
	art := filepath.Join(dir, "artifacts")
	specs := o.specs
	if specs == nil {
		specs = []string{filepath.Join(srcDir, "images", "etcd.toml"), filepath.Join(srcDir, "images", "master.toml"), filepath.Join(srcDir, "images", "minion.toml")}
	}
	plinth(t, ctx, append([]string{"build", "--out", art}, specs...)...)
	b, err := os.ReadFile(filepath.Join(srcDir, "profiles", "examples", "qemu-lab", "site.toml"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(b), "\n[[machine]]")
	sc := &scenario{siteDir: filepath.Join(dir, "site"), siteHeader: blocks[0] + "\n"}
	site := sc.siteHeader
	for _, blk := range blocks[1:] {
		for _, m := range machines {
			if strings.Contains(blk, fmt.Sprintf("name    = %q", m)) {
				site += "\n[[machine]]" + blk
			}
		}
	}
	if o.site != nil {
		site = o.site(site)
	}
	writeFile(t, filepath.Join(sc.siteDir, "site.toml"), site)
	if sc.site, err = profiles.LoadSite(sc.siteDir); err != nil {
		t.Fatal(err)
	}
	if len(sc.site.Machines) != len(machines) {
		t.Fatalf("the qemu-lab site lacks some of %v", machines)
	}
	state := filepath.Join(dir, "state")
	logDir := filepath.Join(srcDir, "build", "e2e", name)
	os.RemoveAll(logDir)
	sc.state, sc.logDir, sc.disks = state, logDir, filepath.Join(dir, "disks")
	// Blank state disks for this run, kept across the power cuts in it.
	c, err := lab.Up(ctx, lab.Config{Site: sc.siteDir, Artifacts: art, State: state, LogDir: logDir, Plinth: plinthBin,
		Disks: sc.disks, Name: name, Stall: 10 * time.Minute, Memory: o.memory, CPUs: o.cpus, Out: logWriter{t}})
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	if err != nil {
		t.Fatalf("%v\n(consoles and the server log are in %s)", err, logDir)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("consoles and the server log are in %s", logDir)
		}
	})
	sc.c = c
	for _, m := range sc.site.Machines {
		ready, _ := c.ReadyAfter(m.Name)
		mem, _ := roles.Get(m.Role).MachineSize(o.memory, 0)
		figure(t, "%s (%s): %s (%s) ready %.0fs after QEMU start, QEMU RSS %d MiB of %d MiB",
			name, qemu.Accel(ctx), m.Name, m.Role, ready.Seconds(), rssMiB(c.VM(m.Name).Pid()), mem)
	}
	// Admin credentials from the boot server's CA, as an operator gets them.
	sc.cred = filepath.Join(dir, "cred")
	plinth(t, ctx, "credentials", "--site", sc.siteDir, "--state", state, "--out", sc.cred)
	sc.tlsArgs = []string{"--cacert", filepath.Join(sc.cred, "ca.pem"), "--cert", filepath.Join(sc.cred, "admin.pem"), "--key", filepath.Join(sc.cred, "admin-key.pem")}
	return sc
}

func (sc *scenario) ofRole(role string) []*profiles.Machine {
	var ms []*profiles.Machine
	for _, m := range sc.site.Machines {
		if m.Role == role {
			ms = append(ms, m)
		}
	}
	return ms
}

func ip(m *profiles.Machine) string { return strings.Split(m.Address, "/")[0] }

// etcdHealthy checks every member of ms answers health over TLS.
func (sc *scenario) etcdHealthy(t *testing.T, ctx context.Context, etcdctl string, ms []*profiles.Machine) {
	t.Helper()
	var eps []string
	for _, m := range ms {
		eps = append(eps, "https://"+ip(m)+":2379")
	}
	out, err := inLab(ctx, sc.c.Lab, etcdctl, append(sc.tlsArgs, "--endpoints", strings.Join(eps, ","), "endpoint", "health")...)
	if err != nil || strings.Count(out, "is healthy") != len(eps) {
		t.Fatalf("etcdctl endpoint health: %v\n%s", err, out)
	}
}

// TestEtcdE2E netboots the qemu-lab site's three etcd members alone, on
// blank state disks, and checks what an operator would: every member
// healthy over TLS, plain HTTP refused; after a power cut (every VM killed
// at once) the same cluster with its data and no membership change; a
// member whose disk is replaced by a blank one rejoining as a learner and
// promoted with no write lost; a fourth member whose disk holds a foreign
// filesystem leaving it untouched and saying why, then joining on a blank
// disk; no sshd or unexpected port. `make e2e` (PLINTH_E2E=1).
func TestEtcdE2E(t *testing.T) {
	if os.Getenv("PLINTH_E2E") == "" {
		t.Skip("the etcd scenario: make e2e (PLINTH_E2E=1)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	etcdctl := stackBinary(t, "etcdctl")
	names := []string{"etcd-1", "etcd-2", "etcd-3"}
	sc := upScenario(t, ctx, "etcd", names...)
	etcds := sc.ofRole("etcd")
	sc.stateSays(t, ctx, "blank; formatted", etcds...)
	sc.etcdHealthy(t, ctx, etcdctl, etcds)
	if out, err := inLab(ctx, sc.c.Lab, etcdctl, "--endpoints", "http://"+ip(etcds[0])+":2379", "--dial-timeout", "3s", "endpoint", "health"); err == nil {
		t.Errorf("etcd answered plain HTTP:\n%s", out)
	}
	noStrayListeners(t, ctx, sc.c, etcds...)
	if out, err := sc.etcdctl(ctx, etcdctl, etcds, "put", "/plinth/e2e/before-cut", "1"); err != nil {
		t.Fatalf("put: %v\n%s", err, out)
	}
	id, ids, _ := sc.etcdIdentity(t, ctx, etcdctl, etcds[0])
	sc.fsyncFigure(t, ctx, "etcd ("+qemu.Accel(ctx)+")", etcds[0])

	// A power cut: every member killed at once, then powered on again.
	// The members start with their data and re-form the same cluster.
	seen := map[string]int{}
	for _, n := range names {
		seen[n] = len(sc.events(t, n, "etcd"))
	}
	if err := sc.c.PowerCut(); err != nil {
		t.Fatal(err)
	}
	on := time.Now()
	if err := sc.c.Start(ctx, names...); err != nil {
		t.Fatal(err)
	}
	if err := sc.c.WaitReady(ctx, names...); err != nil {
		t.Fatal(err)
	}
	figure(t, "etcd (%s): after a power cut, all 3 members ready %.0fs after power-on", qemu.Accel(ctx), time.Since(on).Seconds())
	sc.stateSays(t, ctx, "this machine's state partition", etcds...)
	sc.etcdHealthy(t, ctx, etcdctl, etcds)
	id2, ids2, _ := sc.etcdIdentity(t, ctx, etcdctl, etcds[1])
	if id2 != id || !maps.Equal(ids2, ids) {
		t.Errorf("after the power cut: cluster %s members %v, was cluster %s members %v", id2, ids2, id, ids)
	}
	for _, n := range names {
		ev := since(sc.events(t, n, "etcd"), seen[n])
		if !anyContains(ev, "starting as itself") || anyContains(ev, "added") || anyContains(ev, "removed") || anyContains(ev, "founding") {
			t.Errorf("%s after the power cut: events %q", n, ev)
		}
	}
	if out, err := sc.etcdctl(ctx, etcdctl, etcds, "get", "/plinth/e2e/before-cut", "--print-value-only"); err != nil || strings.TrimSpace(out) != "1" {
		t.Errorf("the key written before the power cut: %q %v", out, err)
	}

	// etcd-2's disk is replaced by a blank one while writes go on: it
	// rejoins as a learner and is promoted; no acknowledged write is lost.
	// etcd-3 leads first: etcd-2's promotion step asks etcd-1 first, and a
	// follower forwards a promotion without the caller's certificate
	// identity, which etcd refuses with authorisation on; the step must
	// find the leader itself. Left to the power cut, etcd-1 led now and
	// then, and the scenario did not test this.
	sc.moveLeader(t, ctx, etcdctl, etcds, "etcd-3", ids["etcd-3"])
	if err := sc.c.Kill("etcd-2"); err != nil {
		t.Fatal(err)
	}
	if err := sc.c.ReplaceDisk("etcd-2"); err != nil {
		t.Fatal(err)
	}
	seen["etcd-2"] = len(sc.events(t, "etcd-2", "etcd"))
	others := []*profiles.Machine{sc.site.Machine("etcd-1"), sc.site.Machine("etcd-3")}
	stop := make(chan struct{})
	written := make(chan []string)
	go func() {
		var ok []string
		for i := 0; ; i++ {
			select {
			case <-stop:
				written <- ok
				return
			case <-time.After(time.Second):
			}
			k := fmt.Sprintf("/plinth/e2e/during-rejoin/%04d", i)
			if _, err := sc.etcdctl(ctx, etcdctl, others, "put", k, "x"); err == nil {
				ok = append(ok, k)
			}
		}
	}()
	if err := sc.c.Start(ctx, "etcd-2"); err != nil {
		t.Fatal(err)
	}
	if err := sc.c.WaitReady(ctx, "etcd-2"); err != nil {
		t.Fatal(err)
	}
	close(stop)
	keys := <-written
	ev := since(sc.events(t, "etcd-2", "etcd"), seen["etcd-2"])
	if !anyContains(ev, "removed its old self, added again as a learner") || !anyContains(ev, "promoted from learner") {
		t.Errorf("etcd-2 on a blank disk: events %q", ev)
	}
	ready2, _ := sc.c.ReadyAfter("etcd-2")
	figure(t, "etcd (%s): etcd-2 on a blank disk rejoined, was promoted and ready %.0fs after power-on; %d writes acknowledged meanwhile", qemu.Accel(ctx), ready2.Seconds(), len(keys))
	sc.etcdHealthy(t, ctx, etcdctl, etcds)
	id3, ids3, learners := sc.etcdIdentity(t, ctx, etcdctl, etcds[0])
	if id3 != id || len(ids3) != 3 || len(learners) != 0 || ids3["etcd-2"] == ids["etcd-2"] || ids3["etcd-1"] != ids["etcd-1"] || ids3["etcd-3"] != ids["etcd-3"] {
		t.Errorf("after etcd-2 rejoined: cluster %s members %v learners %v; before: cluster %s members %v", id3, ids3, learners, id, ids)
	}
	out, err := inLab(ctx, sc.c.Lab, etcdctl, append(sc.tlsArgs, "--endpoints", "https://"+ip(sc.site.Machine("etcd-2"))+":2379",
		"get", "--prefix", "/plinth/e2e/", "--keys-only", "--consistency=s")...)
	if err != nil {
		t.Fatalf("read etcd-2: %v\n%s", err, out)
	}
	for _, k := range append(keys, "/plinth/e2e/before-cut") {
		if !strings.Contains(out, k+"\n") {
			t.Errorf("etcd-2 lacks %s, acknowledged while it rejoined", k)
		}
	}

	// A fourth member, added to the site, whose disk holds somebody's
	// filesystem: it leaves the disk as it was and says why.
	b, err := os.ReadFile(filepath.Join(sc.siteDir, "site.toml"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(sc.siteDir, ".site.toml.tmp")
	writeFile(t, tmp, string(b)+etcd4)
	if err := os.Rename(tmp, filepath.Join(sc.siteDir, "site.toml")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)                    // the server polls the site every 2 s
	disk4 := filepath.Join(sc.disks, "etcd-4.raw") // where the lab keeps it; not booted yet
	foreignDisk(t, disk4)
	was := headTail(t, disk4)
	if err := sc.c.Start(ctx, "etcd-4"); err != nil {
		t.Fatal(err)
	}
	var why string
	waitFor(t, ctx, "etcd-4 refusing its disk", func() bool {
		list, err := sc.c.Machines(ctx)
		if err != nil {
			return false
		}
		why = list["etcd-4"].Fields["state"] + " " + list["etcd-4"].LastEvent
		return strings.Contains(why, "not plinth's, left untouched")
	})
	t.Logf("etcd-4 says: %s", why)
	if !anyContains(sc.events(t, "etcd-4", "error"), "not plinth's, left untouched") {
		t.Errorf("no error event for the refused disk")
	}
	if err := sc.c.Kill("etcd-4"); err != nil {
		t.Fatal(err)
	}
	if now := headTail(t, disk4); now != was {
		t.Errorf("etcd-4's foreign disk was changed")
	}
	if out, err := sc.etcdctl(ctx, etcdctl, etcds, "member", "list"); err != nil || strings.Contains(out, "10.77.0.14") {
		t.Errorf("etcd-4 with a refused disk is a member: %v\n%s", err, out)
	}

	// On a blank disk it joins as a learner and is promoted.
	if err := sc.c.ReplaceDisk("etcd-4"); err != nil {
		t.Fatal(err)
	}
	if err := sc.c.Start(ctx, "etcd-4"); err != nil {
		t.Fatal(err)
	}
	if err := sc.c.WaitReady(ctx, "etcd-4"); err != nil {
		t.Fatal(err)
	}
	ready4, _ := sc.c.ReadyAfter("etcd-4")
	figure(t, "etcd (%s): etcd-4 joined as a learner, was promoted and ready %.0fs after QEMU start", qemu.Accel(ctx), ready4.Seconds())
	ev = sc.events(t, "etcd-4", "etcd")
	if !anyContains(ev, "added as a learner") || !anyContains(ev, "promoted from learner") {
		t.Errorf("etcd-4: events %q", ev)
	}
	if sc.site, err = profiles.LoadSite(sc.siteDir); err != nil {
		t.Fatal(err)
	}
	etcds = sc.ofRole("etcd")
	sc.etcdHealthy(t, ctx, etcdctl, etcds)
	out, err = sc.etcdctl(ctx, etcdctl, etcds[:1], "member", "list")
	if err != nil || strings.Count(out, ", started, ") != 4 || !strings.Contains(out, "etcd-4") || strings.Contains(out, "true\n") {
		t.Fatalf("member list: %v\n%s", err, out)
	}
	t.Logf("etcd members:\n%s", out)
	noStrayListeners(t, ctx, sc.c, sc.site.Machine("etcd-4"))
}

// TestClusterE2E netboots one etcd member, the master and both minions of
// the qemu-lab site (etcd-1 and minion-1 on blank state disks, minion-2
// without one) and checks what an operator would: etcd healthy over TLS,
// the API name resolving to the master, both minions Ready, a pod on each
// minion reaching the other's across flannel, no sshd or unexpected port
// on any machine; then that the cluster survives a power cut and comes
// back from an etcd snapshot (survivesPowerCutAndRestore). `make e2e`
// (PLINTH_E2E=1).
func TestClusterE2E(t *testing.T) {
	if os.Getenv("PLINTH_E2E") == "" {
		t.Skip("the cluster scenario: make e2e (PLINTH_E2E=1)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Minute)
	defer cancel()
	etcdctl, kubectlBin := stackBinary(t, "etcdctl"), stackBinary(t, "kubectl")
	sc := upScenario(t, ctx, "cluster", "etcd-1", "master-1", "minion-1", "minion-2")
	l, cred := sc.c.Lab, sc.cred
	master := sc.ofRole("master")[0]
	apiServer := "https://" + ip(master) + ":" + strconv.Itoa(roles.DefaultAPIPort)
	kubectl := func(args ...string) (string, error) {
		base := []string{"--kubeconfig", filepath.Join(cred, "kubeconfig"), "--server", apiServer, "--tls-server-name", apiName}
		return inLab(ctx, l, kubectlBin, append(base, args...)...)
	}
	sc.etcdHealthy(t, ctx, etcdctl, sc.ofRole("etcd"))

	// The API name resolves, through the boot server, to the ready master.
	addrs, err := l.Resolve(ctx, apiName, l.Server+":53")
	if err != nil || !slices.Equal(addrs, []string{ip(master)}) {
		t.Errorf("%s resolves to %v (%v), want the master %s", apiName, addrs, err, ip(master))
	}

	// Both minions Ready.
	waitFor(t, ctx, "both minions Ready", func() bool {
		out, err := kubectl("get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type==\"Ready\")].status} {end}")
		return err == nil && strings.Contains(out, "minion-1=True") && strings.Contains(out, "minion-2=True")
	})
	out, _ := kubectl("get", "nodes", "-o", "wide")
	t.Logf("kubectl get nodes:\n%s", out)

	// A pod on each minion, each reaching the other's pod IP. Pods need
	// the namespace's default service account, which the controller
	// manager creates shortly after it starts.
	waitFor(t, ctx, "the default service account", func() bool {
		_, err := kubectl("get", "serviceaccount", "default")
		return err == nil
	})
	for i, n := range []string{"minion-1", "minion-2"} {
		pod := fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"probe-%d"},"spec":{"nodeName":%q,
"containers":[{"name":"probe","image":"plinth.local/probe:1","imagePullPolicy":"Never"}]}}`, i+1, n)
		if out, err := kubectlStdin(ctx, l, kubectlBin, cred, apiServer, pod, "apply", "-f", "-"); err != nil {
			t.Fatalf("create pod on %s: %v\n%s", n, err, out)
		}
	}
	podIP := map[string]string{}
	waitFor(t, ctx, "both probe pods Running", func() bool {
		out, err := kubectl("get", "pods", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.phase}={.status.podIP} {end}")
		if err != nil {
			return false
		}
		for _, f := range strings.Fields(out) {
			p := strings.Split(f, "=")
			if len(p) == 3 && p[1] == "Running" && p[2] != "" {
				podIP[p[0]] = p[2]
			}
		}
		return len(podIP) == 2
	})
	t.Logf("pod IPs: %v", podIP)
	for _, pair := range [][2]string{{"probe-1", "probe-2"}, {"probe-2", "probe-1"}} {
		var out string
		var err error
		waitFor(t, ctx, pair[0]+" reaching "+pair[1], func() bool {
			// busybox nc, not wget: Debian bookworm's static busybox
			// (1.35.0-4+deb12u1) segfaults in wget, in a pod and on a host.
			get := `printf 'GET /cgi-bin/hostname HTTP/1.0\r\n\r\n' | busybox nc -w 5 ` + podIP[pair[1]] + ` 8080`
			out, err = kubectl("exec", pair[0], "--", "busybox", "sh", "-c", get)
			return err == nil && strings.Contains(out, pair[1])
		})
		t.Logf("%s -> %s (%s): %s", pair[0], pair[1], podIP[pair[1]], strings.TrimSpace(out))
	}

	// No sshd and no port beyond the role's on any machine.
	noStrayListeners(t, ctx, sc.c, sc.site.Machines...)

	sc.clusterDNSAndServices(t, ctx, kubectl, func(obj string) (string, error) {
		return kubectlStdin(ctx, l, kubectlBin, cred, apiServer, obj, "apply", "-f", "-")
	}, []string{"probe-1", "probe-2"})

	sc.survivesPowerCutAndRestore(t, ctx, etcdctl, kubectl)

	if out, err := kubectl("get", "pods"); err != nil {
		t.Errorf("the API did not answer at the end: %v\n%s", err, out)
	}
}

// survivesPowerCutAndRestore: a ConfigMap and a Deployment; every VM
// killed at once and powered on again: the same etcd cluster (ID and
// members), the ConfigMap, the Deployment's pods Running; then a snapshot,
// the etcd member's disk wiped, and `plinth etcd restore` bringing the
// ConfigMap back.
func (sc *scenario) survivesPowerCutAndRestore(t *testing.T, ctx context.Context, etcdctl string, kubectl func(...string) (string, error)) {
	t.Helper()
	etcd1 := sc.site.Machine("etcd-1")
	sc.stateSays(t, ctx, "blank; formatted", etcd1, sc.site.Machine("minion-1"))
	sc.stateSays(t, ctx, "no state disk", sc.site.Machine("minion-2"))
	if out, err := kubectl("create", "configmap", "plinth-e2e", "--from-literal=kept=before-the-cut"); err != nil {
		t.Fatalf("create configmap: %v\n%s", err, out)
	}
	if out, err := kubectl("create", "deployment", "web", "--image=plinth.local/probe:1", "--replicas=2"); err != nil {
		t.Fatalf("create deployment: %v\n%s", err, out)
	}
	// (The image is baked into the minions: IfNotPresent never pulls it.)
	webRunning := func() bool {
		out, err := kubectl("get", "deployment", "web", "-o", "jsonpath={.status.readyReplicas}/{.status.replicas}")
		return err == nil && out == "2/2"
	}
	waitFor(t, ctx, "the Deployment's 2 pods ready", webRunning)
	id, ids, _ := sc.etcdIdentity(t, ctx, etcdctl, etcd1)
	sc.fsyncFigure(t, ctx, "cluster ("+qemu.Accel(ctx)+")", etcd1)

	// The power cut.
	var names []string
	for _, m := range sc.site.Machines {
		names = append(names, m.Name)
	}
	seen := len(sc.events(t, "etcd-1", "etcd"))
	if err := sc.c.PowerCut(); err != nil {
		t.Fatal(err)
	}
	on := time.Now()
	if err := sc.c.Start(ctx, names...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the API serving after the power cut", func() bool {
		out, err := kubectl("get", "--raw", "/readyz")
		return err == nil && strings.TrimSpace(out) == "ok"
	})
	figure(t, "cluster (%s): power cut of all %d machines: the API serving again %.0fs after power-on", qemu.Accel(ctx), len(names), time.Since(on).Seconds())
	// How often the API server started before it served: it exits when a
	// post-start hook (RBAC's default roles, the service IP repair) cannot
	// finish within its 30 s, which a starved CPU makes likely.
	sc.apiServerStarts(t, ctx, "master-1", "after the power cut")
	if err := sc.c.WaitReady(ctx, names...); err != nil {
		t.Fatal(err)
	}
	figure(t, "cluster (%s): power cut: every machine ready again %.0fs after power-on", qemu.Accel(ctx), time.Since(on).Seconds())
	sc.stateSays(t, ctx, "this machine's state partition", etcd1, sc.site.Machine("minion-1"))
	id2, ids2, _ := sc.etcdIdentity(t, ctx, etcdctl, etcd1)
	if id2 != id || !maps.Equal(ids2, ids) {
		t.Errorf("after the power cut: cluster %s members %v, was cluster %s members %v", id2, ids2, id, ids)
	}
	if ev := since(sc.events(t, "etcd-1", "etcd"), seen); !anyContains(ev, "starting as itself") || anyContains(ev, "founding") {
		t.Errorf("etcd-1 after the power cut: events %q", ev)
	}
	if out, err := kubectl("get", "configmap", "plinth-e2e", "-o", "jsonpath={.data.kept}"); err != nil || out != "before-the-cut" {
		t.Errorf("the ConfigMap after the power cut: %q %v", out, err)
	}
	waitFor(t, ctx, "the Deployment's 2 pods ready after the power cut", webRunning)
	out, _ := kubectl("get", "pods", "-o", "wide")
	t.Logf("pods after the power cut:\n%s", out)

	// A snapshot, taken the way an operator does from a host that reaches
	// etcd; then a write the snapshot does not have.
	etcdutl := stackBinary(t, "etcdutl")
	snapOut, err := inLab(ctx, sc.c.Lab, plinthBin, "etcd", "snapshot", "--site", sc.siteDir, "--state", sc.state, "--etcdutl", etcdutl)
	if err != nil {
		t.Fatalf("plinth etcd snapshot: %v\n%s", err, snapOut)
	}
	t.Logf("plinth etcd snapshot:\n%s", snapOut)
	snaps, _ := filepath.Glob(filepath.Join(sc.state, "etcd", "snapshots", "*.db"))
	if len(snaps) == 0 {
		t.Fatalf("no snapshot in %s", filepath.Join(sc.state, "etcd", "snapshots"))
	}
	if out, err := kubectl("create", "configmap", "after-the-snapshot", "--from-literal=x=y"); err != nil {
		t.Fatalf("create configmap: %v\n%s", err, out)
	}

	// Every etcd disk lost: the member is killed, its disk replaced, the
	// snapshot is chosen, the member powered on.
	if err := sc.c.Kill("etcd-1"); err != nil {
		t.Fatal(err)
	}
	if err := sc.c.ReplaceDisk("etcd-1"); err != nil {
		t.Fatal(err)
	}
	if out, err := runPlinth(ctx, "etcd", "restore", "--site", sc.siteDir, "--state", sc.state, "--etcdutl", etcdutl, snaps[len(snaps)-1]); err != nil {
		t.Fatalf("plinth etcd restore: %v\n%s", err, out)
	} else {
		t.Logf("plinth etcd restore:\n%s", out)
	}
	seen = len(sc.events(t, "etcd-1", "etcd"))
	on = time.Now()
	if err := sc.c.Start(ctx, "etcd-1"); err != nil {
		t.Fatal(err)
	}
	if err := sc.c.WaitReady(ctx, "etcd-1"); err != nil {
		t.Fatal(err)
	}
	if ev := since(sc.events(t, "etcd-1", "etcd"), seen); !anyContains(ev, "restoring it") {
		t.Errorf("etcd-1 on a blank disk with a restore offered: events %q", ev)
	}
	var kept string
	waitFor(t, ctx, "the ConfigMap back from the snapshot", func() bool {
		kept, err = kubectl("get", "configmap", "plinth-e2e", "-o", "jsonpath={.data.kept}")
		return err == nil && kept == "before-the-cut"
	})
	figure(t, "cluster (%s): etcd restored from a snapshot; the ConfigMap read back %.0fs after the member's power-on", qemu.Accel(ctx), time.Since(on).Seconds())
	if out, err := kubectl("get", "configmap", "after-the-snapshot"); err == nil || !strings.Contains(out, "NotFound") {
		t.Errorf("a ConfigMap written after the snapshot survived the restore: %v\n%s", err, out)
	}
	waitFor(t, ctx, "the Deployment's 2 pods ready after the restore", webRunning)
}

// noStrayListeners checks the agents' reports: nothing listens beyond
// the role's ports, and nothing on SSH's.
func noStrayListeners(t *testing.T, ctx context.Context, c *lab.Cluster, ms ...*profiles.Machine) {
	t.Helper()
	list, err := c.Machines(ctx)
	if err != nil {
		t.Errorf("the boot server's machines: %v", err)
		return
	}
	for _, m := range ms {
		f := list[m.Name].Fields
		listen, ok := f["listen"]
		if !ok {
			t.Errorf("%s: the agent reported no listeners (fields %v)", m.Name, f)
			continue
		}
		if u := f["unexpected"]; u != "" {
			t.Errorf("%s: unexpected listeners %s (all: %s)", m.Name, u, listen)
		}
		if slices.Contains(strings.Fields(listen), "tcp/22") {
			t.Errorf("%s listens on tcp/22", m.Name)
		}
		t.Logf("%s listens on: %s", m.Name, listen)
	}
}

// inLab runs a program inside the lab's network namespace.
func inLab(ctx context.Context, l *lab.Lab, name string, args ...string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, "ip", append([]string{"netns", "exec", l.Name(), name}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func kubectlStdin(ctx context.Context, l *lab.Lab, kubectl, cred, server, stdin string, args ...string) (string, error) {
	base := []string{"netns", "exec", l.Name(), kubectl, "--kubeconfig", filepath.Join(cred, "kubeconfig"),
		"--server", server, "--tls-server-name", apiName}
	cmd := exec.CommandContext(ctx, "ip", append(base, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// stackBinary finds a binary the stack fixtures built
// ($PLINTH_FIXTURES/bin/<component>-<version>/NAME).
func stackBinary(t *testing.T, name string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(fixtures, "bin", "*", name))
	if len(m) == 0 {
		need(t, filepath.Join(fixtures, "bin", "<component>", name))
	}
	return m[len(m)-1]
}

// rssMiB is a process's resident memory.
func rssMiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return kb / 1024
		}
	}
	return 0
}

// logWriter passes the lab's progress lines to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// apiServerStarts logs how many times machine's kube-apiserver started in
// this boot and why each earlier run ended, from its journal.
func (sc *scenario) apiServerStarts(t *testing.T, ctx context.Context, machine, when string) {
	t.Helper()
	j := sc.freshJournal(t, ctx, machine, "kube-apiserver.service")
	if j == nil {
		return
	}
	starts := 0
	var fatal []string
	for l := range strings.Lines(string(j)) {
		switch {
		case strings.Contains(l, "Started kube-apiserver.service"):
			starts++
		case strings.Contains(l, "PostStartHook") && strings.Contains(l, "failed"):
			fatal = append(fatal, strings.TrimSpace(l))
		}
	}
	figure(t, "%s's kube-apiserver %s: started %d times in this boot, %d runs ended by a failed post-start hook (in the journal's newest %d KiB)", machine, when, starts, len(fatal), api.MaxLogBytes>>10)
	for _, l := range fatal {
		t.Logf("  %s", l)
	}
}
