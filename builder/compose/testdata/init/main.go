// Command init is a stand-in /init for compose's tests: it reports what
// stage 1 would find in the initramfs on the console, then powers off.
// It is named init so that the image has the /init -> bbin/init link of
// the real one.
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

func main() {
	fmt.Println("plinth-testinit: running as pid", os.Getpid())
	for _, f := range []string{"/etc/plinth/cmdline", "/etc/plinth/modules", "/plinth/rootfs.digest"} {
		b, err := os.ReadFile(f)
		if err != nil {
			fmt.Printf("plinth-testinit: %s: %v\n", f, err)
			continue
		}
		fmt.Printf("plinth-testinit: %s: %d lines: %s\n", f, strings.Count(string(b), "\n"), strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", " | "))
	}
	if os.Getpid() == 1 {
		syscall.Sync()
		if err := syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
			fmt.Println("plinth-testinit: power off:", err)
		}
	}
}
