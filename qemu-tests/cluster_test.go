package qemutests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

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
	cred                string   // admin credentials from the site CA
	tlsArgs             []string // etcdctl's client certificate flags
}

// upScenario builds the stock images and brings up the qemu-lab site with
// only the named machines, as `plinth qemu up` would, in boot groups.
func upScenario(t *testing.T, ctx context.Context, name string, machines ...string) *scenario {
	t.Helper()
	dir := t.TempDir()
	art := filepath.Join(dir, "artifacts")
	plinth(t, ctx, "build", "--out", art,
		filepath.Join(srcDir, "images", "etcd.toml"), filepath.Join(srcDir, "images", "master.toml"), filepath.Join(srcDir, "images", "minion.toml"))
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
	c, err := lab.Up(ctx, lab.Config{Site: sc.siteDir, Artifacts: art, State: state, LogDir: logDir, Plinth: plinthBin,
		Name: name, Stall: 10 * time.Minute, Out: logWriter{t}})
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
		mem, _ := roles.Get(m.Role).MachineSize(0, 0)
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

// TestEtcdE2E netboots the qemu-lab site's three etcd members alone and
// checks what an operator would: every member healthy over TLS, plain HTTP
// refused, a fourth member added to the site joining the running cluster,
// and no sshd or unexpected port on any member. `make e2e` (PLINTH_E2E=1).
func TestEtcdE2E(t *testing.T) {
	if os.Getenv("PLINTH_E2E") == "" {
		t.Skip("the etcd scenario: make e2e (PLINTH_E2E=1)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	etcdctl := stackBinary(t, "etcdctl")
	sc := upScenario(t, ctx, "etcd", "etcd-1", "etcd-2", "etcd-3")
	etcds := sc.ofRole("etcd")
	sc.etcdHealthy(t, ctx, etcdctl, etcds)
	if out, err := inLab(ctx, sc.c.Lab, etcdctl, "--endpoints", "http://"+ip(etcds[0])+":2379", "--dial-timeout", "3s", "endpoint", "health"); err == nil {
		t.Errorf("etcd answered plain HTTP:\n%s", out)
	}
	noStrayListeners(t, ctx, sc.c, etcds...)

	// A fourth member, added to the profile, joins the running cluster.
	b, err := os.ReadFile(filepath.Join(sc.siteDir, "site.toml"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(sc.siteDir, ".site.toml.tmp")
	writeFile(t, tmp, string(b)+etcd4)
	if err := os.Rename(tmp, filepath.Join(sc.siteDir, "site.toml")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // the server polls the site every 2 s
	if err := sc.c.Boot(ctx, "etcd-4"); err != nil {
		t.Fatal(err)
	}
	ready4, _ := sc.c.ReadyAfter("etcd-4")
	figure(t, "etcd (%s): etcd-4 joined and ready %.0fs after QEMU start", qemu.Accel(ctx), ready4.Seconds())
	if sc.site, err = profiles.LoadSite(sc.siteDir); err != nil {
		t.Fatal(err)
	}
	etcds = sc.ofRole("etcd")
	sc.etcdHealthy(t, ctx, etcdctl, etcds)
	out, err := inLab(ctx, sc.c.Lab, etcdctl, append(sc.tlsArgs, "--endpoints", "https://"+ip(etcds[0])+":2379", "member", "list")...)
	if err != nil || strings.Count(out, ", started, ") != 4 || !strings.Contains(out, "etcd-4") {
		t.Fatalf("member list: %v\n%s", err, out)
	}
	t.Logf("etcd members:\n%s", out)
	noStrayListeners(t, ctx, sc.c, sc.site.Machine("etcd-4"))
}

// TestClusterE2E netboots one etcd member, the master and both minions of
// the qemu-lab site and checks what an operator would: etcd healthy over
// TLS, the API name resolving to the master, both minions Ready, a pod on
// each minion reaching the other's across flannel, and no sshd or
// unexpected port on any machine. `make e2e` (PLINTH_E2E=1).
func TestClusterE2E(t *testing.T) {
	if os.Getenv("PLINTH_E2E") == "" {
		t.Skip("the cluster scenario: make e2e (PLINTH_E2E=1)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
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

	if out, err := kubectl("get", "pods"); err != nil {
		t.Errorf("the API did not answer at the end: %v\n%s", err, out)
	}
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
