package bootserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/manifest"
	"github.com/plinth-dev/plinth/profiles"
)

const maxEventBody = 64 << 10

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern, route string, h http.HandlerFunc) {
		mux.Handle(pattern, s.instrument(route, h))
	}
	handle("GET "+api.PathBootScript, "boot.ipxe", s.bootScript)
	handle("GET "+api.PathArtifact, "artifact", s.artifact)
	handle("HEAD "+api.PathArtifact, "artifact", s.artifact)
	handle("GET "+api.PathProfile, "config", s.profile)
	handle("POST "+api.PathProfile, "config", s.profile)
	handle("POST "+api.PathEvents, "events", s.event)
	handle("GET "+api.PathMachines, "machines", s.machines)
	handle("GET "+api.PathAPIPool, "api-pool", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.APIPool())
	})
	handle("POST "+api.PathLogs, "logs", s.uploadLog)
	handle("GET "+api.PathLogs, "logs", s.serveLog)
	handle("GET "+api.PathEventStream, "stream", s.stream)
	handle("GET "+api.PathEtcdRestore, "etcd-restore", s.etcdRestore)
	handle("GET "+api.PathFirmware, "ipxe", s.firmware)
	handle("GET /{$}", "status", s.statusPage)
	mux.Handle("GET "+api.PathMetrics, promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}

// statusWriter records the status code and bytes of a response, and
// gives each write its own deadline (limits.go).
type statusWriter struct {
	http.ResponseWriter
	code   int
	bytes  int64
	extend func(http.ResponseWriter)
}

func (w *statusWriter) WriteHeader(c int) { w.code = c; w.ResponseWriter.WriteHeader(c) }
func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	w.extend(w.ResponseWriter)
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}
func (w *statusWriter) Flush() {
	w.extend(w.ResponseWriter)
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// ReadFrom keeps the connection's fast path: http.ServeContent hands an
// artifact's file to the writer's ReadFrom, which net/http turns into
// sendfile. Without it the wrapper hid that, and every byte went through
// a 32 KiB user-space copy. The file goes in readFromChunk pieces, each
// with its own write deadline, like Write.
func (w *statusWriter) ReadFrom(src io.Reader) (int64, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	rf, ok := w.ResponseWriter.(io.ReaderFrom)
	if !ok {
		return io.Copy(writerOnly{w}, src)
	}
	// The kernel path wants the file itself or one LimitedReader around
	// it: unwrap the caller's limit and apply it chunk by chunk.
	inner, remain := src, int64(-1)
	lr, limited := src.(*io.LimitedReader)
	if limited {
		inner, remain = lr.R, lr.N
	}
	var total int64
	for remain != 0 {
		n := int64(readFromChunk)
		if remain > 0 && remain < n {
			n = remain
		}
		w.extend(w.ResponseWriter)
		k, err := rf.ReadFrom(&io.LimitedReader{R: inner, N: n})
		total += k
		w.bytes += k
		if limited {
			remain -= k
			lr.N = remain
		}
		if err != nil || k < n {
			return total, err
		}
	}
	return total, nil
}

// readFromChunk is what one write deadline covers in ReadFrom: a client
// must take 1 MiB per BodyTimeout (30 s: about 35 KB/s) to stay.
const readFromChunk = 1 << 20

// writerOnly hides ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) instrument(route string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, extend: s.extendWrite}
		h(sw, r)
		if sw.code == 0 {
			sw.code = http.StatusOK
		}
		s.metrics.requests.WithLabelValues(route, fmt.Sprint(sw.code)).Inc()
		if route == "artifact" {
			s.metrics.bytes.Add(float64(sw.bytes))
		}
	})
}

// fail answers a client error with a clear message and logs it.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, code int, msg string, attrs ...any) {
	s.log.Warn(msg, append([]any{"remote", r.RemoteAddr, "path", r.URL.Path, "code", code}, attrs...)...)
	http.Error(w, msg, code)
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// BootQuery is what a booting machine tells about itself.
type BootQuery struct {
	MAC, UUID string
	Arch      string
	Labels    map[string]string
}

