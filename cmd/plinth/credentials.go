package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/plinth-dev/plinth/bootserver"
	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/bootserver/pki"
	"github.com/plinth-dev/plinth/bootserver/sitedns"
	"github.com/plinth-dev/plinth/profiles"
)

func newCredentialsCmd(g *globals) *cobra.Command {
	var siteDir, stateDir, out, server string
	cmd := &cobra.Command{
		Use:   "credentials --site DIR [--state DIR] --out DIR",
		Short: "Write an operator's admin credentials for a site: CA, admin certificate and key, kubeconfig",
		Long: `Issue an admin client certificate (CN plinth:admin, O system:masters) from the
site CA that plinth serve keeps in its state directory, and write into --out:
ca.pem, admin.pem, admin-key.pem and kubeconfig (server https://API_NAME:6443,
certificates embedded). Use them with kubectl --kubeconfig OUT/kubeconfig and
etcdctl --cacert OUT/ca.pem --cert OUT/admin.pem --key OUT/admin-key.pem.
The CA must exist (plinth ca init).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if siteDir == "" || out == "" {
				return errors.New("--site and --out are required")
			}
			site, err := profiles.LoadSite(siteDir)
			if err != nil {
				return err
			}
			ca, err := openCA(site, siteDir, stateDir, false, g.log)
			if err != nil {
				return err
			}
			if err := pki.CheckOutside(out, siteDir); err != nil {
				return fmt.Errorf("--out: %w", err)
			}
			if server == "" {
				if site.APIName == "" {
					return fmt.Errorf("%s: the site has no [site] api_name: give --server https://HOST:PORT", siteDir)
				}
				server = "https://" + net.JoinHostPort(site.APIName, strconv.Itoa(profiles.APIPort))
			}
			paths, err := ca.WriteCredentials(out, site.Name, server)
			if err != nil {
				return err
			}
			for _, p := range paths {
				fmt.Fprintln(cmd.OutOrStdout(), p)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&siteDir, "site", "", "site profile directory")
	f.StringVar(&stateDir, "state", "", "the boot server's state directory (default $XDG_STATE_HOME/plinth/SITE-NAME)")
	f.StringVar(&out, "out", "", "directory to write the credentials into (created 0700)")
	f.StringVar(&server, "server", "", "API server URL in the kubeconfig (default https://API_NAME:6443)")
	return cmd
}

// openCA opens the site CA in stateDir (default: the site's state
// directory), which must lie outside the site; create makes it when the
// state has none (plinth ca init, serve --init-ca), else a missing CA is
// an error that says how to make one or where to restore it.
func openCA(site *profiles.Site, siteDir, stateDir string, create bool, log *slog.Logger) (*pki.CA, error) {
	byName := stateDir == ""
	if byName {
		d, err := pki.DefaultStateDir(site.Name)
		if err != nil {
			return nil, err
		}
		stateDir = d
	}
	if err := pki.CheckOutside(stateDir, siteDir); err != nil {
		return nil, fmt.Errorf("--state: %w", err)
	}
	if create {
		if _, err := os.Stat(filepath.Join(stateDir, pki.CertFile)); byName && errors.Is(err, fs.ErrNotExist) {
			// A renamed site must not get a second CA unnoticed.
			other, err := pki.CAOfSiteDirElsewhere(stateDir, siteDir)
			if err != nil {
				return nil, err
			}
			if other != "" {
				return nil, fmt.Errorf("site %s (%s) has no CA in %s, but this site directory was served with the CA in %s: renamed? "+
					"Move that state (mv %s %s) or give --state %s; to start a new CA that no running machine trusts, give --state with an empty directory",
					site.Name, siteDir, stateDir, other, other, stateDir, other)
			}
		}
		ca, created, err := pki.LoadOrCreate(stateDir, site.Name, log)
		if err != nil {
			return nil, err
		}
		if created {
			log.Warn("NEW SITE CA: no machine that trusted another CA trusts this one; back up the state directory (all of it, kept as private as the keys)",
				"site", site.Name, "state", stateDir, "fingerprint", api.CAFingerprint(ca.Cert().Raw))
		}
		if err := pki.RecordSiteDir(stateDir, siteDir); err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
		return ca, nil
	}
	if _, err := os.Stat(filepath.Join(stateDir, pki.CertFile)); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no site CA for site %s in %s: restore your backup of that directory there (or give --state where it is); "+
			"for a new site, create one with `plinth ca init --site %s` (or plinth serve --init-ca)", site.Name, stateDir, siteDir)
	}
	return pki.Load(stateDir)
}

// siteServices gives the boot server its CA and, when DNS is on, a site DNS
// server as its master sink; it returns the DNS server's run function (nil
// when off). dnsFlag is "auto" (on at SERVER-IP:53 when the server's IP is
// known and the site has an api_name or is the DHCP server), "off", or an
// address. Names outside the site are forwarded for clients on dnsClients
// (CIDRs), or by default on this host's own networks.
func siteServices(c *bootserver.Config, stateDir string, initCA bool, dnsFlag string, dnsClients []string, log *slog.Logger) (func(context.Context) error, error) {
	// A site with problems does not keep the server from starting when
	// its state keeps the last good one (bootserver/lastgood.go).
	fallback := stateDir
	if fallback == "" {
		fallback, _ = pki.DefaultStateOfSiteDir(c.SiteDir)
	}
	site, siteErr, err := bootserver.LoadSiteOrLastGood(c.SiteDir, fallback)
	if err != nil {
		return nil, err
	}
	if siteErr != nil {
		stateDir = fallback // the last good site's name may differ from the broken one's
	}
	if c.CA, err = openCA(site, c.SiteDir, stateDir, initCA, log); err != nil {
		return nil, err
	}
	if site.Enrolment != "token" {
		log.Warn("enrolment is none: any host that can reach this server can get any machine's certificates (for keys of its own) and profile; set [site] enrolment = \"token\"", "site", site.Name)
	}
	addr := dnsFlag
	switch dnsFlag {
	case "off", "":
		return nil, nil
	case "auto":
		if !c.ServerIP.IsValid() || (site.APIName == "" && site.DHCP.Mode != "server") {
			log.Info("DNS off: --dns auto needs --server-ip and a site with api_name or [dhcp] mode server; give --dns ADDR to serve it")
			return nil, nil
		}
		addr = net.JoinHostPort(c.ServerIP.String(), "53")
	default:
		if _, _, err := net.SplitHostPort(addr); err != nil {
			addr = net.JoinHostPort(addr, "53")
		}
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--dns %q: %w", dnsFlag, err)
	}
	self, _ := netip.ParseAddr(host)
	ups, err := sitedns.Upstreams("/etc/resolv.conf", self)
	if err != nil {
		return nil, err
	}
	pc, ln, err := sitedns.Listen(addr) // now, so a taken port fails at start
	if err != nil {
		return nil, fmt.Errorf("--dns %s: %w", addr, err)
	}
	clients, err := recursionClients(dnsClients)
	if err != nil {
		return nil, err
	}
	d := sitedns.New(sitedns.Config{Upstreams: ups, Clients: clients, Log: log})
	log.Info("DNS", "listen", addr, "upstreams", fmt.Sprint(ups), "forwards for", fmt.Sprint(clients))
	c.Masters = d
	return func(ctx context.Context) error { return d.Serve(ctx, pc, ln) }, nil
}

// recursionClients parses --dns-clients; none given: this host's networks.
func recursionClients(flag []string) ([]netip.Prefix, error) {
	if len(flag) == 0 {
		return sitedns.LocalNetworks()
	}
	var out []netip.Prefix
	for _, c := range flag {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return nil, fmt.Errorf("--dns-clients %q: want a network such as 10.77.0.0/24: %w", c, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// runAll runs fs until ctx is cancelled or one of them returns; then it
// stops the others and returns the first error.
func runAll(ctx context.Context, fs ...func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(fs))
	n := 0
	for _, f := range fs {
		if f == nil {
			continue
		}
		n++
		go func() { errc <- f(ctx) }()
	}
	var first error
	for i := 0; i < n; i++ {
		err := <-errc
		cancel()
		if first == nil {
			first = err
		}
	}
	return first
}
