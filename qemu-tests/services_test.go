package qemutests

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/roles"
)

// clusterDNSAndServices: CoreDNS (applied by the boot server, its image
// baked into the minion image) answers at the cluster DNS address; a
// Deployment behind a NodePort Service is reached by its name and its
// ClusterIP from a pod on each minion, by its node port from pods, from
// each minion's own network (a host-network pod) and from the boot
// server's network; pods resolve the site's names through the boot
// server's DNS. probes are the names of pods already running, one per
// minion, in minion order.
func (sc *scenario) clusterDNSAndServices(t *testing.T, ctx context.Context, kubectl func(...string) (string, error),
	apply func(string) (string, error), probes []string) {
	t.Helper()
	start := time.Now()
	minions := sc.ofRole("minion")
	dnsIP, err := roles.ClusterDNSIP(sc.site.Network.Services)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "CoreDNS's two replicas ready", func() bool {
		out, err := kubectl("-n", "kube-system", "get", "deployment", "coredns", "-o", "jsonpath={.status.readyReplicas}")
		return err == nil && out == "2"
	})
	out, _ := kubectl("-n", "kube-system", "get", "pods,services", "-o", "wide")
	t.Logf("figure: CoreDNS's two replicas ready (waited %.0f s once the pod checks were done); kube-system:\n%s", time.Since(start).Seconds(), out)
	if out, err := kubectl("-n", "kube-system", "get", "service", "kube-dns", "-o", "jsonpath={.spec.clusterIP}"); err != nil || out != dnsIP.String() {
		t.Errorf("kube-dns's cluster IP is %q (%v), want %s, the address kubelets give pods", out, err, dnsIP)
	}

	// The service: two probe pods behind a NodePort Service.
	if out, err := kubectl("create", "deployment", "echo", "--image=plinth.local/probe:1", "--replicas=2"); err != nil {
		t.Fatalf("create deployment echo: %v\n%s", err, out)
	}
	if out, err := kubectl("expose", "deployment", "echo", "--type=NodePort", "--port=80", "--target-port=8080"); err != nil {
		t.Fatalf("expose echo: %v\n%s", err, out)
	}
	waitFor(t, ctx, "echo's two replicas ready", func() bool {
		out, err := kubectl("get", "deployment", "echo", "-o", "jsonpath={.status.readyReplicas}")
		return err == nil && out == "2"
	})
	out, err = kubectl("get", "service", "echo", "-o", "jsonpath={.spec.clusterIP} {.spec.ports[0].nodePort}")
	f := strings.Fields(out)
	if err != nil || len(f) != 2 {
		t.Fatalf("service echo: %q %v", out, err)
	}
	clusterIP, nodePort := f[0], f[1]
	t.Logf("service echo: cluster IP %s, node port %s", clusterIP, nodePort)

	// get asks the probe's CGI for the answering pod's name through
	// busybox nc (Debian's static busybox segfaults in wget).
	get := func(host, port string) string {
		return `printf 'GET /cgi-bin/hostname HTTP/1.0\r\n\r\n' | busybox nc -w 5 ` + host + ` ` + port
	}
	reached := func(out string) bool { return strings.Contains(out, "echo-") }
	try := func(what string, run func() (string, error), ok func(string) bool) {
		t.Helper()
		var out string
		var err error
		// kube-proxy and CoreDNS pick up a new Service within seconds;
		// a minute covers a slow TCG node.
		deadline := time.Now().Add(2 * time.Minute)
		for {
			out, err = run()
			if err == nil && ok(out) {
				t.Logf("%s: %s", what, strings.Join(strings.Fields(out), " "))
				return
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				t.Errorf("%s: %v\n%s", what, err, out)
				return
			}
			time.Sleep(3 * time.Second)
		}
	}
	in := func(pod, script string) func() (string, error) {
		return func() (string, error) { return kubectl("exec", pod, "--", "busybox", "sh", "-c", script) }
	}
	api := ip(sc.ofRole("master")[0])
	apiIP := netip.MustParsePrefix(sc.site.Network.Services).Masked().Addr().Next().String()
	for i, pod := range probes {
		on := minions[i].Name
		try(fmt.Sprintf("%s on %s: resolv.conf names the cluster DNS", pod, on), in(pod, "cat /etc/resolv.conf"),
			func(s string) bool { return strings.Contains(s, "nameserver "+dnsIP.String()) })
		try(fmt.Sprintf("%s on %s: kubernetes.default.svc.%s", pod, on, roles.ClusterDomain),
			in(pod, "nslookup kubernetes.default.svc."+roles.ClusterDomain),
			func(s string) bool { return strings.Contains(s, apiIP) })
		try(fmt.Sprintf("%s on %s: echo.default.svc.%s", pod, on, roles.ClusterDomain),
			in(pod, "nslookup echo.default.svc."+roles.ClusterDomain), func(s string) bool { return strings.Contains(s, clusterIP) })
		try(fmt.Sprintf("%s on %s: the site's API name through the boot server's DNS", pod, on),
			in(pod, "nslookup "+apiName), func(s string) bool { return strings.Contains(s, api) })
		try(fmt.Sprintf("%s on %s: echo by its short name", pod, on), in(pod, get("echo", "80")), reached)
		try(fmt.Sprintf("%s on %s: echo by its cluster IP", pod, on), in(pod, get(clusterIP, "80")), reached)
		for _, m := range minions {
			try(fmt.Sprintf("%s on %s: node port on %s", pod, on, m.Name), in(pod, get(ip(m), nodePort)), reached)
		}
	}

	// From each minion's own network namespace.
	for i, m := range minions {
		name := "hostnet-" + strconv.Itoa(i+1)
		pod := fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":%q},"spec":{"nodeName":%q,"hostNetwork":true,
"containers":[{"name":"sh","image":"plinth.local/probe:1","imagePullPolicy":"Never","command":["busybox","sleep","3600"]}]}}`, name, m.Name)
		if out, err := apply(pod); err != nil {
			t.Fatalf("create pod %s: %v\n%s", name, err, out)
		}
		waitFor(t, ctx, name+" Running", func() bool {
			out, err := kubectl("get", "pod", name, "-o", "jsonpath={.status.phase}")
			return err == nil && out == "Running"
		})
		try(fmt.Sprintf("node %s: echo by its cluster IP", m.Name), in(name, get(clusterIP, "80")), reached)
		for _, other := range minions {
			try(fmt.Sprintf("node %s: node port on %s", m.Name, other.Name), in(name, get(ip(other), nodePort)), reached)
		}
	}

	// From outside the cluster: the boot server's network.
	for _, m := range minions {
		try("the boot server's network: node port on "+m.Name, func() (string, error) {
			return inLab(ctx, sc.c.Lab, "bash", "-c", `exec 3<>/dev/tcp/`+ip(m)+`/`+nodePort+
				` && printf 'GET /cgi-bin/hostname HTTP/1.0\r\n\r\n' >&3 && timeout 5 cat <&3`)
		}, reached)
	}
	t.Logf("figure: cluster DNS and services checked in %.0f s", time.Since(start).Seconds())
}