// ParseBootQuery checks the query of a boot script request. Unknown keys
// other than label.* are rejected, so typos in an iPXE chain are visible.
func ParseBootQuery(raw string) (BootQuery, error) {
	var q BootQuery
	if len(raw) > 2048 {
		return q, errors.New("query too long")
	}
	vals, err := parseQuery(raw)
	if err != nil {
		return q, err
	}
	for k, vs := range vals {
		if len(vs) != 1 {
			return q, fmt.Errorf("%s given %d times", k, len(vs))
		}
		v := vs[0]
		switch {
		case k == "mac":
			hw, err := net.ParseMAC(v)
			if err != nil || len(hw) != 6 {
				return q, fmt.Errorf("mac %q is not a MAC address", v)
			}
			q.MAC = hw.String()
		case k == "uuid":
			// It is echoed into the refusal script: only UUID characters.
			if len(v) > 36 || strings.Trim(strings.ToLower(v), "0123456789abcdef-") != "" {
				return q, fmt.Errorf("uuid %q is not a UUID", v)
			}
			q.UUID = strings.ToLower(v)
		case k == "arch":
			if len(v) > 16 || strings.Trim(v, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
				return q, fmt.Errorf("arch %q is not an iPXE build architecture", v)
			}
			q.Arch = v
		case strings.HasPrefix(k, "label."):
			if q.Labels == nil {
				q.Labels = map[string]string{}
			}
			q.Labels[strings.TrimPrefix(k, "label.")] = v
		default:
			return q, fmt.Errorf("unknown query parameter %q", k)
		}
	}
	return q, nil
}

func parseQuery(raw string) (map[string][]string, error) {
	out := map[string][]string{}
	if raw == "" {
		return out, nil
	}
	for _, kv := range strings.Split(raw, "&") {
		k, v, _ := strings.Cut(kv, "=")
		uk, err1 := url.QueryUnescape(k)
		uv, err2 := url.QueryUnescape(v)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("malformed query: %w", err)
		}
		out[uk] = append(out[uk], uv)
	}
	return out, nil
}

