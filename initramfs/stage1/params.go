// Package stage1 is plinth's /init: PID 1 in the initramfs. It brings up the
// machine, fetches its profile and root filesystem, verifies the root by
// digest, mounts it read-only under a tmpfs overlay, writes the profile into
// the overlay and hands over to the image's init. It runs as named phases
// over small interfaces so that all but the system calls is tested on the
// build host.
package stage1

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
)

// ParamInit names the image's init to exec after switch_root.
const ParamInit = "plinth.init"

// Params are the plinth.* kernel parameters.
type Params struct {
	Server  string // boot server base URL; empty: embedded mode
	Machine string // machine id the server knows
	Rootfs  string // sha256:<hex> the rootfs must have
	Token   string // enrolment token
	TLS     string // the server's HTTPS URL for the profile and reports
	CA      string // the site CA's api.CAFingerprint the HTTPS server must chain to
	Rescue  bool   // a shell on the console when boot fails
	Iface   string // boot NIC, by name or MAC
	Init    string // the image's init; default /sbin/init
	// Reboot is how long after boot stopped the machine reboots; 0: never.
	Reboot time.Duration
}

// DefaultReboot is how long a machine whose boot stopped stays on the
// console before it reboots to try again: long enough to read why.
const DefaultReboot = 5 * time.Minute

// ParseParams reads the plinth.* parameters: defaults (the initramfs's
// /etc/plinth/cmdline) first, then the real command line, which wins.
func ParseParams(defaults, cmdline string) (Params, error) {
	kv := api.ParseCmdline(defaults)
	for k, v := range api.ParseCmdline(cmdline) {
		kv[k] = v
	}
	p := Params{
		Server:  strings.TrimRight(kv[api.ParamServer], "/"),
		Machine: kv[api.ParamMachine],
		Rootfs:  kv[api.ParamRootfs],
		Token:   kv[api.ParamToken],
		TLS:     strings.TrimRight(kv[api.ParamTLS], "/"),
		CA:      kv[api.ParamCA],
		Iface:   kv[api.ParamIface],
		Init:    kv[ParamInit],
	}
	switch kv[api.ParamRescue] {
	case "", "0", "no", "false":
	default:
		p.Rescue = true
	}
	if p.Init == "" {
		p.Init = "/sbin/init"
	}
	switch v := kv[api.ParamReboot]; v {
	case "":
		p.Reboot = DefaultReboot
	case "off", "no", "0":
	default:
		d, err := time.ParseDuration(v)
		if n, nerr := strconv.Atoi(v); nerr == nil {
			d, err = time.Duration(n)*time.Second, nil
		}
		if err != nil || d < 0 {
			p.Reboot = DefaultReboot
			return p, fmt.Errorf("%s=%q: want a duration (90s, 5m), seconds, or off", api.ParamReboot, v)
		}
		p.Reboot = d
	}
	if !strings.HasPrefix(p.Init, "/") {
		return p, fmt.Errorf("%s=%q: want an absolute path", ParamInit, p.Init)
	}
	if p.Machine != "" && strings.Trim(p.Machine, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-") != "" {
		// It becomes a URL path segment: no '/', '?', '%' or spaces.
		return p, fmt.Errorf("%s=%q: want letters, digits and . _ : -", api.ParamMachine, p.Machine)
	}
	if p.Rootfs != "" {
		if err := CheckDigest(p.Rootfs); err != nil {
			return p, fmt.Errorf("%s: %w", api.ParamRootfs, err)
		}
	}
	if p.CA != "" {
		if err := CheckDigest(p.CA); err != nil {
			return p, fmt.Errorf("%s: %w", api.ParamCA, err)
		}
	}
	if p.TLS != "" {
		if !strings.HasPrefix(p.TLS, "https://") {
			return p, fmt.Errorf("%s=%q: want an https:// URL", api.ParamTLS, p.TLS)
		}
		if p.Server == "" {
			return p, fmt.Errorf("%s is set but %s is not", api.ParamTLS, api.ParamServer)
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

// CheckDigest accepts "sha256:" and 64 lower-case hex digits, the only form
// the builder writes. (Stage 1 must not import the builder's manifest
// package: it would drag the builder into the initramfs.)
func CheckDigest(d string) error {
	hexd, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hexd) != 64 || strings.Trim(hexd, "0123456789abcdef") != "" {
		return fmt.Errorf("digest %q: want sha256:<64 lower-case hex digits>", d)
	}
	return nil
}
