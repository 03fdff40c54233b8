package qemutests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver"
	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/lab"
	"github.com/plinth-dev/plinth/lab/qemu"
)

// clusterMachine is one VM of the e2e cluster.
type clusterMachine struct {
	name, mac, role, ip string
	memory              int
}

// cpus is the machine's vCPUs: two for a master, as plinth qemu up gives it.
func (m clusterMachine) cpus() int {
	if m.role == "master" {
		return 2
	}
	return 1
}

// The QEMU lab site (profiles/examples/qemu-lab): 3 etcd, 1 master, 2
// minions; a fourth etcd member is added while the cluster runs.
var (
	clusterMachines = []clusterMachine{
		{"etcd-1", "52:54:00:00:01:01", "etcd", "10.77.0.11", 768},
		{"etcd-2", "52:54:00:00:01:02", "etcd", "10.77.0.12", 768},
		{"etcd-3", "52:54:00:00:01:03", "etcd", "10.77.0.13", 768},
		{"master-1", "52:54:00:00:02:01", "master", "10.77.0.21", 2048},
		{"minion-1", "52:54:00:00:03:01", "minion", "10.77.0.31", 1536},
		{"minion-2", "52:54:00:00:03:02", "minion", "10.77.0.32", 1536},
	}
	etcd4 = clusterMachine{"etcd-4", "52:54:00:00:01:04", "etcd", "10.77.0.14", 768}
)

const apiName = "api.lab.example"