func (s *Server) bootScript(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if r.URL.RawQuery == "" {
		// First request from firmware whose DHCP bootfile cannot carry
		// iPXE variables: chain to ourselves with the machine's identity.
		// A path, not a URL: iPXE resolves it against this script's URL.
		fmt.Fprintf(w, "#!ipxe\nchain %s?mac=${mac:hexhyp}&uuid=${uuid}&arch=${buildarch}\n", api.PathBootScript)
		return
	}
	q, err := ParseBootQuery(r.URL.RawQuery)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, "boot.ipxe: "+err.Error())
		return
	}
	snap := s.snap.Load()
	m, err := snap.site.Match(q.MAC, q.UUID, q.Labels)
	if errors.Is(err, profiles.ErrUnknownMachine) {
		s.refuse(w, r, unknownName(q, remoteIP(r)), q, fmt.Sprintf("machine %s %s is not in site %s: ask the operator to add it", q.MAC, q.UUID, snap.site.Name))
		return
	}
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, "boot.ipxe: "+err.Error())
		return
	}
	im := snap.images[m.Image]
	if im == nil {
		s.fail(w, r, http.StatusNotFound, fmt.Sprintf("boot.ipxe: machine %s: image %q is not built in %s", m.Name, m.Image, s.cfg.ArtifactsDir), "machine", m.Name)
		return
	}
	if err := profiles.CheckImageRole(m.Role, m.Image, im.m.Role); err != nil {
		s.fail(w, r, http.StatusConflict, fmt.Sprintf("boot.ipxe: machine %s: %v", m.Name, err), "machine", m.Name)
		return
	}
	k, i, root, err := im.bootFiles()
	if err != nil {
		s.fail(w, r, http.StatusNotFound, "boot.ipxe: "+err.Error(), "machine", m.Name)
		return
	}
	if !snap.known(m) {
		s.state.update(m.Name, func(st *MachineStatus) { st.MAC, st.Role, st.Image = m.MAC, m.Role, m.Image })
	}
	cmdline := strings.TrimSpace(fmt.Sprintf("%s %s=%s %s=%s %s=%s", im.m.Cmdline,
		api.ParamServer, s.httpBase(r), api.ParamMachine, m.Name, api.ParamRootfs, root))
	if q.MAC != "" && !strings.Contains(" "+im.m.Cmdline, " "+api.ParamIface+"=") {
		// The NIC iPXE booted from (its ${mac}): stage 1 configures that
		// one, not the first with a link, unless the image names one.
		cmdline += " " + api.ParamIface + "=" + q.MAC
	}
	// The boot's token: its reports prove themselves with it until the
	// machine has its certificate; in token enrolment it also opens the
	// profile, once.
	var tok string
	if snap.site.Enrolment == "token" {
		mac, err := s.enrolMAC(m, q.MAC)
		if err != nil {
			s.refuse(w, r, m.Name, q, err.Error())
			return
		}
		how, ok := s.verifyAddress(m, mac, remoteIP(r))
		if !ok {
			s.refuse(w, r, m.Name, q, fmt.Sprintf("machine %s must boot from its own address (static, leased by this server, or seen on the boot network with MAC %s)", m.Name, q.MAC))
			return
		}
		if err := s.firstMACs.keep(m, mac); err != nil {
			s.fail(w, r, http.StatusInternalServerError, "boot.ipxe: "+err.Error(), "machine", m.Name)
			return
		}
		if tok, err = s.tokens.mint(m.Name, remoteIP(r)); err != nil {
			s.fail(w, r, http.StatusInternalServerError, "boot.ipxe: "+err.Error(), "machine", m.Name)
			return
		}
		s.log.Info("enrolment token minted", "machine", m.Name, "remote", r.RemoteAddr, "verified_by", how)
	} else if tok, err = newToken(); err != nil {
		s.fail(w, r, http.StatusInternalServerError, "boot.ipxe: "+err.Error(), "machine", m.Name)
		return
	}
	if err := s.reports.set(m.Name, tok); err != nil {
		s.fail(w, r, http.StatusInternalServerError, "boot.ipxe: "+err.Error(), "machine", m.Name)
		return
	}
	cmdline += " " + api.ParamToken + "=" + tok
	if s.tlsConf != nil {
		// Stage 1 fetches the profile and reports over HTTPS, trusting
		// the site CA by this fingerprint.
		cmdline += fmt.Sprintf(" %s=%s %s=%s", api.ParamTLS, s.tlsBase(r), api.ParamCA, api.CAFingerprint(s.cfg.CA.Cert().Raw))
	}
	// Paths: iPXE resolves them against this script's URL.
	url := func(d string) string { return api.ArtifactPath(strings.TrimPrefix(d, "sha256:")) }
	fmt.Fprintf(w, "#!ipxe\necho plinth: %s is %s, image %s\nkernel %s initrd=initramfs %s\ninitrd --name initramfs %s\nboot\n",
		m.Name, orDash(m.Role), m.Image, url(k), cmdline, url(i))
	s.state.update(m.Name, func(st *MachineStatus) {
		st.State, st.LastEvent, st.IP, st.Rootfs = api.StageKernel, "boot script served", remoteIP(r), root
		touch(st)
	})
	s.log.Info("boot script", "machine", m.Name, "mac", q.MAC, "image", m.Image, "digest", root)
}

// refuse answers a machine that may not boot with a script that says why
// on its console and asks again later, and lists it for the operator.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, name string, q BootQuery, why string) {
	s.state.update(name, func(st *MachineStatus) {
		if st.Known {
			// Anyone can claim a known machine's MAC: note the attempt
			// without letting it rewrite what the machine itself reported.
			st.LastEvent = "refused a boot script to " + remoteIP(r) + ": " + why
			return
		}
		st.MAC, st.State, st.LastEvent, st.IP = q.MAC, stateUnknown, "refused: "+why, remoteIP(r)
		touch(st)
	})
	s.metrics.refused.Inc()
	s.log.Warn("boot refused", "machine", name, "mac", q.MAC, "uuid", q.UUID, "remote", r.RemoteAddr, "reason", why)
	fmt.Fprintf(w, "#!ipxe\necho plinth: %s\nsleep %d\nchain %s?mac=${mac:hexhyp}&uuid=${uuid}&arch=${buildarch}\n",
		why, int(refuseRetry.Seconds()), api.PathBootScript)
}

// unknownName is how the status page lists a machine the site refused.
func unknownName(q BootQuery, ip string) string {
	switch {
	case q.MAC != "":
		return "unknown-" + strings.ReplaceAll(q.MAC, ":", "")
	case q.UUID != "":
		return "unknown-" + q.UUID
	}
	return "unknown-" + ip
}

