package bootserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/plinth-dev/plinth/bootserver/pki"
	"github.com/plinth-dev/plinth/bootserver/siteetcd"
	"github.com/plinth-dev/plinth/profiles"
)

// Config configures a Server.
type Config struct {
	SiteDir      string
	ArtifactsDir string
	Listen       string // HTTP address, e.g. ":8080"
	// PublicURL is how machines reach this server, e.g. http://10.0.0.1:8080;
	// it goes into iPXE scripts and kernel command lines.
	PublicURL string
	// DHCPInterface is where DHCP is answered when the site's [dhcp] mode is
	// proxy or server; ServerIP is this server's address there.
	DHCPInterface string
	ServerIP      netip.Addr
	TFTPListen    string // e.g. ":69"; "" disables TFTP
	IPXEDir       string // undionly.kpxe and ipxe.efi; default /usr/lib/ipxe
	Poll          time.Duration
	Log           *slog.Logger
	// Masters, if set, follows the ready masters (for the API name's DNS);
	// if it is also a HostSink, the machines' addresses too.
	Masters MasterSink
	// CA, if set, issues each machine's TLS material into its profile;
	// with TLSListen, it is also the HTTPS listener's (see auth.go).
	CA *pki.CA
	// TLSListen is the HTTPS address machines send their reports to with
	// their certificate, e.g. ":8443"; needs CA. "" serves HTTP only (then
	// no report can prove a certificate, and the API pool stays empty).
	TLSListen string
	// StateDir keeps what must outlive a restart: the API pool, and the
	// report and enrolment tokens' hashes. Default: the CA's directory; "" without a CA
	// keeps them in memory.
	StateDir string
	// APICheckEvery is how often each API server in the pool has its
	// /readyz checked (default 2 s); APICheckTimeout bounds one check
	// (default 3 s). poolFailAfter failures in a row take it out of the name.
	APICheckEvery, APICheckTimeout time.Duration
	// IdleTimeout closes a kept-alive connection that sends no new request
	// for that long (default 2 min); BodyTimeout is how long a client gets
	// to send a request body (default 30 s). With ReadHeaderTimeout (10 s)
	// they bound what a slow or silent client holds (limits.go).
	IdleTimeout, BodyTimeout time.Duration
	// Etcd, if set, watches the site's etcd members (siteetcd): the
	// cluster's ID goes into every profile, snapshots are taken on its
	// schedule, and a requested restore is offered to the members. New
	// fills in its client (a certificate from CA), members and log.
	Etcd *siteetcd.Config
}

// Server is a boot server.
type Server struct {
	cfg     Config
	log     *slog.Logger
	snap    atomic.Pointer[snapshot]
	state   *stateTable
	tokens  *tokens
	reports *reportKeys
	pool    *apiPool
	streams atomic.Int32 // event streams open (limits.go)
	// firstMACs: the MAC each UUID- or label-matched machine enrolled with.
	firstMACs *firstMACs
	tlsConf   *tls.Config // the HTTPS listener's; nil without TLSListen
	tlsURL    string      // how machines reach it
	apiPort   int         // where the pool's health checks find /readyz
	journals  *journals
	metrics   *metrics
	leases    *leases
	etcd      *siteetcd.Watcher // nil unless cfg.Etcd
	// neighbour finds the MAC behind an address on the boot network; a
	// field so tests need no ARP table.
	neighbour func(netip.Addr) (string, bool)
	reloadM   sync.Mutex
	// loaded fingerprints the files as they were just before New loaded
	// them, so the watcher sees any change made after that, even one made
	// before Serve starts watching.
	loaded string

	mastersM    sync.Mutex
	masters     []netip.Addr // as last sent to cfg.Masters
	apiName     string
	mastersSent bool
	hosts       map[string]netip.Addr // as last sent to a HostSink
	domain      string
	hostsSent   bool
}

