package main

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/bootserver"
	"github.com/plinth-dev/plinth/bootserver/siteetcd"
)

func newServeCmd(g *globals) *cobra.Command {
	var c bootserver.Config
	var serverIP, stateDir, dnsFlag string
	var initCA bool
	var dnsClients []string
	var bundleFile, bundleDir string
	var bundleTrust trustFlags
	var etcdPoll, etcdEvery time.Duration
	var etcdKeep int
	var etcdutlFlag, tlsListen string
	var images []string
	cmd := &cobra.Command{
		Use:   "serve --site DIR --artifacts DIR | --site DIR --image REF... | --bundle FILE [--listen ADDR]",
		Short: "Netboot machines: DHCP/TFTP for PXE, iPXE scripts, artifacts and profiles over HTTP",
		Long: `Serve a site's machines from built artifacts. Each machine PXE-boots into iPXE,
gets a boot script pinned by digest, its kernel, initramfs and root file system,
and its own rendered profile. The site's [dhcp] table says whether to answer
DHCP (proxy: beside an existing DHCP server; server: as the lab's only one) on
--dhcp-interface. The status page (/) and /metrics show the fleet. SIGHUP, or
any change on disk, reloads the site and artifacts; a broken site is rejected
and the running one kept. It watches the site's etcd members (--etcd-poll):
their cluster ID goes into every profile, snapshots into STATE/etcd/snapshots,
and it offers the members a restore asked for with plinth etcd restore.
Machines send their reports over HTTPS (--tls-listen) with their own
certificate, or before they have one with their boot's token; the API name
serves the masters that reported ready that way and whose /readyz passes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if bundleFile != "" {
				trust, err := bundleTrust.trust()
				if err != nil {
					return err
				}
				if err := serveBundle(cmd, &c, bundleFile, bundleDir, trust, g.log); err != nil {
					return err
				}
			}
			if len(images) > 0 {
				if bundleFile != "" || cmd.Flags().Changed("artifacts") {
					return fmt.Errorf("--image takes the artifacts from a registry: drop --artifacts and --bundle")
				}
				var err error
				if c.ArtifactsDir, err = pullImages(cmd, images, g); err != nil {
					return err
				}
				g.log.Info("serving images pulled from a registry", "images", len(images), "artifacts", c.ArtifactsDir)
			}
			if c.SiteDir == "" || c.ArtifactsDir == "" {
				return fmt.Errorf("--site and --artifacts are required")
			}
			if serverIP != "" {
				a, err := netip.ParseAddr(serverIP)
				if err != nil {
					return fmt.Errorf("--server-ip: %w", err)
				}
				c.ServerIP = a
			}
			lhost, port, err := net.SplitHostPort(c.Listen)
			if err != nil {
				return fmt.Errorf("--listen %q: %w", c.Listen, err)
			}
			if c.PublicURL == "" {
				// Only DHCP's boot file name and requests without a Host
				// use it: scripts and command lines follow the address
				// each machine reached the server at.
				host := serverIP
				if a, err := netip.ParseAddr(lhost); err == nil && !a.IsUnspecified() {
					host = lhost
				} else if host == "" {
					host = firstAddr()
				}
				c.PublicURL = "http://" + net.JoinHostPort(host, port)
			}
			if err := bootserver.CheckPublicURL(c.PublicURL, c.Listen, localAddrs()); err != nil {
				return fmt.Errorf("--public-url: %w", err)
			}
			switch tlsListen {
			case "off":
			case "":
				host, _, err := net.SplitHostPort(c.Listen)
				if err != nil {
					return fmt.Errorf("--listen %q: %w", c.Listen, err)
				}
				c.TLSListen = net.JoinHostPort(host, "8443")
			default:
				c.TLSListen = tlsListen
			}
			c.Log = g.log
			dns, err := siteServices(&c, stateDir, initCA, dnsFlag, dnsClients, g.log)
			if err != nil {
				return err
			}
			if etcdPoll > 0 {
				if etcdKeep < 1 {
					return fmt.Errorf("--etcd-snapshots %d: keep at least one", etcdKeep)
				}
				etcdutl, err := siteetcd.FindEtcdutl(etcdutlFlag)
				if err != nil {
					return err
				}
				c.Etcd = &siteetcd.Config{Dir: filepath.Join(c.CA.Dir(), "etcd"), Poll: etcdPoll, SnapshotEvery: etcdEvery, Keep: etcdKeep, Etcdutl: etcdutl}
			}
			s, err := bootserver.New(c)
			if err != nil {
				return err
			}
			return runAll(cmd.Context(), s.Run, dns)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.SiteDir, "site", "", "site profile directory")
	f.StringVar(&bundleFile, "bundle", "", "serve a bundle (plinth bundle) instead of --site and --artifacts: verified, then unpacked into --bundle-dir")
	f.StringVar(&bundleDir, "bundle-dir", "", "where a --bundle is unpacked, swapped in atomically (default $PLINTH_CACHE/bundles)")
	bundleTrust.add(cmd)
	f.StringVar(&c.ArtifactsDir, "artifacts", "artifacts", "artifacts directory (the builder's --out)")
	f.StringArrayVar(&images, "image", nil, "serve an image from an OCI registry instead of --artifacts: REPO@sha256:… as plinth push printed it, or oci:DIR@sha256:… from a mirror (repeat for each image); pulled once into $PLINTH_CACHE/registry, every file checked, with your Docker credentials")
	f.StringVar(&c.Listen, "listen", ":8080", "HTTP listen address")
	f.StringVar(&c.PublicURL, "public-url", "", "URL machines reach this server at (default http://LISTEN-ADDRESS:PORT, or SERVER-IP when listening on every address; refused if the server does not listen there). Boot scripts and command lines follow the address each machine reached the server at; this URL is for DHCP boot file names")
	f.StringVar(&c.DHCPInterface, "dhcp-interface", "", "interface to answer DHCP on (site [dhcp] mode proxy or server)")
	f.StringVar(&serverIP, "server-ip", "", "this server's IPv4 address on the boot network")
	f.StringVar(&c.TFTPListen, "tftp", "", "TFTP listen address for legacy PXE, e.g. :69 (off when empty)")
	f.StringVar(&c.IPXEDir, "ipxe-dir", "/usr/lib/ipxe", "where Debian's ipxe package keeps undionly.kpxe and ipxe.efi")
	f.StringVar(&stateDir, "state", "", "where the site CA lives, outside the site (default $XDG_STATE_HOME/plinth/SITE-NAME)")
	f.BoolVar(&initCA, "init-ca", false, "create the site CA in the state directory if it has none (as plinth ca init does); without it a missing CA stops the server")
	f.StringSliceVar(&dnsClients, "dns-clients", nil, "networks (CIDR, comma-separated) whose DNS queries for names outside the site are forwarded; default: the networks of this host's interfaces (loopback always); others get REFUSED")
	f.StringVar(&dnsFlag, "dns", "auto", "site DNS (API name, host names) on ADDR[:53]; auto: on at SERVER-IP:53 with --server-ip and an api_name or [dhcp] mode server; off")
	f.DurationVar(&etcdPoll, "etcd-poll", 30*time.Second, "ask every etcd member for its status this often (cluster ID in profiles, snapshots, restores); 0: do not watch etcd")
	f.DurationVar(&etcdEvery, "etcd-snapshot-every", time.Hour, "take an etcd snapshot into STATE/etcd/snapshots when the newest is this old; 0: none")
	f.IntVar(&etcdKeep, "etcd-snapshots", 24, "keep this many etcd snapshots (the one a restore names is kept too)")
	f.StringVar(&etcdutlFlag, "etcdutl", "", "etcdutl to check each snapshot with (default: etcdutl on PATH, if any)")
	f.StringVar(&tlsListen, "tls-listen", "", "HTTPS address for the machines' reports, proven by their certificates (default: --listen's host, port 8443; off: none, and no master can join the API name)")
	f.DurationVar(&c.APICheckEvery, "api-check-every", 2*time.Second, "check each API server in the API name's pool (its /readyz over TLS) this often; two failures in a row take it out")
	f.DurationVar(&c.APICheckTimeout, "api-check-timeout", 3*time.Second, "how long one check of an API server's /readyz may take")
	return cmd
}

// firstAddr is the first non-loopback IPv4 address of this host.
// localAddrs are this host's interface addresses.
func localAddrs() []netip.Addr {
	var out []netip.Addr
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if x, ok := netip.AddrFromSlice(ipn.IP); ok {
				out = append(out, x.Unmap())
			}
		}
	}
	return out
}

func firstAddr() string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
			return ipn.IP.String()
		}
	}
	return strings.TrimSpace("127.0.0.1")
}