// TestClusterE2E netboots the QEMU lab site from the stock etcd, master and
// minion images and checks what an operator would: etcd healthy over TLS on
// every member, both minions Ready, a pod on each minion reaching the
// other's across flannel, the API name resolving to the master, a fourth
// etcd member joining the running cluster, and no sshd or unexpected port
// on any machine. It runs under `make e2e` (PLINTH_E2E=1).
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

	l, err := lab.New(ctx, "e2e", "10.77.0.1/24", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	server := "http://" + l.Server + ":8080"
	srvLog := filepath.Join(dir, "serve.log")
	logf, err := os.Create(srvLog)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	if err := l.Start(ctx, logf, plinthBin, "serve", "--site", siteDir, "--artifacts", art, "--state", state,
		"--listen", l.Server+":8080", "--server-ip", l.Server, "--dhcp-interface", "br0", "--dns", l.Server+":53"); err != nil {
		t.Fatal(err)
	}
	logDir := filepath.Join(srcDir, "build", "e2e")
	os.RemoveAll(logDir)
	os.MkdirAll(logDir, 0o755)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(srvLog)
			os.WriteFile(filepath.Join(logDir, "serve.log"), b, 0o644)
			t.Logf("consoles and the server log are in %s", logDir)
		}
	})
	waitFor(t, ctx, "boot server", func() bool { _, err := l.Get(ctx, server+api.PathMachines); return err == nil })

	vms := map[string]*qemu.VM{}
	var mu sync.Mutex
	boot := func(m clusterMachine) {
		netdev, err := l.AddTap(ctx)
		if err != nil {
			t.Fatal(err)
		}
		vm, err := qemu.Start(ctx, t, qemu.Config{Name: m.name, Memory: m.memory, CPUs: m.cpus(), Boot: "n", Wrap: l.Wrap(), LogDir: logDir,
			NICs: []qemu.NIC{{MAC: m.mac, Netdev: netdev}}})
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		vms[m.name] = vm
		mu.Unlock()
	}
	// In the order an operator brings a rack up: etcd, then the masters,
	// then the minions. All at once works too, but six TCG machines on two
	// host cores starve etcd's heartbeats into constant elections.
	ready := map[string]time.Duration{}
	for _, role := range []string{"etcd", "master", "minion"} {
		var group []clusterMachine
		for _, m := range clusterMachines {
			if m.role == role {
				group = append(group, m)
				boot(m)
			}
		}
		for k, v := range waitReady(t, ctx, l, server, vms, group, 10*time.Minute, logDir) {
			ready[k] = v
		}
	}
	for _, m := range clusterMachines {
		figure(t, "cluster (%s): %s (%s) ready %.0fs after QEMU start, QEMU RSS %d MiB of %d MiB",
			qemu.Accel(ctx), m.name, m.role, ready[m.name].Seconds(), rssMiB(vms[m.name].Pid()), m.memory)
	}

	// Admin credentials from the boot server's CA, as an operator gets them.
	cred := filepath.Join(dir, "cred")
	plinth(t, ctx, "credentials", "--site", siteDir, "--state", state, "--out", cred)
	tlsArgs := []string{"--cacert", filepath.Join(cred, "ca.pem"), "--cert", filepath.Join(cred, "admin.pem"), "--key", filepath.Join(cred, "admin-key.pem")}
	etcdctl := func(args ...string) (string, error) {
		return inLab(ctx, l, etcdctlBin, append(tlsArgs, args...)...)
	}
	kubectl := func(args ...string) (string, error) {
		base := []string{"--kubeconfig", filepath.Join(cred, "kubeconfig"), "--server", "https://10.77.0.21:6443", "--tls-server-name", apiName}
		return inLab(ctx, l, kubectlBin, append(base, args...)...)
	}

	// etcd: every member healthy over TLS.
	var eps []string
	for _, m := range clusterMachines {
		if m.role == "etcd" {
			eps = append(eps, "https://"+m.ip+":2379")
		}
	}
	out, err := etcdctl("--endpoints", strings.Join(eps, ","), "endpoint", "health")
	if err != nil || strings.Count(out, "is healthy") != len(eps) {
		t.Fatalf("etcdctl endpoint health: %v\n%s", err, out)
	}
	// Plain HTTP or a client without a certificate gets nothing.
	if out, err := inLab(ctx, l, etcdctlBin, "--endpoints", "http://10.77.0.11:2379", "--dial-timeout", "3s", "endpoint", "health"); err == nil {
		t.Errorf("etcd answered plain HTTP:\n%s", out)
	}

	// The API name resolves, through the boot server, to the ready master.
	addrs, err := l.Resolve(ctx, apiName, l.Server+":53")
	if err != nil || !slices.Equal(addrs, []string{"10.77.0.21"}) {
		t.Errorf("%s resolves to %v (%v), want the master 10.77.0.21", apiName, addrs, err)
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
		if out, err := kubectlStdin(ctx, l, kubectlBin, cred, pod, "apply", "-f", "-"); err != nil {
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
	noStrayListeners(t, ctx, l, server, clusterMachines)

	// A fourth etcd member, added to the profile, joins the running cluster.
	site := string(b) + fmt.Sprintf("\n[[machine]]\nname    = %q\nmac     = %q\nrole    = \"etcd\"\nimage   = \"etcd\"\naddress = \"%s/24\"\n", etcd4.name, etcd4.mac, etcd4.ip)
	tmp := filepath.Join(siteDir, ".site.toml.tmp")
	writeFile(t, tmp, site)
	if err := os.Rename(tmp, filepath.Join(siteDir, "site.toml")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // the server polls the site every 2 s
	boot(etcd4)
	ready4 := waitReady(t, ctx, l, server, vms, []clusterMachine{etcd4}, 10*time.Minute, logDir)
	figure(t, "cluster (%s): etcd-4 joined and ready %.0fs after QEMU start", qemu.Accel(ctx), ready4[etcd4.name].Seconds())
	eps = append(eps, "https://"+etcd4.ip+":2379")
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
	noStrayListeners(t, ctx, l, server, []clusterMachine{etcd4})
}

// waitReady waits until the boot server shows each machine ready, and
// returns how long after its QEMU start each got there (to the 3 s poll).
// It fails when a machine not yet ready shows nothing new for stall (see
// lab.Progress), saving the journals the machine sent into logDir.
func waitReady(t *testing.T, ctx context.Context, l *lab.Lab, server string, vms map[string]*qemu.VM, ms []clusterMachine, stall time.Duration, logDir string) map[string]time.Duration {
	t.Helper()
	at := map[string]time.Duration{}
	progress := lab.NewProgress(stall)
	var last string
	for len(at) < len(ms) {
		select {
		case <-ctx.Done():
			t.Fatalf("machines not ready when the test's time ran out: %s", last)
		case <-time.After(3 * time.Second):
		}
		list := machines(ctx, l, server)
		var sb strings.Builder
		var waiting []string
		var sts []bootserver.MachineStatus
		for _, m := range ms {
			st := list[m.name]
			sts = append(sts, st)
			fmt.Fprintf(&sb, "\n  %s: %s %s", m.name, st.State, st.LastEvent)
			if _, ok := at[m.name]; !ok && st.State == "ready" {
				at[m.name] = vms[m.name].Uptime()
			}
			if st.State != "ready" {
				waiting = append(waiting, m.name)
			}
			if vms[m.name].Exited() {
				t.Fatalf("%s: QEMU exited", m.name)
			}
		}
		if s := sb.String(); s != last {
			t.Logf("boot state:%s", s)
			last = s
		}
		if stalled := progress.Observe(time.Now(), waiting, sts); len(stalled) > 0 {
			// What the agents said last, journal tails of units that are
			// down included, and their whole journals in logDir.
			for _, n := range stalled {
				st := list[n]
				b, _ := json.MarshalIndent(st.Fields, "    ", "  ")
				t.Logf("%s: %s\n    %s", n, st.LastEvent, b)
				for _, u := range st.Journals {
					if j, err := l.Get(ctx, server+api.LogPath(n, u)); err == nil {
						os.WriteFile(filepath.Join(logDir, n+"."+u+".log"), j, 0o644)
					}
				}
			}
			t.Fatalf("machines %v showed nothing new for %s: %s", stalled, stall, last)
		}
	}
	return at
}

func machines(ctx context.Context, l *lab.Lab, server string) map[string]bootserver.MachineStatus {
	out := map[string]bootserver.MachineStatus{}
	b, err := l.Get(ctx, server+api.PathMachines)
	if err != nil {
		return out
	}
	var list []bootserver.MachineStatus
	if json.Unmarshal(b, &list) != nil {
		return out
	}
	for _, st := range list {
		out[st.Name] = st
	}
	return out
}

// noStrayListeners checks the agents' reports: nothing listens beyond
// the role's ports, and nothing on SSH's.
func noStrayListeners(t *testing.T, ctx context.Context, l *lab.Lab, server string, ms []clusterMachine) {
	t.Helper()
	list := machines(ctx, l, server)
	for _, m := range ms {
		f := list[m.name].Fields
		listen, ok := f["listen"]
		if !ok {
			t.Errorf("%s: the agent reported no listeners (fields %v)", m.name, f)
			continue
		}
		if u := f["unexpected"]; u != "" {
			t.Errorf("%s: unexpected listeners %s (all: %s)", m.name, u, listen)
		}
		if slices.Contains(strings.Fields(listen), "tcp/22") {
			t.Errorf("%s listens on tcp/22", m.name)
		}
		t.Logf("%s listens on: %s", m.name, listen)
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

func kubectlStdin(ctx context.Context, l *lab.Lab, kubectl, cred, stdin string, args ...string) (string, error) {
	base := []string{"netns", "exec", l.Name(), kubectl, "--kubeconfig", filepath.Join(cred, "kubeconfig"),
		"--server", "https://10.77.0.21:6443", "--tls-server-name", apiName}
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
