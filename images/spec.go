// Package images defines the image spec: the TOML file that names a node
// type's kernel, the ordered OCI layers of its root filesystem, the role its
// first boot configures and the outputs wanted. Decoding is strict: every
// problem of a file is reported at once as file:line:col: field: message.
package images

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/plinth-dev/plinth/internal/tomlx"
)

// Spec is one image spec.
type Spec struct {
	Name        string  `toml:"name,required"`
	Description string  `toml:"description"`
	Kernel      *Kernel `toml:"kernel"`
	Layers      []Layer `toml:"layer,required"`
	Role        *Role   `toml:"role"`
	Output      Output  `toml:"output"`
	Stage1      Stage1  `toml:"stage1"`

	File   string `toml:"-"` // path of the spec file
	Dir    string `toml:"-"` // its directory: relative paths start here
	SHA256 string `toml:"-"` // "sha256:<hex>" of the file's bytes
}

// Kernel names the kernel and the modules stage 1 loads.
type Kernel struct {
	Source string `toml:"source,required"`
	// Modules are loaded by stage 1 on every machine, after what stage 1
	// needs for itself (loop, squashfs, overlay: the builder adds those).
	Modules []string `toml:"modules"`
	// Drivers are carried by stage 1 and loaded only on a machine with a
	// device they drive (a /sys modalias matching one of theirs). Absent:
	// CommonDrivers. The entry CommonSet stands for that set, so a spec
	// adds to it with drivers = ["@common", "sfc"]; drivers = [] carries
	// none.
	Drivers []string `toml:"drivers"`
	Cmdline string   `toml:"cmdline"`
	Src     Source   `toml:"-"`
}

// CommonSet is the drivers entry that stands for CommonDrivers.
const CommonSet = "@common"

// CommonDrivers are the NIC and storage drivers of common servers and
// virtual machines: Intel, Mellanox, Broadcom and Realtek NICs, virtio and
// VMware's, SATA, NVMe, SAS RAID and HBAs, and the SCSI disk and CD-ROM
// drivers their disks need. A kernel that lacks one is fine (the build
// says which); one named outside the set must exist.
var CommonDrivers = []string{
	"e1000", "e1000e", "igb", "igc", "ixgbe", "i40e", "ice",
	"mlx4_core", "mlx4_en", "mlx5_core",
	"bnxt_en", "tg3", "bnx2x",
	"r8169", "8139cp", "8139too",
	"virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "vmxnet3",
	"ahci", "ata_piix", "nvme", "megaraid_sas", "mpt3sas",
	"sd_mod", "sr_mod",
}

// Layer is one entry of the root filesystem's stack, bottom first.
type Layer struct {
	Source string `toml:"source,required"`
	Src    Source `toml:"-"`
}

// Stage1 are settings baked into the initramfs, for machines that boot it
// without a boot server's command line (ISO, USB, a fixed PXE menu).
type Stage1 struct {
	// Params are default kernel parameters (e.g. plinth.server=URL,
	// plinth.rescue=1); the real command line wins.
	Params string `toml:"params"`
	// CA is a PEM file (relative to the spec) of the authority that signed an
	// https boot server's certificate.
	CA string `toml:"ca"`
	// Firmware is a source (dir: or oci:, like a layer) whose lib/firmware
	// holds firmware files the drivers ask for, searched before the kernel
	// source's own lib/firmware: how a site adds what Debian keeps in
	// non-free-firmware (rtl_nic, tigon, bnx2x, ice's DDP package).
	Firmware    string `toml:"firmware"`
	FirmwareSrc Source `toml:"-"`
}

// Role is what first boot configures: a role of package roles, whose
// descriptor says what it runs.
type Role struct {
	Name string `toml:"name,required"`
	// Services is no longer set in a spec (the role's descriptor lists
	// them); it is decoded only to say so.
	Services []string `toml:"services"`
}

// Output selects the artifacts to write.
type Output struct {
	Formats     []string `toml:"formats"`     // netboot | embedded | iso | raw; none: rootfs only
	Compression string   `toml:"compression"` // zstd | gzip, of the initramfs
	// Site and Machine choose the profile built into embedded, iso and raw
	// outputs (a site directory relative to the spec, a machine name there).
	Site    string `toml:"site"`
	Machine string `toml:"machine"`
}

// Formats are the output formats.
var Formats = []string{"netboot", "embedded", "iso", "raw"}

var (
	nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	// Upper case is allowed: Debian ships xt_CHECKSUM, xt_TEE, BusLogic.
	moduleRE = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)
	// systemd's unit name alphabet; '\\' is its escape (mnt-a\\x2db.mount).
	serviceRE = regexp.MustCompile(`^[a-zA-Z0-9@._:\\-]+$`)
)

// Load reads and checks the spec at path.
func Load(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("image spec: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes and checks a spec; file names it in messages and anchors
// relative paths. The error, if any, is a *tomlx.Report holding every problem
// of the file.
func Parse(file string, data []byte) (*Spec, error) {
	s, r := parse(file, data)
	if err := r.Err(); err != nil {
		return nil, err
	}
	return s, nil
}

// parse decodes, defaults and checks a spec, returning the report so that
// ValidateFile can add to it with positions.
func parse(file string, data []byte) (*Spec, *tomlx.Report) {
	var s Spec
	r := tomlx.Decode(file, data, &s)
	if r.Syntax() {
		return nil, r
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		abs = file
	}
	s.File, s.Dir = file, filepath.Dir(abs)
	sum := sha256.Sum256(data)
	s.SHA256 = "sha256:" + hex.EncodeToString(sum[:])
	s.applyDefaults()
	s.check(r)
	return &s, r
}

// applyDefaults fills what a spec may leave out. It is the one place defaults
// live. A spec with a kernel boots over the network unless it says otherwise;
// one without a kernel and without formats is a rootfs-only build (the root
// filesystem and its manifest), so its formats stay empty.
func (s *Spec) applyDefaults() {
	if len(s.Output.Formats) == 0 && s.Kernel != nil {
		s.Output.Formats = []string{"netboot"}
	}
	if s.Output.Compression == "" {
		s.Output.Compression = "zstd"
	}
	if s.Kernel != nil && s.Kernel.Drivers == nil {
		s.Kernel.Drivers = []string{CommonSet}
	}
}

// Sources lists the spec's sources in order: kernel first, then layers.
func (s *Spec) Sources() []Source {
	var out []Source
	if s.Kernel != nil {
		out = append(out, s.Kernel.Src)
	}
	for _, l := range s.Layers {
		out = append(out, l.Src)
	}
	return out
}
