package bootserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/plinth-dev/plinth/bootserver/pki"
	"github.com/plinth-dev/plinth/bootserver/siteetcd"
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
	// MasterTTL drops a ready master from Masters when it has posted no
	// event for that long; 0 keeps it until its next non-ready event.
	MasterTTL time.Duration
	// CA, if set, issues each machine's TLS material into its profile.
	CA *pki.CA
	// Etcd, if set, watches the site's etcd members (siteetcd): the
	// cluster's ID goes into every profile, snapshots are taken on its
	// schedule, and a requested restore is offered to the members. New
	// fills in its client (a certificate from CA), members and log.
	Etcd *siteetcd.Config
}

// Server is a boot server.
type Server struct {
	cfg      Config
	log      *slog.Logger
	snap     atomic.Pointer[snapshot]
	state    *stateTable
	tokens   *tokens
	journals *journals
	metrics  *metrics
	leases   *leases
	etcd     *siteetcd.Watcher // nil unless cfg.Etcd
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
	if cfg.IPXEDir == "" {
		cfg.IPXEDir = "/usr/lib/ipxe"
	}
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	if cfg.PublicURL == "" {
		return nil, errors.New("serve: a public URL is needed (how machines reach this server)")
	}
	loaded := fingerprint(cfg.SiteDir, cfg.ArtifactsDir)
	snap, err := load(cfg.SiteDir, cfg.ArtifactsDir)
	if err != nil {
		return nil, err
	}
	state := newStateTable()
	s := &Server{cfg: cfg, log: cfg.Log, state: state, tokens: newTokens(), journals: newJournals(), metrics: newMetrics(state), leases: newLeases(), neighbour: procNeighbour, loaded: loaded}
	s.snap.Store(snap)
	s.seed(snap)
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
		s.metrics.reloads.WithLabelValues("applied").Inc()
		s.seed(snap)
		s.notifyMasters() // the API name may have changed
		s.log.Info("reloaded", "site", snap.site.Name, "machines", len(snap.site.Machines), "images", len(snap.images))
	}
	return nil
}

// Handler is the HTTP side, for tests and embedding.
func (s *Server) Handler() http.Handler { return s.routes() }

// Run listens on the configured address and serves until ctx is cancelled.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves HTTP on ln, and DHCP and TFTP as configured, reloading on
// SIGHUP and on changes on disk, until ctx is cancelled; then it stops
// taking requests and waits for downloads in flight (up to shutdownGrace).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	// Event streams never end by themselves: cancel them at shutdown, or
	// Shutdown would wait for every open status page.
	streams, endStreams := context.WithCancel(context.Background())
	defer endStreams()
	hs := &http.Server{
		Handler:           s.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return streams },
	}
	hs.RegisterOnShutdown(endStreams)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
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
	s.notifyMasters() // the site's names, before any machine reports
	defer s.runEtcd(ctx)()
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
			s.notifyMasters() // masters whose heartbeat stopped (MasterTTL)
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
