// Package sitedns answers DNS for a site from the boot server: the API
// name with every ready master (round robin), each machine's host name and
// FQDN with its address, NXDOMAIN for other names in the site's domain, and
// everything else forwarded to the boot server host's own resolvers.
package sitedns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Config configures a Server.
type Config struct {
	// Upstreams ("host:port") get the queries for names outside the site;
	// none: those are REFUSED.
	Upstreams []string
	// Clients are the networks whose queries for names outside the site
	// are forwarded (loopback always is); a query from anywhere else for
	// such a name is REFUSED, so the boot server is no open resolver.
	// The site's own names are answered to anyone who asks.
	Clients []netip.Prefix
	// TTL of the answers (default 5 s): short, so a master that stops
	// leaves the clients' caches quickly.
	TTL uint32
	// Timeout of one forwarded query per upstream (default 2 s).
	Timeout time.Duration
	Log     *slog.Logger
}

// Server is the site's DNS server. It implements bootserver.MasterSink and
// bootserver.HostSink.
type Server struct {
	cfg Config
	log *slog.Logger

	mu      sync.RWMutex
	domain  string                // FQDN, lower case; "" when the site has none
	api     string                // FQDN, lower case
	masters []netip.Addr          // ready masters
	hosts   map[string]netip.Addr // FQDN and bare "host." → address

	rr atomic.Uint64
}

// New makes a server that knows no names yet.
func New(cfg Config) *Server {
	if cfg.TTL == 0 {
		cfg.TTL = 5
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: cfg.Log, hosts: map[string]netip.Addr{}}
}

// ReadyMasters sets the addresses the API name answers with.
func (s *Server) ReadyMasters(apiName string, addrs []netip.Addr) {
	s.mu.Lock()
	s.api, s.masters = fqdn(apiName), slices.Clone(addrs)
	s.mu.Unlock()
	s.log.Info("API name", "name", apiName, "masters", fmt.Sprint(addrs))
}

// Hosts sets the site's domain and the machines' addresses by host name.
func (s *Server) Hosts(domain string, hosts map[string]netip.Addr) {
	m := make(map[string]netip.Addr, 2*len(hosts))
	d := fqdn(domain)
	for h, a := range hosts {
		h = strings.ToLower(strings.TrimSuffix(h, "."))
		m[h+"."] = a
		if d != "" {
			m[h+"."+d] = a
		}
	}
	s.mu.Lock()
	s.domain, s.hosts = d, m
	s.mu.Unlock()
	s.log.Debug("host names", "domain", domain, "hosts", len(hosts))
}

func fqdn(name string) string {
	if name == "" {
		return ""
	}
	return dns.Fqdn(strings.ToLower(name))
}

// ServeDNS answers one query.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := s.answer(w, r)
	if m == nil {
		return
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if o := r.IsEdns0(); o != nil && int(o.UDPSize()) > size {
			size = int(o.UDPSize())
		}
		m.Truncate(size)
	}
	if err := w.WriteMsg(m); err != nil {
		s.log.Debug("dns: write", "remote", w.RemoteAddr().String(), "err", err)
	}
}

func (s *Server) answer(w dns.ResponseWriter, r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	if r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 {
		m.SetRcode(r, dns.RcodeNotImplemented)
		return m
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	m.SetReply(r)
	s.mu.RLock()
	domain, api := s.domain, s.api
	masters := s.masters
	addr, isHost := s.hosts[name]
	s.mu.RUnlock()
	inDomain := domain != "" && dns.IsSubDomain(domain, name)
	switch {
	case api != "" && name == api:
		m.Authoritative = true
		var match []netip.Addr
		for _, a := range masters {
			if s.wants(q, a) {
				match = append(match, a)
			}
		}
		if n := len(match); n > 0 {
			start := int(s.rr.Add(1) % uint64(n))
			for i := range n {
				m.Answer = append(m.Answer, s.rr1(q.Name, match[(start+i)%n]))
			}
		} else if inDomain {
			m.Ns = append(m.Ns, s.soa(domain))
		}
	case isHost:
		m.Authoritative = true
		if s.wants(q, addr) {
			m.Answer = append(m.Answer, s.rr1(q.Name, addr))
		} else if inDomain {
			m.Ns = append(m.Ns, s.soa(domain))
		}
	case inDomain:
		m.Authoritative = true
		if name == domain {
			if q.Qtype == dns.TypeSOA {
				m.Answer = append(m.Answer, s.soa(domain))
			} else {
				m.Ns = append(m.Ns, s.soa(domain))
			}
		} else {
			m.Rcode = dns.RcodeNameError
			m.Ns = append(m.Ns, s.soa(domain))
		}
	default:
		if !s.mayRecurse(w.RemoteAddr()) {
			m.SetRcode(r, dns.RcodeRefused)
			return m
		}
		return s.forward(w, r)
	}
	m.RecursionAvailable = len(s.cfg.Upstreams) > 0
	return m
}

// wants says whether q asks for addr's family (A or AAAA, or ANY).
func (s *Server) wants(q dns.Question, addr netip.Addr) bool {
	switch q.Qtype {
	case dns.TypeANY:
		return true
	case dns.TypeA:
		return addr.Unmap().Is4()
	case dns.TypeAAAA:
		return !addr.Unmap().Is4()
	}
	return false
}

// rr1 is the A or AAAA record of name for addr.
func (s *Server) rr1(name string, addr netip.Addr) dns.RR {
	addr = addr.Unmap()
	if addr.Is4() {
		return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: s.cfg.TTL}, A: net.IP(addr.AsSlice())}
	}
	return &dns.AAAA{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: s.cfg.TTL}, AAAA: net.IP(addr.AsSlice())}
}