// refuseRetry is how long a refused machine waits before asking again:
// long enough not to flood the log, short enough for an operator adding
// the machine to see it boot.
const refuseRetry = 60 * time.Second

func (snap *snapshot) known(m *profiles.Machine) bool { return snap.site.Machine(m.Name) != nil }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func touch(st *MachineStatus) {
	now := time.Now().UTC()
	if st.FirstSeen.IsZero() {
		st.FirstSeen = now
	}
	st.LastSeen = now
}

func (s *Server) artifact(w http.ResponseWriter, r *http.Request) {
	hexd := r.PathValue("hex")
	if _, err := manifest.ParseDigest("sha256:" + hexd); err != nil {
		s.fail(w, r, http.StatusBadRequest, "artifact: "+err.Error())
		return
	}
	a, ok := s.snap.Load().artifacts[hexd]
	if !ok {
		s.fail(w, r, http.StatusNotFound, "artifact: no artifact sha256:"+hexd, "digest", hexd)
		return
	}
	f, err := os.Open(a.path)
	if err != nil {
		s.fail(w, r, http.StatusNotFound, "artifact: sha256:"+hexd+" is gone from disk", "digest", hexd)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() != a.size {
		s.fail(w, r, http.StatusConflict, "artifact: sha256:"+hexd+" changed on disk; rebuild in progress?", "digest", hexd)
		return
	}
	w.Header().Set("ETag", `"sha256:`+hexd+`"`)
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, f)
}

// profile answers a machine's profile request: a GET gets the profile
// without credentials (what the machine's first-boot steps re-read), a
// POST of api.CertRequests gets it with certificates for the keys the
// machine made (stage 1).
func (s *Server) profile(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var keys *api.CertRequests
	if r.Method == http.MethodPost {
		body, err := s.readBody(w, r, api.MaxCertRequests)
		if err != nil {
			s.failBody(w, r, "config", api.MaxCertRequests, err)
			return
		}
		keys = &api.CertRequests{}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(keys); err != nil {
			s.fail(w, r, http.StatusBadRequest, "config: certificate requests: "+err.Error(), "machine", id)
			return
		}
	}
	snap := s.snap.Load()
	m := snap.site.Machine(id)
	if m == nil {
		if st, ok := s.state.get(id); ok && st.MAC != "" && st.State != "unknown" {
			m, _ = snap.site.Match(st.MAC, "", nil) // a machine booted by the site's default
		}
	}
	if m == nil || m.Name != id {
		s.fail(w, r, http.StatusNotFound, "config: no machine "+id, "machine", id)
		return
	}
	enrolled := snap.site.Enrolment == "token"
	// A machine's own certificate opens its profile without credentials
	// (what its first-boot steps re-read) in place of the token, used once
	// at boot.
	certified := false
	if r.Method == http.MethodGet {
		how, err := s.authenticate(r, id)
		certified = err == nil && how == authCert
	}
	if enrolled && !certified && !s.tokens.use(r.Header.Get(api.HeaderToken), id, remoteIP(r)) {
		s.fail(w, r, http.StatusForbidden, "config: enrolment token missing, used, expired or from another address", "machine", id)
		return
	}
	c, err := snap.site.Render(m, s.httpBase(r))
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, "config: "+err.Error(), "machine", id)
		return
	}
	if im := snap.images[m.Image]; im != nil {
		if _, _, root, err := im.bootFiles(); err == nil {
			c.Rootfs = root
		}
	}
	s.etcdProfile(c, s.httpBase(r))
	if c.Cluster != nil {
		c.Cluster.ReportURL = s.tlsBase(r)
	}
	// A machine the site's [default] booted is not the operator's yet:
	// anyone can plug one in. It gets no certificate (no way into etcd
	// or the cluster) until the operator approves it by adding it to the
	// site as a [[machine]]; it gets them at its next boot.
	approved := snap.site.Machine(id) != nil
	if approved && keys != nil {
		if err := s.issueTLS(c, remoteIP(r), keys); err != nil {
			s.fail(w, r, http.StatusBadRequest, "config: "+err.Error(), "machine", id)
			return
		}
	} else if !approved {
		s.log.Warn("profile without credentials: booted by the site's [default], not approved; add it to the site as a [[machine]] and reboot it", "machine", id, "mac", m.MAC)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(c)
	s.state.update(id, func(st *MachineStatus) {
		st.IP = remoteIP(r)
		if enrolled { // the token was minted for this address, checked
			st.Addr = st.IP
		}
		if !approved {
			st.LastEvent = "awaiting approval: profile sent without credentials; add MAC " + m.MAC + " to the site as a [[machine]], then reboot it"
		}
		touch(st)
	})
	s.notifyMasters() // a machine on DHCP may have a new address
}

