// Package stage1 is plinth's /init: PID 1 in the initramfs. It brings up the
// machine, fetches its profile and root filesystem, verifies the root by
// digest, mounts it read-only under a tmpfs overlay, writes the profile into
// the overlay and hands over to the image's init. It runs as named phases
// over small interfaces so that all but the system calls is tested on the
// build host.
package stage1

import (
	"fmt"
	"strings"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/builder/manifest"
)

// Params are the plinth.* kernel parameters.
type Params struct {
	Server  string // boot server base URL; empty: embedded mode
	Machine string // machine id the server knows
	Rootfs  string // sha256:<hex> the rootfs must have
	Token   string // enrolment token
	Rescue  bool   // a shell on the console when boot fails
	Iface   string // boot NIC, by name or MAC
	Init    string // the image's init; default /sbin/init
}

// ParseCmdline splits a kernel command line into parameters. Values may be
// double-quoted (the kernel's own rule); a bare word maps to "".
func ParseCmdline(s string) map[string]string {
	out := map[string]string{}
	var key, cur strings.Builder
	inKey, quoted := true, false
	flush := func() {
		if k := key.String(); k != "" {
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

// ParseParams reads the plinth.* parameters: defaults (the initramfs's
// /etc/plinth/cmdline) first, then the real command line, which wins.
func ParseParams(defaults, cmdline string) (Params, error) {
	kv := ParseCmdline(defaults)
	for k, v := range ParseCmdline(cmdline) {
		kv[k] = v
	}
	p := Params{
		Server:  strings.TrimRight(kv[api.ParamServer], "/"),
		Machine: kv[api.ParamMachine],
		Rootfs:  kv[api.ParamRootfs],
		Token:   kv[api.ParamToken],
		Iface:   kv[api.ParamIface],
		Init:    kv["plinth.init"],
	}
	switch kv[api.ParamRescue] {
	case "", "0", "no", "false":
	default:
		p.Rescue = true
	}
	if p.Init == "" {
		p.Init = "/sbin/init"
	}
	if p.Rootfs != "" {
		if _, err := manifest.ParseDigest(p.Rootfs); err != nil {
			return p, fmt.Errorf("%s: %w", api.ParamRootfs, err)
		}
	}
	if p.Server != "" {
		if !strings.HasPrefix(p.Server, "http://") && !strings.HasPrefix(p.Server, "https://") {
			return p, fmt.Errorf("%s=%q: want an http:// or https:// URL", api.ParamServer, p.Server)
		}
		if p.Machine == "" {
			return p, fmt.Errorf("%s is set but %s is not", api.ParamServer, api.ParamMachine)
		}
		if p.Rootfs == "" {
			return p, fmt.Errorf("%s is set but %s is not: a netbooted root must be pinned by digest", api.ParamServer, api.ParamRootfs)
		}
	}
	return p, nil
}