// soa is the site zone's SOA, for negative answers: its minimum (the
// negative caching time) is the TTL, so a name that appears is seen soon.
func (s *Server) soa(zone string) dns.RR {
	return &dns.SOA{Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.cfg.TTL},
		Ns: "plinth." + zone, Mbox: "hostmaster." + zone, Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: s.cfg.TTL}
}

// mayRecurse says whether a query from remote may be forwarded: from
// loopback or one of Config.Clients.
func (s *Server) mayRecurse(remote net.Addr) bool {
	var ip netip.Addr
	switch a := remote.(type) {
	case *net.UDPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	}
	ip = ip.Unmap()
	if !ip.IsValid() {
		return false
	}
	if ip.IsLoopback() {
		return true
	}
	for _, p := range s.cfg.Clients {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// LocalNetworks are the networks of this host's interfaces (without
// loopback and link-local ones): the hosts a boot server's DNS serves by
// default, as a resolver's "local service" mode does.
func LocalNetworks() ([]netip.Prefix, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		p, err := netip.ParsePrefix(n.String())
		if err != nil {
			continue
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked()
		if p.Addr().IsLoopback() || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// forward asks the upstreams in turn, over the transport the query came
// on: REFUSED when there are none, SERVFAIL when none answers.
func (s *Server) forward(w dns.ResponseWriter, r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	if len(s.cfg.Upstreams) == 0 {
		m.SetRcode(r, dns.RcodeRefused)
		return m
	}
	network := "udp"
	if _, tcp := w.RemoteAddr().(*net.TCPAddr); tcp {
		network = "tcp"
	}
	c := &dns.Client{Net: network, Timeout: s.cfg.Timeout}
	var errs []error
	for _, up := range s.cfg.Upstreams {
		resp, _, err := c.Exchange(r, up)
		if err == nil {
			resp.Id = r.Id
			return resp
		}
		errs = append(errs, fmt.Errorf("%s: %w", up, err))
	}
	s.log.Debug("dns: forward failed", "name", r.Question[0].Name, "err", errors.Join(errs...))
	m.SetRcode(r, dns.RcodeServerFailure)
	m.RecursionAvailable = true
	return m
}

// Upstreams reads the resolvers of resolv.conf, leaving out self (the
// address this server listens on) so it never forwards to itself. A
// missing file means none.
func Upstreams(resolvConf string, self netip.Addr) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("dns upstreams: %w", err)
	}
	var out []string
	for _, srv := range cc.Servers {
		a, err := netip.ParseAddr(srv)
		if err != nil || a.Unmap() == self.Unmap() || a.IsUnspecified() {
			continue
		}
		out = append(out, net.JoinHostPort(a.String(), cc.Port))
	}
	return out, nil
}

// Listen opens UDP and TCP on addr, on the same port when addr's port is 0.
func Listen(addr string) (net.PacketConn, net.Listener, error) {
	for range 10 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns: %w", err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if _, port, _ := net.SplitHostPort(addr); port != "0" {
			return nil, nil, fmt.Errorf("dns: %w", err)
		}
	}
	return nil, nil, fmt.Errorf("dns: no port free for both UDP and TCP on %s", addr)
}

// Serve answers on pc (UDP) and ln (TCP) until ctx is cancelled.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	servers := []*dns.Server{{PacketConn: pc, Handler: s}, {Listener: ln, Handler: s}}
	errc := make(chan error, len(servers))
	var started sync.WaitGroup
	for _, srv := range servers {
		started.Add(1)
		var once sync.Once
		srv.NotifyStartedFunc = func() { once.Do(started.Done) }
		go func() {
			err := srv.ActivateAndServe()
			once.Do(started.Done)
			errc <- err
		}()
	}
	started.Wait()
	s.log.Info("serving DNS", "udp", pc.LocalAddr().String(), "tcp", ln.Addr().String(), "upstreams", strings.Join(s.cfg.Upstreams, ","))
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("dns: %w", err)
	}
	for _, srv := range servers {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = srv.ShutdownContext(sctx) // an already stopped one says so
		cancel()
	}
	return err
}

// ListenAndServe listens on addr (UDP and TCP) and serves until ctx is
// cancelled.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	pc, ln, err := Listen(addr)
	if err != nil {
		return err
	}
	return s.Serve(ctx, pc, ln)
}
