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

// etcd4 is the fourth etcd member, added to the QEMU lab site (profiles/
// examples/qemu-lab: 3 etcd, 1 master, 2 minions) while the cluster runs.
const etcd4 = `
[[machine]]
name    = "etcd-4"
mac     = "52:54:00:00:01:04"
role    = "etcd"
image   = "etcd"
address = "10.77.0.14/24"
`

const apiName = "api.lab.example"

// TestClusterE2E netboots the QEMU lab site from the stock etcd, master and
// minion images with lab.Up, what `plinth qemu up` runs, and checks what an
// operator would: etcd healthy over TLS on every member, both minions
// Ready, a pod on each minion reaching the other's across flannel, the API
// name resolving to the master, a fourth etcd member joining the running
// cluster, and no sshd or unexpected port on any machine. It runs under
// `make e2e` (PLINTH_E2E=1).
func TestClusterE2E(t *testing.T) {
	if os.Getenv("PLINTH_E2E") == "" {
		t.Skip("the whole cluster: make e2e (PLINTH_E2E=1)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	etcdctlBin, kubectlBin := stackBinary(t, "etcdctl"), stackBinary(t, "kubectl")
	dir := t.TempDir()
	art := filepath.Join(dir, "artifacts")
	plinth(t, ctx, "build", "--out", art,
		filepath.Join(srcDir, "images", "etcd.toml"), filepath.Join(srcDir, "images", "master.toml"), filepath.Join(srcDir, "images", "minion.toml"))

	siteDir := filepath.Join(dir, "site")
	b, err := os.ReadFile(filepath.Join(srcDir, "profiles", "examples", "qemu-lab", "site.toml"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(siteDir, "site.toml"), string(b))
	state := filepath.Join(dir, "state")
	logDir := filepath.Join(srcDir, "build", "e2e")
	os.RemoveAll(logDir)

	// The machines booted in groups (etcd, then the master, then the
	// minions), each group once the one before is ready: all at once, six
	// TCG machines on two host cores starve etcd's heartbeats.
	c, err := lab.Up(ctx, lab.Config{Site: siteDir, Artifacts: art, State: state, LogDir: logDir, Plinth: plinthBin,
		Name: "e2e", Stall: 10 * time.Minute, Out: logWriter{t}})
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
	l := c.Lab
	site, err := profiles.LoadSite(siteDir)
	if err != nil {
		t.Fatal(err)
	}
	ip := func(m *profiles.Machine) string { return strings.Split(m.Address, "/")[0] }
	var all, etcds []*profiles.Machine
	var master *profiles.Machine
	for _, m := range site.Machines {
		all = append(all, m)
		switch m.Role {
		case "etcd":
			etcds = append(etcds, m)
		case "master":
			master = m
		}
	}
	if len(etcds) != 3 || master == nil || len(all) != 6 {
		t.Fatalf("the qemu-lab site changed: %d machines, %d etcd, master %v", len(all), len(etcds), master)
	}
	for _, m := range all {
		ready, _ := c.ReadyAfter(m.Name)
		mem, _ := roles.Get(m.Role).MachineSize(0, 0)
		figure(t, "cluster (%s): %s (%s) ready %.0fs after QEMU start, QEMU RSS %d MiB of %d MiB",
			qemu.Accel(ctx), m.Name, m.Role, ready.Seconds(), rssMiB(c.VM(m.Name).Pid()), mem)
	}
	apiServer := "https://" + ip(master) + ":" + strconv.Itoa(roles.DefaultAPIPort)

	// Admin credentials from the boot server's CA, as an operator gets them.
	cred := filepath.Join(dir, "cred")
	plinth(t, ctx, "credentials", "--site", siteDir, "--state", state, "--out", cred)
	tlsArgs := []string{"--cacert", filepath.Join(cred, "ca.pem"), "--cert", filepath.Join(cred, "admin.pem"), "--key", filepath.Join(cred, "admin-key.pem")}
	etcdctl := func(args ...string) (string, error) {
		return inLab(ctx, l, etcdctlBin, append(tlsArgs, args...)...)
	}
	kubectl := func(args ...string) (string, error) {
		base := []string{"--kubeconfig", filepath.Join(cred, "kubeconfig"), "--server", apiServer, "--tls-server-name", apiName}
		return inLab(ctx, l, kubectlBin, append(base, args...)...)
	}

	// etcd: every member healthy over TLS.
	var eps []string
	for _, m := range etcds {
		eps = append(eps, "https://"+ip(m)+":2379")
	}
	out, err := etcdctl("--endpoints", strings.Join(eps, ","), "endpoint", "health")
	if err != nil || strings.Count(out, "is healthy") != len(eps) {
		t.Fatalf("etcdctl endpoint health: %v\n%s", err, out)
	}
	// Plain HTTP or a client without a certificate gets nothing.
	if out, err := inLab(ctx, l, etcdctlBin, "--endpoints", "http://"+ip(etcds[0])+":2379", "--dial-timeout", "3s", "endpoint", "health"); err == nil {
		t.Errorf("etcd answered plain HTTP:\n%s", out)
	}

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
	out, _ = kubectl("get", "nodes", "-o", "wide")
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
	noStrayListeners(t, ctx, c, all...)

	// A fourth etcd member, added to the profile, joins the running cluster.
	tmp := filepath.Join(siteDir, ".site.toml.tmp")
	writeFile(t, tmp, string(b)+etcd4)
	if err := os.Rename(tmp, filepath.Join(siteDir, "site.toml")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // the server polls the site every 2 s
	if err := c.Boot(ctx, "etcd-4"); err != nil {
		t.Fatal(err)
	}
	ready4, _ := c.ReadyAfter("etcd-4")
	figure(t, "cluster (%s): etcd-4 joined and ready %.0fs after QEMU start", qemu.Accel(ctx), ready4.Seconds())
	eps = append(eps, "https://10.77.0.14:2379")
	out, err = etcdctl("--endpoints", strings.Join(eps, ","), "endpoint", "health")
	if err != nil || strings.Count(out, "is healthy") != 4 {
		t.Fatalf("etcdctl endpoint health with etcd-4: %v\n%s", err, out)
	}
	out, err = etcdctl("--endpoints", eps[0], "member", "list")
	if err != nil || strings.Count(out, ", started, ") != 4 || !strings.Contains(out, "etcd-4") {
		t.Fatalf("member list: %v\n%s", err, out)
	}
	t.Logf("etcd members:\n%s", out)
	// The cluster kept serving: the API still answers. Under TCG the
	// joining member's boot starves the master's CPU, and one run saw a
	// single TLS handshake time out (kubectl's 10 s), so it gets three tries
	// 20 s apart before that counts as the API being down.
	var apiErr error
	for try := 0; try < 3; try++ {
		var out string
		if out, apiErr = kubectl("get", "pods"); apiErr == nil {
			break
		}
		t.Logf("kubectl after the join (try %d): %v\n%s", try+1, apiErr, out)
		time.Sleep(20 * time.Second)
	}
	if apiErr != nil {
		t.Errorf("the API did not answer after the join: %v", apiErr)
	}
	if site, err = profiles.LoadSite(siteDir); err != nil {
		t.Fatal(err)
	}
	noStrayListeners(t, ctx, c, site.Machine("etcd-4"))
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
