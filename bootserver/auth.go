package bootserver

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/bootserver/pki"
)

// Reports (events, readiness, heartbeats, journals) prove who sends them:
//   - with the machine's own certificate, over the HTTPS listener: the
//     certificate's MachineURI must name the machine the report is about;
//   - before the machine has its certificate (stage 1), with the report
//     token of its boot: minted with each boot script, carried on the
//     kernel command line, sent as api.HeaderToken.
//
// Anything else is refused and changes nothing. Only a certificate may
// change the API pool (when the server has a CA to check one against).

// authLevel is how a report proved its sender.
type authLevel int

const (
	authNone authLevel = iota
	authToken
	authCert
)

func (a authLevel) String() string {
	switch a {
	case authToken:
		return "boot token"
	case authCert:
		return "certificate"
	}
	return "none"
}

// errReportRefused is wrapped by every refusal of authenticate.
var errReportRefused = errors.New("report refused")

// authenticate says how r proves it comes from machine.
func (s *Server) authenticate(r *http.Request, machine string) (authLevel, error) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		cert := r.TLS.VerifiedChains[0][0]
		name, ok := pki.MachineOf(cert)
		if !ok {
			return authNone, fmt.Errorf("%w: the client certificate (%s) names no machine", errReportRefused, cert.Subject.CommonName)
		}
		if name != machine {
			return authNone, fmt.Errorf("%w: a report about %s signed by the certificate of %s", errReportRefused, machine, name)
		}
		return authCert, nil
	}
	if tok := r.Header.Get(api.HeaderToken); tok != "" {
		if s.reports.ok(machine, tok) {
			return authToken, nil
		}
		return authNone, fmt.Errorf("%w: the boot token is not %s's current one", errReportRefused, machine)
	}
	return authNone, fmt.Errorf("%w: neither %s's certificate (over HTTPS) nor its boot token", errReportRefused, machine)
}

// canChangePool says whether a report so proven may change the API pool:
// only a certificate, unless the server has no CA (then no machine has
// one, and the boot token is the best proof there is).
func (s *Server) canChangePool(a authLevel) bool {
	return a == authCert || (a == authToken && s.cfg.CA == nil)
}

// ReportKeysFile keeps, in the state directory, a hash of each machine's
// current report token, so reports still prove themselves after a restart.
const ReportKeysFile = "report-keys.json"

// reportKeys hold the sha256 of each machine's current report token.
type reportKeys struct {
	mu   sync.Mutex
	path string
	log  *slog.Logger
	m    map[string]string
}

func loadReportKeys(path string, log *slog.Logger) *reportKeys {
	k := &reportKeys{path: path, log: log, m: map[string]string{}}
	if err := readState(path, &k.m); err != nil {
		log.Error("report tokens: not read; machines booted before this start report again with their certificate or at their next boot", "file", path, "err", err)
		k.m = map[string]string{}
	}
	return k
}

func hashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

// set makes tok machine's report token, replacing its last boot's.
func (k *reportKeys) set(machine, tok string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.m[machine] = hashToken(tok)
	if err := writeState(k.path, k.m, 0o600); err != nil {
		return fmt.Errorf("report token of %s: %w", machine, err)
	}
	return nil
}

func (k *reportKeys) ok(machine, tok string) bool {
	k.mu.Lock()
	want, ok := k.m[machine]
	k.mu.Unlock()
	got := hashToken(tok)
	return ok && subtle.ConstantTimeCompare([]byte(want), []byte(got)) == 1
}

// serverTLS is the HTTPS listener's configuration: a certificate from the
// site CA for the addresses machines reach the server at, and client
// certificates asked for, checked against the site CA when given (stage 1
// has none yet and proves itself with its boot token).
func serverTLS(ca *pki.CA, publicURL string, serverIP netip.Addr, listen string) (*tls.Config, error) {
	names := []string{"localhost"}
	ips := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	if serverIP.IsValid() {
		ips = append(ips, serverIP)
	}
	for _, raw := range []string{publicURL, "//" + listen} {
		u, err := url.Parse(raw)
		if err != nil || u.Hostname() == "" {
			continue
		}
		if a, err := netip.ParseAddr(u.Hostname()); err == nil {
			if !a.IsUnspecified() {
				ips = append(ips, a)
			}
		} else {
			names = append(names, u.Hostname())
		}
	}
	kp, err := ca.BootServer(names, ips)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair([]byte(kp.Cert), []byte(kp.Key))
	if err != nil {
		return nil, fmt.Errorf("boot server certificate: %w", err)
	}
	// The CA goes in the chain too: stage 1 knows it only by its
	// fingerprint (api.ParamCA) and finds it there.
	cert.Certificate = append(cert.Certificate, ca.Cert().Raw)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert())
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool,
		RootCAs:      pool, // for the health checks of the API servers
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// tlsURL is the HTTPS URL machines report to: the public URL's host on
// the HTTPS listener's port.
func tlsURL(publicURL, tlsListen string) (string, error) {
	u, err := url.Parse(publicURL)
	if err != nil {
		return "", fmt.Errorf("public URL %q: %w", publicURL, err)
	}
	_, port, err := net.SplitHostPort(tlsListen)
	if err != nil {
		return "", fmt.Errorf("TLS listen address %q: %w", tlsListen, err)
	}
	return "https://" + net.JoinHostPort(u.Hostname(), port), nil
}
