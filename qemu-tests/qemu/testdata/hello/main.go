// Command hello is a tiny /init for the harness's own test: it prints a
// marker on the console and powers the machine off.
package main

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	c, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		c = os.Stdout
	}
	fmt.Fprintln(c, "HARNESS-MARKER hello from /init")
	if len(os.Getenv("HOLD")) > 0 {
		time.Sleep(time.Hour)
	}
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}
