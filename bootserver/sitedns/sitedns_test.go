package sitedns

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// start serves s on 127.0.0.1 (UDP and TCP on one port) for the test.
func start(t *testing.T, s *Server) string {
	t.Helper()
	pc, ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pc, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not stop")
		}
	})
	return pc.LocalAddr().String()
}

func ask(t *testing.T, server, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(q, server)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r
}

func addrsOf(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func labServer(t *testing.T, cfg Config) (*Server, string) {
	s := New(cfg)
	s.Hosts("lab.example", map[string]netip.Addr{
		"etcd-1":   netip.MustParseAddr("10.77.0.11"),
		"master-1": netip.MustParseAddr("10.77.0.21"),
		"Minion-1": netip.MustParseAddr("10.77.0.31"),
	})
	s.ReadyMasters("api.lab.example", nil)
	return s, start(t, s)
}

func TestAPINameAnswersReadyMastersInTurn(t *testing.T) {
	s, srv := labServer(t, Config{})
	if r := ask(t, srv, "udp", "api.lab.example", dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("no master ready: rcode %s, answers %v; want NOERROR and none", dns.RcodeToString[r.Rcode], r.Answer)
	}
	s.ReadyMasters("api.lab.example", addrs("10.77.0.21", "10.77.0.22", "10.77.0.23"))
	firsts := map[string]bool{}
	for _, network := range []string{"udp", "tcp", "udp"} {
		r := ask(t, srv, network, "API.lab.example", dns.TypeA)
		got := addrsOf(r)
		sorted := slices.Sorted(slices.Values(got))
		if !slices.Equal(sorted, []string{"10.77.0.21", "10.77.0.22", "10.77.0.23"}) {
			t.Fatalf("over %s: answers %v, want the three masters", network, got)
		}
		if !r.Authoritative || r.Answer[0].Header().Ttl != 5 {
			t.Errorf("over %s: authoritative %v, TTL %d; want true, 5", network, r.Authoritative, r.Answer[0].Header().Ttl)
		}
		firsts[got[0]] = true
	}
	if len(firsts) != 3 {
		t.Errorf("three queries began with %v: the order does not rotate", firsts)
	}

	s.ReadyMasters("api.lab.example", addrs("10.77.0.23")) // two stopped
	if got := addrsOf(ask(t, srv, "udp", "api.lab.example", dns.TypeA)); !slices.Equal(got, []string{"10.77.0.23"}) {
		t.Errorf("after two masters stopped: %v", got)
	}
	if r := ask(t, srv, "udp", "api.lab.example", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("AAAA of the API name: %s %v, want NOERROR and no answer", dns.RcodeToString[r.Rcode], r.Answer)
	}
	s.ReadyMasters("api.lab.example", addrs("10.77.0.23", "fd00::21"))
	if r := ask(t, srv, "udp", "api.lab.example", dns.TypeAAAA); len(r.Answer) != 1 || r.Answer[0].(*dns.AAAA).AAAA.String() != "fd00::21" {
		t.Errorf("AAAA of the API name with an IPv6 master: %v", r.Answer)
	}
	if got := addrsOf(ask(t, srv, "udp", "api.lab.example", dns.TypeA)); !slices.Equal(got, []string{"10.77.0.23"}) {
		t.Errorf("A of the API name with an IPv6 master too: %v", got)
	}
}

func TestMachinesResolveByHostNameAndFQDNAndOtherSiteNamesDoNot(t *testing.T) {
	_, srv := labServer(t, Config{})
	for name, want := range map[string]string{
		"etcd-1.lab.example": "10.77.0.11", "etcd-1": "10.77.0.11",
		"minion-1.LAB.example": "10.77.0.31", "master-1.lab.example.": "10.77.0.21",
	} {
		if got := addrsOf(ask(t, srv, "udp", name, dns.TypeA)); !slices.Equal(got, []string{want}) {
			t.Errorf("%s = %v, want %s", name, got, want)
		}
	}
	for _, name := range []string{"nobody.lab.example", "etcd-1.x.lab.example"} {
		r := ask(t, srv, "udp", name, dns.TypeA)
		if r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: %s, want NXDOMAIN", name, dns.RcodeToString[r.Rcode])
		}
		if len(r.Ns) != 1 || r.Ns[0].(*dns.SOA).Minttl != 5 {
			t.Errorf("%s: NXDOMAIN without the zone's SOA (negative TTL 5): %v", name, r.Ns)
		}
	}
	if r := ask(t, srv, "tcp", "etcd-1.lab.example", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("AAAA of a machine: %s %v, want NOERROR without answers", dns.RcodeToString[r.Rcode], r.Answer)
	}
}

