package firstboot

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/profiles/node"
)

// FlannelNetConfig is the network config flanneld reads from etcd.
func FlannelNetConfig(cl *node.Cluster) (string, error) {
	if cl == nil || cl.Flannel == "" {
		return "", errors.New("the site has no flannel network")
	}
	backend := cl.Backend
	if backend == "" {
		backend = "vxlan"
	}
	b, err := json.Marshal(map[string]any{"Network": cl.Flannel, "Backend": map[string]string{"Type": backend}})
	return string(b), err
}

// PutIfAbsent writes key=value unless the key exists, in one transaction,
// so that nodes racing to set the flannel config leave the first one's. It
// asks the endpoints in turn and returns the value the key holds
// afterwards and whether this call set it.
func (e *Etcd) PutIfAbsent(ctx context.Context, endpoints []string, key, value string) (string, bool, error) {
	type answer struct {
		have string
		set  bool
	}
	a, _, err := inTurn(endpoints, func(ep string) (answer, error) {
		have, set, err := e.RPC.PutIfAbsent(ctx, ep, key, value)
		return answer{have, set}, err
	})
	return a.have, a.set, err
}

// EtcdEndpoints are the client URLs of the profile's etcd members.
func EtcdEndpoints(cl *node.Cluster) []string {
	var eps []string
	if cl == nil {
		return nil
	}
	for _, m := range cl.EtcdMembers {
		eps = append(eps, role.ClientURL(m.Address))
	}
	return eps
}

// Subnet is what flanneld leased this node (its subnet.env).
type Subnet struct {
	Network netip.Prefix // the whole flannel network
	Subnet  netip.Prefix // this node's, as FLANNEL_SUBNET gives it (gateway address/len)
	MTU     int
}

// ParseSubnetEnv reads flanneld's subnet file.
func ParseSubnetEnv(s string) (Subnet, error) {
	var sn Subnet
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok {
			continue
		}
		var err error
		switch k {
		case "FLANNEL_NETWORK":
			sn.Network, err = netip.ParsePrefix(v)
		case "FLANNEL_SUBNET":
			sn.Subnet, err = netip.ParsePrefix(v)
		case "FLANNEL_MTU":
			sn.MTU, err = strconv.Atoi(v)
		}
		if err != nil {
			return Subnet{}, fmt.Errorf("%s: %s: %w", role.FlannelSubnetFile, k, err)
		}
	}
	if !sn.Subnet.IsValid() || !sn.Subnet.Addr().Is4() {
		return Subnet{}, fmt.Errorf("%s: no IPv4 FLANNEL_SUBNET", role.FlannelSubnetFile)
	}
	if sn.Subnet.Bits() > 28 {
		return Subnet{}, fmt.Errorf("%s: FLANNEL_SUBNET %s is too small to split between Docker and the pods", role.FlannelSubnetFile, sn.Subnet)
	}
	if sn.MTU < 576 {
		return Subnet{}, fmt.Errorf("%s: FLANNEL_MTU %d: want at least 576", role.FlannelSubnetFile, sn.MTU)
	}
	return sn, nil
}

// Split is the node's subnet shared out: Docker's bridge gets the lower
// half, the pods' bridge the upper.
type Split struct {
	Docker     netip.Prefix // docker0's address and prefix (bip)
	Pods       netip.Prefix // the pods' range
	PodGateway netip.Addr   // cni0's address
	MTU        int
}

// SplitSubnet halves the node's flannel subnet.
func SplitSubnet(sn Subnet) Split {
	base := sn.Subnet.Masked()
	half := base.Bits() + 1
	lower := netip.PrefixFrom(base.Addr(), half)
	upperStart := base.Addr()
	for i := 0; i < 1<<(32-half); i++ {
		upperStart = upperStart.Next()
	}
	upper := netip.PrefixFrom(upperStart, half)
	return Split{
		Docker:     netip.PrefixFrom(lower.Addr().Next(), half),
		Pods:       upper,
		PodGateway: upper.Addr().Next(),
		MTU:        sn.MTU,
	}
}

// DockerJSON is dockerd's configuration on the node's subnet. Docker does
// not masquerade: flanneld does, for traffic leaving the flannel network,
// so pods and containers on other nodes see real source addresses.
func (s Split) DockerJSON() string {
	b, _ := json.MarshalIndent(map[string]any{
		"bip":      s.Docker.String(),
		"mtu":      s.MTU,
		"ip-masq":  false,
		"iptables": true,
	}, "", "  ")
	return string(b) + "\n"
}

// CNIConflist is the pods' network: a bridge on the upper half of the
// node's subnet, routed across nodes by flannel.
func (s Split) CNIConflist() string {
	b, _ := json.MarshalIndent(map[string]any{
		"cniVersion": "0.4.0",
		"name":       "plinth",
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      "cni0",
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"mtu":         s.MTU,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": s.Pods.String(), "gateway": s.PodGateway.String()}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}, "", "  ")
	return string(b) + "\n"
}
