package bootserver

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The API pool: the API servers behind the site's API name.
//
// A master enters it only by an authenticated report (its own client
// certificate) that says it is ready, at its static address or the address
// that report came from. It stays a member until the site no longer lists
// it as an API server (a certified ready from a new address moves it).
// A member is served in the name while the server's health checks of its
// /readyz pass; poolFailAfter failures in a row take it out, one success
// brings it back. Members are kept in the state directory, so a restarted
// server answers the name at once with the pool it had (each member
// counted healthy until a check says otherwise).

// poolFailAfter is how many failed health checks in a row take a member
// out of the name: one lost probe is not a dead server.
const poolFailAfter = 2

// PoolFile is the file in the state directory that keeps the pool.
const PoolFile = "api-pool.json"

type poolMember struct {
	Machine string     `json:"machine"`
	Addr    netip.Addr `json:"addr"`
	Since   time.Time  `json:"since"`
	// Health, not kept: a member loaded from disk starts healthy.
	healthy bool
	fails   int
	lastErr string
}

type apiPool struct {
	mu   sync.Mutex
	path string // "" keeps the pool in memory only
	log  *slog.Logger
	m    map[string]*poolMember
}

// loadPool reads the pool kept at path, if any; a damaged file is named
// in the log and the pool starts empty (the masters' next reports fill it).
func loadPool(path string, log *slog.Logger) *apiPool {
	p := &apiPool{path: path, log: log, m: map[string]*poolMember{}}
	var list []poolMember
	if err := readState(path, &list); err != nil {
		log.Error("API pool: not read, starting empty until the masters report", "file", path, "err", err)
		return p
	}
	for _, m := range list {
		if m.Machine == "" || !m.Addr.IsValid() {
			continue
		}
		m.healthy = true
		p.m[m.Machine] = &m
	}
	log.Info("API pool: loaded", "file", path, "members", len(p.m))
	return p
}

// save writes the members atomically; the caller holds mu.
func (p *apiPool) save() {
	if p.path == "" {
		return
	}
	list := make([]poolMember, 0, len(p.m))
	for _, m := range p.m {
		list = append(list, *m)
	}
	slices.SortFunc(list, func(a, b poolMember) int { return strings.Compare(a.Machine, b.Machine) })
	if err := writeState(p.path, list, 0o644); err != nil {
		p.log.Error("API pool: not saved", "file", p.path, "err", err)
	}
}

// admit makes machine a member at addr, healthy if it is new there (its
// own /readyz just passed on the machine); a member's health is the
// checks' to change, not its heartbeats'. It says whether what the name
// serves changed.
func (p *apiPool) admit(machine string, addr netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m, ok := p.m[machine]; ok && m.Addr == addr {
		return false
	}
	p.m[machine] = &poolMember{Machine: machine, Addr: addr, Since: time.Now().UTC(), healthy: true}
	p.save()
	p.log.Info("API pool: joined", "machine", machine, "addr", addr)
	return true
}

// keep drops the members keep says no to (no longer API servers of the site).
func (p *apiPool) keep(keep func(machine string) bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	changed := false
	for name := range p.m {
		if !keep(name) {
			delete(p.m, name)
			changed = true
			p.log.Info("API pool: left", "machine", name, "reason", "no longer an API server of the site")
		}
	}
	if changed {
		p.save()
	}
	return changed
}

// addrs are the addresses the name serves: healthy members, sorted; when
// no member is healthy, every member (fail open: a name without an answer
// fails every client for certain, while the checks may be what is wrong —
// seen under TCG, where both masters were slower than the timeout at once).
func (p *apiPool) addrs() []netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out, all []netip.Addr
	for _, m := range p.m {
		all = append(all, m.Addr)
		if m.healthy {
			out = append(out, m.Addr)
		}
	}
	if len(out) == 0 {
		out = all
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// PoolMember is one member of the API pool as GET /v1/api-pool lists it.
type PoolMember struct {
	Machine string     `json:"machine"`
	Addr    netip.Addr `json:"addr"`
	Since   time.Time  `json:"since"`
	Healthy bool       `json:"healthy"`
	Fails   int        `json:"failed_checks,omitempty"`
	LastErr string     `json:"last_error,omitempty"`
}

func (p *apiPool) list() []PoolMember {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]PoolMember, 0, len(p.m))
	for _, m := range p.m {
		out = append(out, PoolMember{m.Machine, m.Addr, m.Since, m.healthy, m.fails, m.lastErr})
	}
	slices.SortFunc(out, func(a, b PoolMember) int { return strings.Compare(a.Machine, b.Machine) })
	return out
}

// check probes every member at once and records the results; it says
// whether what the name serves changed.
func (p *apiPool) check(ctx context.Context, probe func(context.Context, netip.Addr) error) bool {
	p.mu.Lock()
	type target struct {
		machine string
		addr    netip.Addr
	}
	var ts []target
	for _, m := range p.m {
		ts = append(ts, target{m.Machine, m.Addr})
	}
	p.mu.Unlock()
	errs := make([]error, len(ts))
	var wg sync.WaitGroup
	for i, t := range ts {
		wg.Go(func() { errs[i] = probe(ctx, t.addr) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return false // shutting down: a cancelled probe says nothing of the member
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	changed := false
	for i, t := range ts {
		m, ok := p.m[t.machine]
		if !ok || m.Addr != t.addr {
			continue // left or moved while we probed
		}
		if errs[i] == nil {
			if !m.healthy {
				p.log.Info("API pool: healthy again, back in the name", "machine", m.Machine, "addr", m.Addr)
				changed = true
			}
			m.healthy, m.fails, m.lastErr = true, 0, ""
			continue
		}
		m.fails++
		m.lastErr = errs[i].Error()
		if m.healthy && m.fails >= poolFailAfter {
			m.healthy = false
			changed = true
			p.log.Warn("API pool: health check failed, out of the name until it passes", "machine", m.Machine, "addr", m.Addr, "failures", m.fails, "err", m.lastErr)
		}
	}
	if changed && len(p.m) > 0 && !slices.ContainsFunc(slices.Collect(maps.Values(p.m)), func(m *poolMember) bool { return m.healthy }) {
		p.log.Warn("API pool: no member passes its checks; the name serves them all until one does", "members", len(p.m))
	}
	return changed
}

// readyzProbe checks an API server's /readyz over TLS, verifying its
// certificate against the site CA for the address it is probed at, and
// presenting the boot server's certificate (any authenticated client may
// read /readyz in Kubernetes' default RBAC). Connections are kept between
// probes: a TLS handshake every 2 s is work a loaded master does not need
// (under TCG it pushed /readyz past the timeout); a probe that times out
// drops its connection, so the next one dials afresh.
func readyzProbe(tlsConf *tls.Config, port int, timeout time.Duration) func(context.Context, netip.Addr) error {
	tr := &http.Transport{
		TLSClientConfig:     tlsConf,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     time.Minute,
		TLSHandshakeTimeout: timeout,
		DialContext:         (&net.Dialer{Timeout: timeout}).DialContext,
	}
	client := &http.Client{Transport: tr, Timeout: timeout}
	return func(ctx context.Context, addr netip.Addr) error {
		url := "https://" + net.JoinHostPort(addr.String(), strconv.Itoa(port)) + "/readyz"
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s: %s", resp.Status, truncate(string(b), 200))
		}
		return nil
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