// DecodeEvent reads one event document strictly.
func DecodeEvent(r io.Reader) (api.Event, error) {
	var e api.Event
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return e, fmt.Errorf("event: %w", err)
	}
	if dec.More() {
		return e, errors.New("event: more than one document")
	}
	if !api.KnownStage(e.Stage) {
		return e, fmt.Errorf("event: unknown stage %q", e.Stage)
	}
	if e.Machine == "" || len(e.Machine) > 63 {
		return e, errors.New("event: machine missing or too long")
	}
	if len(e.Message) > 4096 || len(e.Fields) > 64 {
		return e, errors.New("event: message or fields too large")
	}
	return e, nil
}

func (s *Server) event(w http.ResponseWriter, r *http.Request) {
	body, err := s.readBody(w, r, maxEventBody)
	if err != nil {
		s.failBody(w, r, "event", maxEventBody, err)
		return
	}
	e, err := DecodeEvent(bytes.NewReader(body))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if st, ok := s.state.get(e.Machine); !ok || st.State == stateUnknown {
		s.fail(w, r, http.StatusNotFound, "event: no machine "+e.Machine, "machine", e.Machine)
		return
	}
	how, err := s.authenticate(r, e.Machine)
	if err != nil {
		s.refuseReport(w, r, e.Machine, err)
		return
	}
	s.metrics.events.WithLabelValues(e.Stage).Inc()
	// The address may name the machine in DNS when the proof ties it to
	// the machine: its certificate, or a token minted only after the
	// address was checked (enrolment token). In enrolment none anyone may
	// get a boot token by asking for the machine's boot script.
	proven := how == authCert || (how == authToken && s.snap.Load().site.Enrolment == "token")
	s.state.update(e.Machine, func(st *MachineStatus) {
		st.State, st.LastEvent, st.IP = e.Stage, e.Message, remoteIP(r)
		if proven {
			st.Addr = st.IP
		}
		st.Events++
		if len(e.Fields) > 0 {
			st.Fields = e.Fields
		}
		touch(st)
	})
	s.log.Info("event", "machine", e.Machine, "stage", e.Stage, "message", e.Message, "proof", how.String())
	if s.canChangePool(how) {
		s.poolReport(e.Machine, e.Stage, remoteIP(r))
	}
	s.notifyMasters()
	s.replyToEvent(w, e.Machine, how)
}

// refuseReport answers a report that does not prove its sender: 403, and
// nothing of the machine's state, the pool or DNS changes.
func (s *Server) refuseReport(w http.ResponseWriter, r *http.Request, machine string, err error) {
	s.metrics.refusedReports.Inc()
	s.fail(w, r, http.StatusForbidden, err.Error(), "machine", machine)
}

func (s *Server) machines(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s.state.list())
}

// stream sends every machine now, then each change, as Server-Sent Events.
func (s *Server) stream(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	if n := s.streams.Add(1); n > maxStreams {
		s.streams.Add(-1)
		w.Header().Set("Retry-After", "30")
		s.fail(w, r, http.StatusServiceUnavailable, fmt.Sprintf("stream: %d event streams open already; the status page polls instead", maxStreams))
		return
	}
	defer s.streams.Add(-1)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	c, cancel := s.state.subscribe()
	defer cancel()
	send := func(st MachineStatus) bool {
		b, _ := json.Marshal(st)
		if _, err := fmt.Fprintf(w, "event: machine\ndata: %s\n\n", b); err != nil {
			return false
		}
		fl.Flush()
		return true
	}
	for _, st := range s.state.list() {
		if !send(st) {
			return
		}
	}
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case st := <-c:
			if !send(st) {
				return
			}
		case <-keep.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
		}
	}
}
