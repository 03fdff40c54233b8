package bootserver

import (
	"net/netip"
	"slices"

	"github.com/plinth-dev/plinth/bootserver/api"
)

// MasterSink is told the addresses of the site's ready masters each time
// that set changes. It is the seam for answering the site's API name
// (round robin over ready masters), which a later change adds.
type MasterSink interface {
	ReadyMasters(apiName string, addrs []netip.Addr)
}

// ReadyMasters lists, sorted, the addresses of masters whose last event
// was ready.
func (s *Server) ReadyMasters() []netip.Addr {
	var out []netip.Addr
	for _, st := range s.state.list() {
		if st.Role != "master" || st.State != api.StageReady {
			continue
		}
		if a, err := netip.ParseAddr(st.IP); err == nil {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// notifyMasters tells the sink when the ready masters changed.
func (s *Server) notifyMasters() {
	if s.cfg.Masters == nil {
		return
	}
	now := s.ReadyMasters()
	s.mastersM.Lock()
	defer s.mastersM.Unlock()
	if s.mastersSent && slices.Equal(now, s.masters) {
		return
	}
	s.masters, s.mastersSent = now, true
	s.cfg.Masters.ReadyMasters(s.snap.Load().site.APIName, now)
}
