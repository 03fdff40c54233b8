package qemu

import (
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
)

var (
	mcastMu   sync.Mutex
	mcastSegs = map[string]string{}
)

// MulticastNetdev returns a -netdev argument ("socket,mcast=GROUP:PORT,
// localaddr=127.0.0.1") for the virtual L2 segment named segment: every NIC
// given the same segment in this process is on one Ethernet, and segments
// never share a group. The group is random in 230.0.0.0/8 and the port is
// one no socket on this host holds, so test runs in parallel (other
// packages, other engineers) do not hear each other. The traffic stays on
// the loopback interface, so no root and no route are needed.
func MulticastNetdev(segment string) (string, error) {
	mcastMu.Lock()
	defer mcastMu.Unlock()
	if nd, ok := mcastSegs[segment]; ok {
		return nd, nil
	}
	for range 100 {
		port := 20000 + rand.IntN(40000)
		// A port some other socket binds (another run's QEMU) is skipped.
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		if err != nil {
			continue
		}
		c.Close()
		group := fmt.Sprintf("230.%d.%d.%d", rand.IntN(256), rand.IntN(256), 1+rand.IntN(254))
		nd := fmt.Sprintf("socket,mcast=%s:%d,localaddr=127.0.0.1", group, port)
		mcastSegs[segment] = nd
		return nd, nil
	}
	return "", fmt.Errorf("multicast segment %s: no free UDP port found", segment)
}
