// Package api holds what crosses the wire between a machine and the boot
// server: URL paths, kernel command-line parameter names and event documents.
// Code on the machine imports it, so it uses only the standard library.
package api

import "time"

// Kernel command-line parameters /init reads.
const (
	ParamServer  = "plinth.server"  // boot server base URL, e.g. http://10.0.2.2:8080
	ParamMachine = "plinth.machine" // machine id the server knows it by (its name)
	ParamRootfs  = "plinth.rootfs"  // sha256:<hex> of rootfs.squashfs
	ParamToken   = "plinth.token"   // enrolment token, when the site enables them
	ParamRescue  = "plinth.rescue"  // "1": a shell on the console if boot fails
	ParamIface   = "plinth.iface"   // boot NIC name or MAC; default: first with link
)

// HTTP paths served by the boot server.
const (
	PathBootScript = "/boot.ipxe"               // ?mac=..&uuid=..&arch=..
	PathArtifacts  = "/artifacts/"              // + "sha256/<hex>"
	PathProfile    = "/v1/machines/{id}/config" // GET: node.Config as JSON
	PathEvents     = "/v1/events"               // POST: Event
	PathMachines   = "/v1/machines"             // GET: []MachineStatus
	HeaderToken    = "X-Plinth-Token"
)

// ArtifactPath is the URL path of an artifact with digest "sha256:<hex>".
func ArtifactPath(digestHex string) string { return PathArtifacts + "sha256/" + digestHex }

// ProfilePath is the URL path of a machine's rendered config.
func ProfilePath(machine string) string { return "/v1/machines/" + machine + "/config" }

// Boot stages, in order; events carry one.
const (
	StageKernel   = "kernel"   // iPXE fetched kernel/initramfs
	StageInit     = "init"     // /init started
	StageNetwork  = "network"  // boot NIC configured
	StageProfile  = "profile"  // profile fetched
	StageRootfs   = "rootfs"   // rootfs fetched and verified
	StageMount    = "mount"    // overlay mounted
	StageConfig   = "config"   // first-boot configuration written
	StageSwitch   = "switch"   // switch_root to the image's init
	StageServices = "services" // agent: waiting for the role's services
	StageReady    = "ready"    // agent: services up
	StageError    = "error"    // something failed; Message says what
)

// Event is posted by /init and the agent to PathEvents.
type Event struct {
	Machine string            `json:"machine"`
	Stage   string            `json:"stage"`
	Message string            `json:"message,omitempty"`
	Time    time.Time         `json:"time"`
	Fields  map[string]string `json:"fields,omitempty"` // e.g. service → state
}
