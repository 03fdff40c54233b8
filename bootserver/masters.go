package bootserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
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

// ReadyMasters lists, sorted, the addresses the API name serves: the
// healthy members of the API pool (pool.go).
func (s *Server) ReadyMasters() []netip.Addr { return s.pool.addrs() }

// APIPool lists the pool's members with their health.
func (s *Server) APIPool() []PoolMember { return s.pool.list() }

// apiServerOfSite says whether machine is, in the site now, of a role
// that serves the API.
func (s *Server) apiServerOfSite(machine string) bool {
	m := s.snap.Load().site.Machine(machine)
	return m != nil && roles.Get(m.Role).APIServer
}

// poolReport applies an authenticated report of an API server to the pool:
// ready joins it (at its static address, else the report's). Any other
// stage changes nothing: whether the member serves is the /readyz checks'
// to say (an agent also reports not ready for a stopped scheduler or a
// slow etcd; under TCG both masters' agents once did so within 4 s and
// left the name empty for 8 s). It says whether the name's addresses
// changed.
func (s *Server) poolReport(machine, stage, from string) bool {
	if !s.apiServerOfSite(machine) || stage != api.StageReady {
		return false
	}
	addr, ok := s.machineAddr(s.snap.Load(), machine, from)
	if !ok {
		return false
	}
	return s.pool.admit(machine, addr)
}

// runPoolChecks checks the pool's members every APICheckEvery until ctx
// ends; the returned stop waits for the loop. Without a CA there is no
// TLS to check /readyz with, and members stay until they report otherwise.
func (s *Server) runPoolChecks(ctx context.Context) (stop func()) {
	if s.cfg.CA == nil {
		return func() {}
	}
	conf := &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12}
	conf.RootCAs.AddCert(s.cfg.CA.Cert())
	if s.tlsConf != nil {
		conf.Certificates = s.tlsConf.Certificates
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(s.cfg.APICheckEvery)
		defer t.Stop()
		probe := readyzProbe(conf, s.apiPort, s.cfg.APICheckTimeout)
		bind := s.addonApplier(ctx)
		for {
			if s.pool.check(ctx, probe) {
				s.notifyMasters()
			}
			bind()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}

// machineAddr is a machine's address for DNS: its static address in the
// site, else from (an address an authenticated report or this server's
// lease gave), if valid.
func (s *Server) machineAddr(snap *snapshot, machine, from string) (netip.Addr, bool) {
	if m := snap.site.Machine(machine); m != nil && m.Address != "" {
		if p, err := netip.ParsePrefix(m.Address); err == nil {
			return p.Addr(), true
		}
	}
	a, err := netip.ParseAddr(from)
	return a.Unmap(), err == nil
}

// Hosts maps the host name of every machine of the site whose address is
// known to that address: static, else leased by this server or given by an
// authenticated report (MachineStatus.Addr), never one merely seen.
func (s *Server) Hosts() map[string]netip.Addr {
	snap := s.snap.Load()
	out := map[string]netip.Addr{}
	for _, m := range snap.site.Machines {
		st, _ := s.state.get(m.Name)
		from := st.Addr
		if a, ok := s.leases.lookup(m.MAC); ok && m.MAC != "" {
			from = a.String()
		}
		if a, ok := s.machineAddr(snap, m.Name, from); ok {
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
