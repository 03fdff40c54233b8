package firstboot

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"

	"github.com/vishvananda/netlink"

	"github.com/plinth-dev/plinth/profiles/node"
)

// serviceRoute lets the node's own processes (a host-network pod, an
// operator's shell) reach ClusterIP Services. kube-proxy rewrites a
// connection to a cluster IP in the OUTPUT chain, which the kernel reaches
// only after it found a route for the cluster IP: on a node with no default
// route (an isolated rack) the connect fails "network is unreachable"
// before kube-proxy sees it (seen in the lab). A link-scope route for the
// service network through the link the node reaches its boot server on
// gives it one; the rewritten packet is routed again to the endpoint. A
// node with a default route needs nothing and gets nothing.
func serviceRoute(log *slog.Logger, cfg *node.Config) error {
	cl := cfg.Cluster
	if cl == nil || cl.ServiceCIDR == "" {
		return nil
	}
	svc, err := netip.ParsePrefix(cl.ServiceCIDR)
	if err != nil {
		return fmt.Errorf("service network: %w", err)
	}
	defaults, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{}, netlink.RT_FILTER_DST)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	for _, r := range defaults {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			return nil // a default route: the cluster IPs are routed already
		}
	}
	u, err := url.Parse(cl.BootServer)
	if err != nil {
		return fmt.Errorf("boot server URL %q: %w", cl.BootServer, err)
	}
	server := net.ParseIP(u.Hostname())
	if server == nil {
		return fmt.Errorf("no default route, and the boot server %q is not an address to find the node's link by", u.Hostname())
	}
	via, err := netlink.RouteGet(server)
	if err != nil || len(via) == 0 {
		return fmt.Errorf("no route to the boot server %s: %v", server, err)
	}
	if via[0].Gw != nil {
		return errors.New("the boot server is reached through a gateway, yet there is no default route")
	}
	r := &netlink.Route{
		LinkIndex: via[0].LinkIndex,
		Dst:       &net.IPNet{IP: svc.Masked().Addr().AsSlice(), Mask: net.CIDRMask(svc.Bits(), 32)},
		Src:       via[0].Src,
		Scope:     netlink.SCOPE_LINK,
	}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s: %w", svc, err)
	}
	log.Info("no default route: routed the service network on the node's link, for host processes reaching cluster IPs",
		"services", svc, "link", via[0].LinkIndex, "src", via[0].Src)
	return nil
}
