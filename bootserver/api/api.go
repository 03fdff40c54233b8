// Package api holds what crosses the wire between a machine and the boot
// server: URL paths, kernel command-line parameter names and event documents.
// Code on the machine imports it, so it uses only the standard library.
package api

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
	"time"
)

// Kernel command-line parameters /init reads.
const (
	ParamServer  = "plinth.server"  // boot server base URL, e.g. http://10.0.2.2:8080
	ParamMachine = "plinth.machine" // machine id the server knows it by (its name)
	ParamRootfs  = "plinth.rootfs"  // sha256:<hex> of rootfs.squashfs
	ParamToken   = "plinth.token"   // enrolment token, when the site enables them
	ParamRescue  = "plinth.rescue"  // "1": a shell on the console if boot fails
	ParamIface   = "plinth.iface"   // boot NIC name or MAC; default: first with link
	// ParamReboot is how long a machine whose boot stopped waits before it
	// reboots (a Go duration or seconds; "off" or 0: it stays halted).
	ParamReboot = "plinth.reboot"
	// ParamTLS is the boot server's HTTPS URL: stage 1 fetches the profile
	// and sends its reports there (artifacts, pinned by digest, stay on
	// ParamServer).
	ParamTLS = "plinth.tls"
	// ParamCA pins the site CA by CAFingerprint: the server's HTTPS
	// certificate must chain to it, and the profile's CA must be it.
	ParamCA = "plinth.ca"
)

// BootServerSAN is the DNS name in the boot server's HTTPS certificate
// that machines check, whatever address they reached the server at (its
// own, a NAT's, QEMU's 10.0.2.2): the site CA gives it to the boot server
// alone (pki refuses it in any other certificate). The .invalid top-level
// domain (RFC 2606) never resolves, so no real host can be meant.
const BootServerSAN = "boot-server.plinth.invalid"

// ParseCmdline splits a kernel command line into parameters, for stage 1
// and the agent alike. Values may be
// double-quoted (the kernel's own rule); a bare word maps to "".
func ParseCmdline(s string) map[string]string {
	out := map[string]string{}
	var key, cur strings.Builder
	inKey, quoted := true, false
	flush := func() {
		// A quoted key may hold blanks; no parameter's name does.
		if k := key.String(); k != "" && !strings.ContainsAny(k, " \t\n") {
			out[k] = cur.String()
		}
		key.Reset()
		cur.Reset()
		inKey = true
	}
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
		case !quoted && (r == ' ' || r == '\t' || r == '\n'):
			flush()
		case inKey && r == '=':
			inKey = false
		case inKey:
			key.WriteRune(r)
		default:
			cur.WriteRune(r)
		}
	}
	flush()
	return out
}

// CAFingerprint is how ParamCA names a CA: "sha256:" and the hex sha256
// of its certificate's DER bytes.
func CAFingerprint(der []byte) string {
	h := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(h[:])
}

// HTTP paths served by the boot server.
const (
	PathBootScript  = "/boot.ipxe"               // ?mac=..&uuid=..&arch=..
	PathArtifacts   = "/artifacts/"              // + "sha256/<hex>"
	PathProfile     = "/v1/machines/{id}/config" // GET: node.Config as JSON, no credentials; POST CertRequests: with them
	PathArtifact    = "/artifacts/sha256/{hex}"  // GET, HEAD: one artifact by digest
	PathEvents      = "/v1/events"               // POST: Event
	PathEventStream = "/v1/events/stream"        // GET: MachineStatus as server-sent events
	PathMachines    = "/v1/machines"             // GET: []MachineStatus
	PathAPIPool     = "/v1/api-pool"             // GET: the API pool's members and their health
	PathMetrics     = "/metrics"                 // GET: Prometheus metrics
	// PathFirmware is iPXE itself (ipxe.efi, undionly.kpxe) over HTTP, for
	// UEFI HTTP boot: the firmware's own HTTP client fetches it.
	PathFirmware = "/ipxe/{file}"
	// PathLogs is one unit's journal on one machine. The agent POSTs it
	// (text, at most MaxLogBytes) when the unit is down or slow, or when an
	// EventReply asks for it; GET returns the last upload, and with
	// ?fresh=SECONDS asks the machine for a new one and waits up to that long.
	PathLogs    = "/v1/machines/{id}/logs/{unit}"
	HeaderToken = "X-Plinth-Token"
)

// ArtifactPath is the URL path of an artifact with digest "sha256:<hex>".
func ArtifactPath(digestHex string) string {
	return strings.Replace(PathArtifact, "{hex}", digestHex, 1)
}

// LogPath is the URL path of a unit's journal on a machine.
func LogPath(machine, unit string) string {
	return strings.NewReplacer("{id}", machine, "{unit}", unit).Replace(PathLogs)
}

// PathEtcdRestore is the snapshot the site's etcd members restore their
// cluster from (node.EtcdRestore.URL): GET, served only while plinth etcd
// restore has requested it, only under its digest, only to an etcd member.
const PathEtcdRestore = "/v1/etcd/restore/{sha256}"

// EtcdRestorePath is the URL path of the restore snapshot whose sha256 is
// sha256Hex.
func EtcdRestorePath(sha256Hex string) string {
	return strings.Replace(PathEtcdRestore, "{sha256}", sha256Hex, 1)
}

// MaxLogBytes caps one journal upload; the agent sends the newest lines.
const MaxLogBytes = 512 << 10