// New loads the site and the artifacts; a bad site is an error here, never
// a warning at boot time.
func New(cfg Config) (*Server, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Poll == 0 {
		cfg.Poll = 2 * time.Second
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	if cfg.BodyTimeout == 0 {
		cfg.BodyTimeout = 30 * time.Second
	}
	if cfg.IPXEDir == "" {
		cfg.IPXEDir = "/usr/lib/ipxe"
	}
	if cfg.APICheckEvery <= 0 {
		cfg.APICheckEvery = 2 * time.Second
	}
	if cfg.APICheckTimeout <= 0 {
		cfg.APICheckTimeout = 3 * time.Second
	}
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	if cfg.PublicURL == "" {
		return nil, errors.New("serve: a public URL is needed (how machines reach this server)")
	}
	if cfg.StateDir == "" && cfg.CA != nil {
		cfg.StateDir = cfg.CA.Dir()
	}
	loaded := fingerprint(cfg.SiteDir, cfg.ArtifactsDir)
	site, siteErr, err := LoadSiteOrLastGood(cfg.SiteDir, cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if siteErr != nil {
		cfg.Log.Error("the site has problems: serving the last good site until they are fixed; a fixed site is taken as soon as it is saved",
			"site", cfg.SiteDir, "last_good", site.Dir, "problems", siteErr.Error())
	}
	snap, err := loadWith(site, cfg.ArtifactsDir)
	if err != nil {
		return nil, err
	}
	if siteErr == nil {
		if err := saveLastGood(cfg.StateDir, site); err != nil {
			cfg.Log.Warn("last good site: not kept", "state", cfg.StateDir, "err", err)
		}
	}
	state := newStateTable()
	s := &Server{cfg: cfg, log: cfg.Log, state: state, journals: newJournals(), metrics: newMetrics(state), leases: newLeases(), neighbour: procNeighbour, loaded: loaded}
	s.apiPort = profiles.APIPort
	s.reports = loadReportKeys(s.statePath(ReportKeysFile), cfg.Log)
	s.tokens = loadTokens(s.statePath(TokensFile), cfg.Log)
	s.firstMACs = loadFirstMACs(s.statePath(firstMACsFile), cfg.Log)
	s.pool = loadPool(s.statePath(PoolFile), cfg.Log)
	if cfg.TLSListen != "" {
		if cfg.CA == nil {
			return nil, errors.New("serve: an HTTPS listener needs the site CA")
		}
		if s.tlsConf, err = serverTLS(cfg.CA, cfg.PublicURL, cfg.ServerIP, cfg.TLSListen); err != nil {
			return nil, err
		}
		if s.tlsURL, err = tlsURL(cfg.PublicURL, cfg.TLSListen); err != nil {
			return nil, err
		}
	}
	s.snap.Store(snap)
	s.seed(snap)
	s.pool.keep(s.apiServerOfSite)
	if cfg.Etcd != nil {
		if s.etcd, err = s.newEtcdWatcher(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// seed lists the site's machines on the status page before they boot.
func (s *Server) seed(snap *snapshot) {
	for _, m := range snap.site.Machines {
		m := m
		s.state.update(m.Name, func(st *MachineStatus) {
			st.Known, st.MAC, st.Role, st.Image = true, m.MAC, m.Role, m.Image
			if im := snap.images[m.Image]; im != nil {
				if _, _, r, err := im.bootFiles(); err == nil {
					st.Rootfs = r
				}
			}
		})
	}
	s.metrics.images.Set(float64(len(snap.images)))
}

// Reload reads the site and artifacts again; a broken site or manifest is
// rejected and the running configuration kept. Downloads in flight keep
// their open files.
func (s *Server) Reload() error {
	s.reloadM.Lock()
	defer s.reloadM.Unlock()
	snap, err := load(s.cfg.SiteDir, s.cfg.ArtifactsDir)
	if err != nil {
		s.metrics.reloads.WithLabelValues("rejected").Inc()
		return fmt.Errorf("reload rejected, keeping the running configuration: %w", err)
	}
	old := s.snap.Swap(snap)
	if old == nil || old.key != snap.key {
		if err := saveLastGood(s.cfg.StateDir, snap.site); err != nil {
			s.log.Warn("last good site: not kept", "state", s.cfg.StateDir, "err", err)
		}
		s.metrics.reloads.WithLabelValues("applied").Inc()
		s.seed(snap)
		s.pool.keep(s.apiServerOfSite)
		s.notifyMasters() // the API name may have changed
		s.log.Info("reloaded", "site", snap.site.Name, "machines", len(snap.site.Machines), "images", len(snap.images))
	}
	return nil
}

// statePath is name in the state directory, "" without one.
func (s *Server) statePath(name string) string {
	if s.cfg.StateDir == "" {
		return ""
	}
	return filepath.Join(s.cfg.StateDir, name)
}

// Handler is the HTTP side, for tests and embedding.
func (s *Server) Handler() http.Handler { return s.routes() }

// Run listens on the configured addresses and serves until ctx is cancelled.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	var tln net.Listener
	if s.tlsConf != nil {
		if tln, err = net.Listen("tcp", s.cfg.TLSListen); err != nil {
			ln.Close()
			return fmt.Errorf("serve: HTTPS: %w", err)
		}
	}
	return s.Serve(ctx, ln, tln)
}

// Serve serves HTTP on ln, HTTPS on tln (if not nil; needs TLSListen's
// configuration), and DHCP and TFTP as configured, reloading on SIGHUP and
// on changes on disk, until ctx is cancelled; then it stops taking
// requests and waits for downloads in flight (up to shutdownGrace).
func (s *Server) Serve(ctx context.Context, ln, tln net.Listener) error {
	// Event streams never end by themselves: cancel them at shutdown, or
	// Shutdown would wait for every open status page.
	streams, endStreams := context.WithCancel(context.Background())
	defer endStreams()
	hs := &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// Failed handshakes (a report with a foreign certificate) and
		// the like go to the server's log, not to stderr unformatted.
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext: func(net.Listener) context.Context { return streams },
	}
	hs.RegisterOnShutdown(endStreams)
	errc := make(chan error, 2)
	go func() { errc <- hs.Serve(ln) }()
	if tln != nil {
		if s.tlsConf == nil {
			hs.Close()
			return errors.New("serve: an HTTPS listener without a TLS configuration (Config.TLSListen)")
		}
		go func() { errc <- hs.Serve(tls.NewListener(tln, s.tlsConf)) }()
		s.log.Info("serving reports over HTTPS", "https", tln.Addr().String(), "url", s.tlsURL)
	}
	snap := s.snap.Load()
	s.log.Info("serving", "http", ln.Addr().String(), "public", s.cfg.PublicURL, "site", snap.site.Name)
	iface := s.cfg.DHCPInterface
	if iface == "" {
		iface = snap.site.DHCP.Interface
	}
	if mode := snap.site.DHCP.Mode; mode != "off" && mode != "" && iface != "" {
		stop, err := s.serveDHCP(mode, iface)
		if err != nil {
			hs.Close()
			return err
		}
		defer stop()
	}
	if s.cfg.TFTPListen != "" {
		stop, err := s.serveTFTP()
		if err != nil {
			hs.Close()
			return err
		}
		defer stop()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(s.cfg.Poll)
	defer tick.Stop()
	seen := s.loaded
	s.notifyMasters() // the site's names and the pool kept, before any machine reports
	defer s.runEtcd(ctx)()
	defer s.runPoolChecks(ctx)()
	for {
		select {
		case <-ctx.Done():
			s.log.Info("shutting down")
			sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
			defer cancel()
			if err := hs.Shutdown(sctx); err != nil {
				return fmt.Errorf("serve: shutdown: %w", err)
			}
			return nil
		case err := <-errc:
			return fmt.Errorf("serve: %w", err)
		case <-hup:
			seen = fingerprint(s.cfg.SiteDir, s.cfg.ArtifactsDir)
			if err := s.Reload(); err != nil {
				s.log.Error("SIGHUP", "err", err)
			}
		case <-tick.C:
			fp := fingerprint(s.cfg.SiteDir, s.cfg.ArtifactsDir)
			if fp == seen {
				continue
			}
			seen = fp
			if err := s.Reload(); err != nil {
				s.log.Error("watch", "err", err)
				// The site may have changed again between the fingerprint
				// and the load (a rename landing in between): remember
				// what was rejected, so the same broken files are not
				// reported again on the next poll.
				seen = fingerprint(s.cfg.SiteDir, s.cfg.ArtifactsDir)
			}
		}
	}
}

// shutdownGrace is how long a stopping server waits for downloads in flight.
const shutdownGrace = 10 * time.Second
