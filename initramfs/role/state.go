package role

import (
	"path"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/plinth-dev/plinth/profiles/node"
)

// The state disk, on the machine.
const (
	// StateDir is where the machine's state partition is mounted; each
	// directory a role keeps (roles.Role.State) is a directory of it,
	// bind-mounted in place.
	StateDir = "/var/lib/plinth/state"
	// StateStatusFile is written by `plinth-agent state-disk`: what it
	// found and did, or why it refused the disk. The agent reports it.
	StateStatusFile = "/run/plinth/state.json"
	// StatePartLink is made by `plinth-agent state-disk`: a symlink to the
	// state partition's device, which the state mount mounts. Not the
	// /dev/disk/by-partuuid link: a mount of a /dev path waits for its
	// device from the start of the boot, and gives up after 90 s, before a
	// blank disk on a slow machine is even formatted.
	StatePartLink = "/run/plinth/state-partition"
	// StateUnit finds, checks or formats the state disk.
	StateUnit = "plinth-state-disk.service"
	// stateDirsUnit makes the role's directories on the state partition.
	stateDirsUnit = "plinth-state-dirs.service"
)

// MountUnit is the name of the mount unit for a path, as systemd names it.
func MountUnit(where string) string { return unit.UnitNamePathEscape(where) + ".mount" }

// stateMounts gives each directory a role keeps its mount: with a state
// disk, a bind mount of a directory of the state partition, after
// StateUnit has found (or formatted) the disk and the partition is
// mounted; without one, a tmpfs, lost at every boot. Either way the mount
// unit is MountUnit(dir), which the role's services require. The state
// partition is the one with the profile's partition UUID; the step links
// it at StatePartLink once it has checked or formatted it.
func stateMounts(p *Plan, cfg *node.Config, dirs []string) error {
	if cfg.State == nil {
		for _, d := range dirs {
			p.unit(tmpfsMount(d))
		}
		return nil
	}
	shutdown := []*unit.UnitOption{
		opt("Unit", "DefaultDependencies", "no"),
		opt("Unit", "Conflicts", "umount.target"),
		opt("Unit", "Before", "umount.target"),
	}
	// The step waits for udev's links (serial, WWN, by-id) and posts
	// events, so it runs once the network is up: the mounts after it are
	// outside local-fs.target and are pulled in by the role's services.
	disk, err := agentUnit(StateUnit, "plinth: find, check or format the state disk",
		[]string{"state-disk"},
		opt("Unit", "Wants", "network-online.target systemd-udev-settle.service"),
		opt("Unit", "After", "network-online.target systemd-udev-settle.service"),
		opt("Install", "WantedBy", "multi-user.target"))
	if err != nil {
		return err
	}
	disk.WantedBy = "multi-user.target"
	p.unit(disk)

	stateMount := MountUnit(StateDir)
	p.unit(Unit{
		Name: stateMount,
		Options: append(append([]*unit.UnitOption{
			opt("Unit", "Description", "plinth: the state partition"),
			opt("Unit", "Requires", StateUnit),
			opt("Unit", "After", StateUnit),
		}, shutdown...),
			opt("Mount", "What", StatePartLink),
			opt("Mount", "Where", StateDir),
			opt("Mount", "Type", "ext4"),
			opt("Mount", "Options", "noatime"),
		),
	})

	var sub []string
	for _, d := range dirs {
		sub = append(sub, path.Join(StateDir, path.Base(d)))
	}
	mkdir, err := cmdline(append([]string{"/bin/mkdir", "-p", "-m", "0700"}, sub...)...)
	if err != nil {
		return err
	}
	p.unit(Unit{
		Name: stateDirsUnit,
		Options: append(append([]*unit.UnitOption{
			opt("Unit", "Description", "plinth: the role's directories on the state partition"),
			opt("Unit", "Requires", stateMount),
			opt("Unit", "After", stateMount),
		}, shutdown...),
			opt("Service", "Type", "oneshot"),
			opt("Service", "RemainAfterExit", "yes"),
			opt("Service", "ExecStart", mkdir),
		),
	})
	for i, d := range dirs {
		p.unit(Unit{
			Name: MountUnit(d),
			Options: append(append([]*unit.UnitOption{
				opt("Unit", "Description", "plinth: "+d+" on the state disk"),
				opt("Unit", "Requires", stateDirsUnit),
				opt("Unit", "After", stateDirsUnit),
			}, shutdown...),
				opt("Mount", "What", sub[i]),
				opt("Mount", "Where", d),
				opt("Mount", "Type", "none"),
				opt("Mount", "Options", "bind"),
				opt("Install", "WantedBy", "multi-user.target"),
			),
			WantedBy: "multi-user.target",
		})
	}
	return nil
}