// HeaderLogTime carries, on a journal the server returns, when the
// machine sent it (RFC 3339).
const HeaderLogTime = "X-Plinth-Log-Time"

// EventReply is the server's answer to an event (200; a 204 means an
// empty reply): the units whose journal an operator asked for, which the
// agent then uploads to LogPath.
type EventReply struct {
	Logs []string `json:"logs,omitempty"`
	// API is the site's API name and the addresses it serves now, in a
	// reply to a report proven by the machine's certificate: the agent
	// pins them in /etc/hosts, so the node keeps reaching the API servers
	// while the boot server (the name's only DNS) is down.
	API *APIPool `json:"api,omitempty"`
}

// APIPool is the API name and its addresses (none: the node goes back to
// asking DNS).
type APIPool struct {
	Name  string   `json:"name"`
	Addrs []string `json:"addrs,omitempty"`
}

// CertRequests is what a machine POSTs to its PathProfile for a profile
// with credentials. It makes its private keys itself, in memory, and
// sends only what the boot server needs to certify them: a PKCS#10
// request (PEM) for its own certificate and one for each Kubernetes
// identity a role may carry (node.Identity*; the server uses those the
// machine's role has), and an HPKE public key (SealKEM, base64) the server
// seals the one secret it shares with masters to (node.TLS.SealedServiceAccountKey).
// The server takes only the public key and the proof of its possession
// from each request: names, addresses and usages are its own.
type CertRequests struct {
	Node       string            `json:"node"`
	Identities map[string]string `json:"identities,omitempty"`
	Seal       string            `json:"seal,omitempty"`
}

// The HPKE suite (RFC 9180) secrets are sealed with: hybrid ML-KEM-768 +
// X25519 (a recording of the boot network stays closed to a future
// quantum computer), HKDF-SHA256, AES-256-GCM. SealInfo binds a sealed
// secret to its purpose and machine.
const (
	SealKEM  = 0x647a // MLKEM768-X25519
	SealKDF  = 0x0001 // HKDF-SHA256
	SealAEAD = 0x0002 // AES-256-GCM
)

// SealInfo is the HPKE info string of the service-account key sealed for
// machine.
func SealInfo(machine string) []byte { return []byte("plinth service-account key for " + machine) }

// MaxCertRequests caps a CertRequests body.
const MaxCertRequests = 64 << 10

// ProfilePath is the URL path of a machine's rendered config.
func ProfilePath(machine string) string { return strings.Replace(PathProfile, "{id}", machine, 1) }

// Boot stages, in boot order; every event carries one, and stage 1 and
// the agent post no other (the boot server refuses an unknown stage).
const (
	StageKernel   = "kernel"   // iPXE fetched kernel/initramfs (set by the server)
	StageInit     = "init"     // /init started
	StageModules  = "modules"  // kernel modules loaded
	StageNetwork  = "network"  // boot NIC configured
	StageProfile  = "profile"  // profile fetched
	StageMedium   = "medium"   // boot medium found and mounted (no server: console only)
	StageRootfs   = "rootfs"   // rootfs fetched and verified
	StageMount    = "mount"    // overlay mounted
	StageConfig   = "config"   // first-boot configuration written
	StageSwitch   = "switch"   // switch_root to the image's init
	StageState    = "state"    // agent: state disk checked, formatted or mounted (or refused: Message says why)
	StageEtcd     = "etcd"     // agent: how this etcd member starts (with its data, joined as a learner, founded, restored, waiting)
	StageServices = "services" // agent: waiting for the role's services
	StageReady    = "ready"    // agent: services up
	StageError    = "error"    // something failed; Message says what
	StageRetry    = "retry"    // a fetch failed and is tried again
	StageRescue   = "rescue"   // plinth.rescue=1: a shell on the console
)

// Stages returns every stage an event may carry, in the order of the
// constants above; a new copy each call.
func Stages() []string {
	return []string{
		StageKernel, StageInit, StageModules, StageNetwork, StageProfile,
		StageMedium, StageRootfs, StageMount, StageConfig, StageSwitch,
		StageState, StageEtcd, StageServices, StageReady, StageError, StageRetry, StageRescue,
	}
}

// KnownStage reports whether s is one of Stages.
func KnownStage(s string) bool { return slices.Contains(Stages(), s) }

// Event is posted by /init and the agent to PathEvents.
type Event struct {
	Machine string            `json:"machine"`
	Stage   string            `json:"stage"`
	Message string            `json:"message,omitempty"`
	Time    time.Time         `json:"time"`
	Fields  map[string]string `json:"fields,omitempty"` // e.g. service → state
}

// UnitName returns the systemd unit a name means ("kubelet" is
// "kubelet.service") and whether it is one the boot server takes: letters,
// digits and @._:- only, at most 128 characters, not starting with a dot.
func UnitName(s string) (string, bool) {
	if s == "" || len(s) > 128 || s[0] == '.' {
		return "", false
	}
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '@' || c == '.' || c == '_' || c == ':' || c == '-'
		if !ok {
			return "", false
		}
	}
	for _, suffix := range []string{".service", ".socket", ".mount", ".target", ".timer", ".path", ".scope", ".slice", ".swap", ".device", ".automount"} {
		if len(s) > len(suffix) && strings.HasSuffix(s, suffix) {
			return s, true
		}
	}
	return s + ".service", true
}
