package bootserver

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/roles"
)

// MasterSink is told the addresses of the site's ready masters each time
// that set changes: the site DNS answers the API name with them.
type MasterSink interface {
	ReadyMasters(apiName string, addrs []netip.Addr)
}

// HostSink is an optional extra of a MasterSink: it is told the site's
// domain and every machine's address by host name (lower case, not
// qualified) each time they change.
type HostSink interface {
	Hosts(domain string, hosts map[string]netip.Addr)
}

// ReadyMasters lists, sorted, the addresses of masters (machines of a role
// that serves the API) whose last event
// was ready (and, with a MasterTTL, came within it): the site's static
// address of the master, else the address it reported from.
func (s *Server) ReadyMasters() []netip.Addr {
	snap := s.snap.Load()
	now := time.Now()
	var out []netip.Addr
	for _, st := range s.state.list() {
		if !roles.Get(st.Role).APIServer || st.State != api.StageReady {
			continue
		}
		if s.cfg.MasterTTL > 0 && now.Sub(st.LastSeen) > s.cfg.MasterTTL {
			continue
		}
		if a, ok := s.machineAddr(snap, st); ok {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// machineAddr is a machine's static address in the site, else the last
// address it was seen at.
func (s *Server) machineAddr(snap *snapshot, st MachineStatus) (netip.Addr, bool) {
	if m := snap.site.Machine(st.Name); m != nil && m.Address != "" {
		if p, err := netip.ParsePrefix(m.Address); err == nil {
			return p.Addr(), true
		}
	}
	a, err := netip.ParseAddr(st.IP)
	return a, err == nil
}

// Hosts maps the host name of every machine of the site whose address is
// known (static, or seen) to that address.
func (s *Server) Hosts() map[string]netip.Addr {
	snap := s.snap.Load()
	out := map[string]netip.Addr{}
	for _, m := range snap.site.Machines {
		st, _ := s.state.get(m.Name)
		st.Name = m.Name
		if a, ok := s.machineAddr(snap, st); ok {
			out[strings.ToLower(m.Hostname)] = a
		}
	}
	return out
}

// notifyMasters tells the sink when the ready masters (or, for a HostSink,
// the machines' addresses) changed.
func (s *Server) notifyMasters() {
	if s.cfg.Masters == nil {
		return
	}
	now := s.ReadyMasters()
	snap := s.snap.Load()
	s.mastersM.Lock()
	defer s.mastersM.Unlock()
	if hs, ok := s.cfg.Masters.(HostSink); ok {
		hosts := s.Hosts()
		if !s.hostsSent || !maps.Equal(hosts, s.hosts) || snap.site.Domain != s.domain {
			s.hosts, s.domain, s.hostsSent = hosts, snap.site.Domain, true
			hs.Hosts(snap.site.Domain, hosts)
		}
	}
	if s.mastersSent && slices.Equal(now, s.masters) && snap.site.APIName == s.apiName {
		return
	}
	s.masters, s.apiName, s.mastersSent = now, snap.site.APIName, true
	s.cfg.Masters.ReadyMasters(snap.site.APIName, now)
}
