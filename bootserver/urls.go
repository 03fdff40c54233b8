package bootserver

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
)

// How a machine is told where this server is. Boot scripts name the chain,
// kernel and initramfs by absolute paths, which iPXE resolves against the
// script's own URL: whatever address the machine reached the server at
// (its own, a NAT's, QEMU's 10.0.2.2) keeps working. Where a whole URL is
// needed (the kernel command line's plinth.server and plinth.tls, the
// profile's boot server and report URL), it is the host the machine's
// request named, on the port of the listener the URL is for. The public
// URL is used where no request is at hand (DHCP's boot file name) or the
// request named no host.

// httpBase is the HTTP base URL as the machine that sent r reached this
// server.
func (s *Server) httpBase(r *http.Request) string {
	pub, err := url.Parse(s.cfg.PublicURL)
	if r.Host == "" || err != nil {
		return s.cfg.PublicURL
	}
	if r.TLS == nil {
		return pub.Scheme + "://" + r.Host
	}
	// Came in on the HTTPS listener: the same host, the public port.
	return pub.Scheme + "://" + withPort(r.Host, pub.Port())
}

// tlsBase is the HTTPS base URL as the machine that sent r reached this
// server; "" without an HTTPS listener.
func (s *Server) tlsBase(r *http.Request) string {
	if s.tlsURL == "" || r.Host == "" {
		return s.tlsURL
	}
	if r.TLS != nil {
		return "https://" + r.Host
	}
	u, err := url.Parse(s.tlsURL)
	if err != nil {
		return s.tlsURL
	}
	return "https://" + withPort(r.Host, u.Port())
}

// withPort is hostport's host with port ("" keeps the scheme's default).
func withPort(hostport, port string) string {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if port == "" {
		if a, err := netip.ParseAddr(host); err == nil && a.Is6() {
			return "[" + host + "]"
		}
		return host
	}
	return net.JoinHostPort(host, port)
}

// CheckPublicURL refuses a public URL machines could not reach this server
// at: another port than the listener's, or an address the listener does
// not listen on (a loopback listener and a non-loopback address; a
// listener on one address and another one; a listener on every address
// and one this host does not have). Names are not resolved: a name is
// taken as given. local lists this host's addresses.
func CheckPublicURL(public, listen string, local []netip.Addr) error {
	u, err := url.Parse(public)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return fmt.Errorf("public URL %q: want http://HOST[:PORT]", public)
	}
	lhost, lport, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", listen, err)
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	if port != lport {
		return fmt.Errorf("public URL %s: port %s, but the server listens on %s (port %s)", public, port, listen, lport)
	}
	a, err := netip.ParseAddr(u.Hostname())
	if err != nil {
		return nil // a name: taken as given
	}
	a = a.Unmap()
	if lhost != "" {
		l, err := netip.ParseAddr(lhost)
		if err != nil {
			return nil // a listener on a name
		}
		if !l.IsUnspecified() {
			if l.Unmap() != a {
				return fmt.Errorf("public URL %s: the server listens on %s only", public, listen)
			}
			return nil
		}
	}
	for _, x := range local {
		if x.Unmap() == a {
			return nil
		}
	}
	return errors.New("public URL " + public + ": " + a.String() + " is not an address of this host (it listens on " + listen + ")")
}
