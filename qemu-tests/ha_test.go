package qemutests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/plinth-dev/plinth/bootserver"
	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/internal/fsutil"
	"github.com/plinth-dev/plinth/lab"
	"github.com/plinth-dev/plinth/lab/qemu"
	"github.com/plinth-dev/plinth/roles"
)

// apiAnswer is the API name's A records as the boot server's DNS sends
// them, in its order (a resolver library would sort them).
func apiAnswer(ctx context.Context, l *lab.Lab) ([]string, error) {
	conn, err := l.Dial(ctx, "udp", l.Server+":53")
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	c := &dns.Conn{Conn: conn}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(apiName), dns.TypeA)
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if err := c.WriteMsg(m); err != nil {
		return nil, err
	}
	r, err := c.ReadMsg()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out, nil
}

// failoverBound is how soon a dead master must leave the API name: the
// README's 10 s (two failed checks of up to 3 s, 2 s apart) and slack for a
// host running four TCG machines on two cores.
const failoverBound = 20 * time.Second

// TestHAE2E netboots one etcd member, two masters and a minion from the
// qemu-lab site and checks the API name as an operator would: both
// masters in it, round robin; a forged report refused and the name
// unchanged; master-1 killed: the name holds master-2 alone within the
// bound, kubectl through the name keeps working, the minion stays Ready,
// a new pod is scheduled and runs; master-1 back in the name; the boot
// server restarted without the name going empty; the boot server stopped
// for 10 minutes with the minion still reaching the API through its pinned
// pool, and a master killed meanwhile dropping out of the node's pool once
// the server is back. `make e2e` (PLINTH_E2E=1).
func TestHAE2E(t *testing.T) {
	if os.Getenv("PLINTH_E2E") == "" {
		t.Skip("the HA scenario: make e2e (PLINTH_E2E=1)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Minute)
	defer cancel()
	kubectlBin := stackBinary(t, "kubectl")
	sc := upScenario(t, ctx, "ha", "etcd-1", "master-1", "master-2", "minion-1")
	l, accel := sc.c.Lab, qemu.Accel(ctx)
	m1, m2 := ip(sc.site.Machine("master-1")), ip(sc.site.Machine("master-2"))
	both := []string{m1, m2}
	port := strconv.Itoa(roles.DefaultAPIPort)
	// kubectl through the API name: what the boot server's DNS answers,
	// tried in its order, as a Go client's dialer does.
	viaName := func(args ...string) (string, error) {
		addrs, err := apiAnswer(ctx, l)
		if err != nil {
			return "", err
		}
		if len(addrs) == 0 {
			return "", fmt.Errorf("%s has no address", apiName)
		}
		var out string
		for _, a := range addrs {
			base := []string{"--kubeconfig", sc.cred + "/kubeconfig", "--server", "https://" + a + ":" + port, "--tls-server-name", apiName, "--request-timeout", "10s"}
			if out, err = inLab(ctx, l, kubectlBin, append(base, args...)...); err == nil {
				return out, nil
			}
		}
		return out, err
	}
	// kubectl to one master by address (the test's own view). What is
	// checked is the cluster's state, not one call of the test's: a
	// master just powered on again, on a busy host, may miss one 10 s
	// request (seen under TCG with a CPU hog), so a failed call is tried
	// twice more, 5 s apart.
	at := func(addr string, args ...string) (string, error) {
		base := []string{"--kubeconfig", sc.cred + "/kubeconfig", "--server", "https://" + addr + ":" + port, "--tls-server-name", apiName, "--request-timeout", "10s"}
		var out string
		var err error
		for try := range 3 {
			if try > 0 {
				select {
				case <-ctx.Done():
					return out, ctx.Err()
				case <-time.After(5 * time.Second):
				}
			}
			if out, err = inLab(ctx, l, kubectlBin, append(base, args...)...); err == nil {
				return out, nil
			}
		}
		return out, err
	}
	nameHolds := func(want []string) func() bool {
		return func() bool {
			got, err := apiAnswer(ctx, l)
			slices.Sort(got)
			return err == nil && slices.Equal(got, want)
		}
	}

	// Both masters in the name, round robin: each comes first in some answer.
	waitFor(t, ctx, "both masters in "+apiName, nameHolds(both))
	first := map[string]int{}
	for range 8 {
		a, err := apiAnswer(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		first[a[0]]++
	}
	if first[m1] == 0 || first[m2] == 0 {
		t.Errorf("no round robin: first answers %v over 8 queries", first)
	}
	t.Logf("round robin: first answers over 8 queries %v", first)
	waitFor(t, ctx, "minion-1 Ready", func() bool {
		out, err := viaName("get", "node", "minion-1", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return err == nil && out == "True"
	})
	sc.nodePoolIs(t, ctx, "minion-1", both)

	// A forged report, as an outsider in the lab would send it: refused,
	// and the name unchanged.
	for _, tok := range []string{"", strings.Repeat("0", 32)} {
		b, _ := json.Marshal(api.Event{Machine: "master-1", Stage: api.StageError, Message: "forged"})
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, sc.c.Server+api.PathEvents, bytes.NewReader(b))
		if tok != "" {
			req.Header.Set(api.HeaderToken, tok)
		}
		resp, err := l.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("a forged error for master-1 (token %q): %s, want 403", tok, resp.Status)
		}
	}
	// What the forger aimed at is the pool's membership (the name's
	// answers also follow each member's /readyz, which a loaded TCG master
	// fails now and then): both masters must still be members.
	var pool []bootserver.PoolMember
	if b, err := l.Get(ctx, sc.c.Server+api.PathAPIPool); err != nil || json.Unmarshal(b, &pool) != nil || len(pool) != 2 {
		t.Errorf("after forged reports the API pool is %s (%v), want master-1 and master-2", b, err)
	}

	// master-1 killed: its QEMU gets SIGKILL.
	if err := sc.c.Kill("master-1"); err != nil {
		t.Fatal(err)
	}
	kill := time.Now()
	waitFor(t, ctx, "the name holding master-2 alone", nameHolds([]string{m2}))
	took := time.Since(kill)
	figure(t, "ha (%s): master-1 killed: the API name held master-2 alone %.1fs later", accel, took.Seconds())
	// The bound the README states: two failed /readyz checks, each up to
	// 2 s apart and 2 s long (8 s), with room for a busy host.
	if took > failoverBound {
		t.Errorf("master-1 left the name after %s, beyond the %s bound", took.Round(100*time.Millisecond), failoverBound)
	}
	waitFor(t, ctx, "kubectl through the name", func() bool {
		_, err := viaName("get", "--raw", "/readyz")
		return err == nil
	})
	figure(t, "ha (%s): master-1 killed: first successful kubectl through the API name %.1fs later", accel, time.Since(kill).Seconds())
	// The minion's kubelet renews its lease through master-2 now.
	waitFor(t, ctx, "minion-1's lease renewed after the kill", func() bool {
		out, err := viaName("get", "lease", "-n", "kube-node-lease", "minion-1", "-o", "jsonpath={.spec.renewTime}")
		r, perr := time.Parse(time.RFC3339Nano, out)
		return err == nil && perr == nil && r.After(kill)
	})
	// Controller manager and scheduler failed over: a new Deployment's
	// pod is created (controller manager), scheduled (scheduler) and runs.
	if out, err := viaName("create", "deployment", "after-failover", "--image=plinth.local/probe:1"); err != nil {
		t.Fatalf("create deployment: %v\n%s", err, out)
	}
	waitFor(t, ctx, "the new Deployment's pod Running", func() bool {
		out, err := viaName("get", "deployment", "after-failover", "-o", "jsonpath={.status.readyReplicas}")
		return err == nil && out == "1"
	})
	figure(t, "ha (%s): master-1 killed: a new Deployment's pod ready %.0fs later", accel, time.Since(kill).Seconds())
	for _, lease := range []string{"kube-controller-manager", "kube-scheduler"} {
		out, _ := viaName("get", "lease", "-n", "kube-system", lease, "-o", "jsonpath={.spec.holderIdentity}")
		if !strings.HasPrefix(out, "master-2") {
			t.Errorf("%s leader after master-1's death: %q, want master-2", lease, out)
		}
	}
	sc.stayedReady(t, viaName, "minion-1", kill, "the failover")

	// master-1 back: it rejoins the name.
	on := time.Now()
	if err := sc.c.Start(ctx, "master-1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "master-1 back in the name", nameHolds(both))
	figure(t, "ha (%s): master-1 powered on again: back in the API name %.0fs later", accel, time.Since(on).Seconds())

	// The boot server restarted: the name answers both at once.
	if err := sc.c.StopServer(); err != nil {
		t.Fatal(err)
	}
	if err := sc.c.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := apiAnswer(ctx, l)
	slices.Sort(got)
	if err != nil || !slices.Equal(got, both) {
		t.Errorf("right after a boot-server restart the name answers %v (%v), want %v", got, err, both)
	}

	// The boot server down for 10 minutes: the minion keeps reaching the
	// API through its pinned pool; master-2 killed half way. First the
	// minion's pin follows the pool again (its next report, ≤ 30 s): a
	// node cut off while it pinned one master is cut off with it.
	sc.nodePoolIs(t, ctx, "minion-1", both)
	if err := sc.c.StopServer(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	var m2killed time.Time
	for time.Since(down) < 10*time.Minute {
		if m2killed.IsZero() && time.Since(down) > 5*time.Minute {
			if err := sc.c.Kill("master-2"); err != nil {
				t.Fatal(err)
			}
			m2killed = time.Now()
			// How long the kubelet took to renew its lease through
			// master-1, with only its pinned pool to go by (the failover
			// the boot server's DNS does not help with).
			renewed := false
			for !renewed && time.Since(m2killed) < 3*time.Minute {
				out, err := at(m1, "get", "lease", "-n", "kube-node-lease", "minion-1", "-o", "jsonpath={.spec.renewTime}")
				if r, perr := time.Parse(time.RFC3339Nano, out); err == nil && perr == nil && r.After(m2killed) {
					figure(t, "ha (%s): master-2 killed while the boot server was away: minion-1's lease renewed through master-1 %.0fs later", accel, r.Sub(m2killed).Seconds())
					renewed = true
				} else {
					time.Sleep(5 * time.Second)
				}
			}
			if !renewed {
				t.Logf("master-2 killed while the boot server was away: minion-1's lease not renewed through master-1 within 3 min of the kill at %s", m2killed.UTC().Format(time.RFC3339))
			}
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(time.Minute):
		}
		// The test asks master-1 directly (the name has no server now);
		// the minion's lease shows its kubelet still reaching an API server.
		out, err := at(m1, "get", "lease", "-n", "kube-node-lease", "minion-1", "-o", "jsonpath={.spec.renewTime}")
		r, perr := time.Parse(time.RFC3339Nano, out)
		if err != nil || perr != nil || time.Since(r) > 90*time.Second {
			t.Errorf("%.0fs into the boot server's absence: minion-1's lease renewed at %q (%v %v)", time.Since(down).Seconds(), out, err, perr)
		}
		sc.stayedReady(t, func(args ...string) (string, error) { return at(m1, args...) }, "minion-1", kill, fmt.Sprintf("%.0fs of the boot server's absence", time.Since(down).Seconds()))
	}
	if err := sc.c.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	if t.Failed() {
		// What the minion's kubelet saw while the server was away: its
		// journal, asked for now that the agent can upload it; and what
		// the agent and networkd did meanwhile.
		for _, u := range []string{"kubelet.service", "plinth-agent.service", "systemd-networkd.service"} {
			sc.freshJournal(t, ctx, "minion-1", u)
		}
		// And master-1's side: whether its API server took the renewals
		// and what its controller manager (the node controller) saw.
		for _, u := range []string{"kube-apiserver.service", "kube-controller-manager.service", "plinth-agent.service"} {
			sc.freshJournal(t, ctx, "master-1", u)
		}
	}
	waitFor(t, ctx, "the name holding master-1 alone", nameHolds([]string{m1}))
	sc.nodePoolIs(t, ctx, "minion-1", []string{m1})
	figure(t, "ha (%s): after 10 min without the boot server (master-2 killed meanwhile): minion-1's pinned pool holds master-1 alone %.0fs after the server's return", accel, time.Since(back).Seconds())
}

// stayedReady checks node is Ready and has been since before since: its
// Ready condition last changed before it (a node that went NotReady and
// back has a later transition).
func (sc *scenario) stayedReady(t *testing.T, kubectl func(...string) (string, error), node string, since time.Time, after string) {
	t.Helper()
	out, err := kubectl("get", "node", node, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastTransitionTime}`)
	f := strings.Fields(out)
	if err != nil || len(f) != 2 {
		t.Errorf("%s after %s: %q %v", node, after, out, err)
		return
	}
	tr, perr := time.Parse(time.RFC3339, f[1])
	if f[0] != "True" || perr != nil || tr.After(since) {
		t.Errorf("%s after %s: Ready=%s since %s (want True since before %s)", node, after, f[0], f[1], since.UTC().Format(time.RFC3339))
	}
}

// freshJournal asks machine's agent for unit's journal, keeps it in the
// scenario's log directory and returns it (nil when it could not be had).
func (sc *scenario) freshJournal(t *testing.T, ctx context.Context, machine, unit string) []byte {
	t.Helper()
	// The server holds the request until the agent's next report brings
	// the journal (up to the 90 s asked for).
	b, err := sc.c.Lab.GetWithin(ctx, sc.c.Server+api.LogPath(machine, unit)+"?fresh=90", 100*time.Second)
	if err != nil {
		t.Logf("%s's %s journal: %v", machine, unit, err)
		return nil
	}
	p := filepath.Join(sc.logDir, machine+"."+unit+".fresh.log")
	if err := fsutil.WriteFileAtomic(p, b, 0o644); err != nil {
		t.Logf("%s's %s journal: %v", machine, unit, err)
		return b
	}
	t.Logf("%s's %s journal: %s", machine, unit, p)
	return b
}

// nodePoolIs waits until machine's agent reports the pinned API pool want
// (in any order).
func (sc *scenario) nodePoolIs(t *testing.T, ctx context.Context, machine string, want []string) {
	t.Helper()
	var got []string
	waitFor(t, ctx, machine+"'s pinned API pool "+strings.Join(want, " "), func() bool {
		list, err := sc.c.Machines(ctx)
		if err != nil {
			return false
		}
		got = strings.Fields(list[machine].Fields["api_pool"])
		slices.Sort(got)
		return slices.Equal(got, want)
	})
}
