package firstboot

import (
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/plinth-dev/plinth/profiles/node"
)

// A node with no default route gets a link-scope route for the service
// network on the link its boot server is on; one with a default route gets
// none. Run in a network namespace of the test's own.
func TestServiceRouteOnlyWithoutADefaultRoute(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace (make test runs as root)")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // and switches this thread into it
	if err != nil {
		t.Fatal(err)
	}
	defer func() { netns.Set(orig); ns.Close() }()

	// veth, not dummy: the lab's kernels have veth built in.
	d := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "node0"}, PeerName: "peer0"}
	if err := netlink.LinkAdd(d); err != nil {
		t.Fatal(err)
	}
	if peer, err := netlink.LinkByName("peer0"); err != nil || netlink.LinkSetUp(peer) != nil {
		t.Fatalf("peer0: %v", err)
	}
	addr, _ := netlink.ParseAddr("10.9.0.31/24")
	if err := netlink.AddrAdd(d, addr); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(d); err != nil {
		t.Fatal(err)
	}
	cfg := &node.Config{Cluster: &node.Cluster{ServiceCIDR: "10.96.0.0/12", BootServer: "http://10.9.0.1:8080"}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svcRoutes := func() []netlink.Route {
		_, dst, _ := net.ParseCIDR("10.96.0.0/12")
		rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: dst}, netlink.RT_FILTER_DST)
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}

	if err := serviceRoute(log, cfg); err != nil {
		t.Fatal(err)
	}
	rs := svcRoutes()
	if len(rs) != 1 || rs[0].LinkIndex != d.Attrs().Index || rs[0].Scope != netlink.SCOPE_LINK || !rs[0].Src.Equal(net.ParseIP("10.9.0.31")) {
		t.Fatalf("routes to the service network: %+v, want one link-scope route on node0 from 10.9.0.31", rs)
	}
	// A connect to a cluster IP now finds a route (and goes out node0).
	if got, err := netlink.RouteGet(net.ParseIP("10.96.0.10")); err != nil || got[0].LinkIndex != d.Attrs().Index {
		t.Errorf("route to 10.96.0.10: %+v %v", got, err)
	}
	if err := serviceRoute(log, cfg); err != nil {
		t.Errorf("a second run: %v", err)
	}

	if err := netlink.RouteDel(&rs[0]); err != nil {
		t.Fatal(err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: d.Attrs().Index, Gw: net.ParseIP("10.9.0.1")}); err != nil {
		t.Fatal(err)
	}
	if err := serviceRoute(log, cfg); err != nil {
		t.Fatal(err)
	}
	if rs := svcRoutes(); len(rs) != 0 {
		t.Errorf("with a default route: %+v added, want none", rs)
	}
}
