// Command plinth-agent reports a machine's readiness once its image's init
// reached the default target: see package agent.
package main

import (
	"os"

	"github.com/plinth-dev/plinth/initramfs/agent"
)

func main() { os.Exit(agent.Main()) }