func TestNamesOutsideTheSiteAreForwardedOrRefused(t *testing.T) {
	// An upstream: another sitedns server that knows one outside name.
	up := New(Config{})
	up.Hosts("elsewhere.example", map[string]netip.Addr{"www": netip.MustParseAddr("192.0.2.7")})
	upAddr := start(t, up)

	_, srv := labServer(t, Config{Upstreams: []string{upAddr}})
	for _, network := range []string{"udp", "tcp"} {
		r := ask(t, srv, network, "www.elsewhere.example", dns.TypeA)
		if got := addrsOf(r); !slices.Equal(got, []string{"192.0.2.7"}) {
			t.Errorf("forwarded over %s: %v", network, got)
		}
	}
	if r := ask(t, srv, "udp", "gone.elsewhere.example", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("upstream's NXDOMAIN came back as %s", dns.RcodeToString[r.Rcode])
	}

	_, alone := labServer(t, Config{})
	if r := ask(t, alone, "udp", "www.elsewhere.example", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Errorf("no upstream: %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}

	dead, _ := net.ListenPacket("udp", "127.0.0.1:0") // never answers
	defer dead.Close()
	_, stuck := labServer(t, Config{Upstreams: []string{dead.LocalAddr().String()}, Timeout: 200 * time.Millisecond})
	if r := ask(t, stuck, "udp", "www.elsewhere.example", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("upstream silent: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
}

func TestUpstreamsComeFromResolvConfWithoutThisServer(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("search lab.example\nnameserver 10.77.0.1\nnameserver 192.0.2.53\nnameserver ::1\n"), 0o644)
	got, err := Upstreams(p, netip.MustParseAddr("10.77.0.1"))
	if err != nil || !slices.Equal(got, []string{"192.0.2.53:53", "[::1]:53"}) {
		t.Errorf("Upstreams = %v, %v", got, err)
	}
	if got, err := Upstreams(filepath.Join(t.TempDir(), "none"), netip.Addr{}); err != nil || got != nil {
		t.Errorf("no resolv.conf: %v, %v; want none and no error", got, err)
	}
}

// recorder is a dns.ResponseWriter that keeps the reply.
type recorder struct {
	dns.ResponseWriter
	remote net.Addr
	msg    *dns.Msg
}

func (r *recorder) RemoteAddr() net.Addr      { return r.remote }
func (r *recorder) WriteMsg(m *dns.Msg) error { r.msg = m; return nil }
func (r *recorder) LocalAddr() net.Addr       { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }

// FuzzServeDNS feeds any message a client could send: every one that
// parses gets exactly one reply with its ID, and nothing panics.
func FuzzServeDNS(f *testing.F) {
	for _, name := range []string{"api.lab.example.", "etcd-1.lab.example.", "nobody.lab.example.", "lab.example.", "."} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeANY, dns.TypeSOA} {
			q := new(dns.Msg)
			q.SetQuestion(name, qt)
			q.SetEdns0(4096, false)
			b, _ := q.Pack()
			f.Add(b)
		}
	}
	s := New(Config{}) // no upstreams: nothing leaves the process
	s.Hosts("lab.example", map[string]netip.Addr{"etcd-1": netip.MustParseAddr("10.77.0.11")})
	s.ReadyMasters("api.lab.example", addrs("10.77.0.21", "10.77.0.22"))
	f.Fuzz(func(t *testing.T, b []byte) {
		q := new(dns.Msg)
		if q.Unpack(b) != nil {
			return
		}
		w := &recorder{remote: &net.UDPAddr{IP: net.IPv4(10, 77, 0, 5), Port: 5353}}
		s.ServeDNS(w, q)
		if w.msg == nil || w.msg.Id != q.Id || !w.msg.Response {
			t.Fatalf("reply %v to %v", w.msg, q)
		}
		if _, err := w.msg.Pack(); err != nil {
			t.Fatalf("reply does not pack: %v", err)
		}
	})
}

// The boot server's DNS is no open resolver: a host outside the site's
// networks that asks for an outside name is REFUSED and the upstream
// never hears of it (a reflection or cache-poisoning attempt through the
// boot server gets nothing); the site's own names are still answered.
func TestNoForwardingForHostsOutsideTheSitesNetworks(t *testing.T) {
	var asked atomic.Int32
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		asked.Add(1)
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.IPv4(192, 0, 2, 7)})
		w.WriteMsg(m)
	})}
	go up.ActivateAndServe()
	t.Cleanup(func() { up.Shutdown() })

	s := New(Config{Upstreams: []string{pc.LocalAddr().String()}, Clients: []netip.Prefix{netip.MustParsePrefix("10.77.0.0/24")}})
	s.Hosts("lab.example", map[string]netip.Addr{"master-1": netip.MustParseAddr("10.77.0.21")})
	query := func(from net.IP, name string) *dns.Msg {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		w := &recorder{remote: &net.UDPAddr{IP: from, Port: 5353}}
		s.ServeDNS(w, q)
		return w.msg
	}
	for _, tc := range []struct {
		from  string
		name  string
		rcode int
		addr  string
		asked int32
	}{
		{"10.77.0.5", "www.elsewhere.example.", dns.RcodeSuccess, "192.0.2.7", 1},
		{"127.0.0.1", "www.elsewhere.example.", dns.RcodeSuccess, "192.0.2.7", 1},
		{"203.0.113.9", "www.elsewhere.example.", dns.RcodeRefused, "", 0},
		{"10.77.1.5", "www.elsewhere.example.", dns.RcodeRefused, "", 0},
		{"::ffff:203.0.113.9", "www.elsewhere.example.", dns.RcodeRefused, "", 0},
		{"203.0.113.9", "master-1.lab.example.", dns.RcodeSuccess, "10.77.0.21", 0},
	} {
		before := asked.Load()
		r := query(net.ParseIP(tc.from), tc.name)
		got := addrsOf(r)
		if r.Rcode != tc.rcode || (tc.addr != "" && !slices.Equal(got, []string{tc.addr})) || asked.Load()-before != tc.asked {
			t.Errorf("%s asks %s: %s %v, upstream asked %d times; want %s %s, upstream asked %d",
				tc.from, tc.name, dns.RcodeToString[r.Rcode], got, asked.Load()-before, dns.RcodeToString[tc.rcode], tc.addr, tc.asked)
		}
	}
}
