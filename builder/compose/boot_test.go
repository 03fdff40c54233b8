package compose

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/builder/kernel"
	"github.com/plinth-dev/plinth/internal/testutil"
)

// TestImageBootsInQEMU boots the Debian fixture kernel (TCG, no KVM needed)
// with an embedded image whose /init reports what it finds: proof that the
// kernel unpacks both the compressed stage 1 and the raw embedded part.
func TestImageBootsInQEMU(t *testing.T) {
	compiles(t)
	qemu := testutil.NeedTool(t, "qemu-system-x86_64", "apt-get install qemu-system-x86 (make deps does)")
	home, _ := os.UserHomeDir()
	fx := os.Getenv("PLINTH_FIXTURES")
	if fx == "" {
		fx = filepath.Join(home, ".cache", "plinth", "fixtures")
	}
	k, err := kernel.Find(filepath.Join(fx, "kernel"))
	testutil.Need(t, err == nil, "no Debian kernel fixture (make fixtures): %v", err)
	c := withEmbedded(t, testConfig(t, nil))
	img := buildImage(t, c)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, qemu, "-m", "512", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
		"-kernel", k.Image, "-initrd", img, "-append", "console=ttyS0 panic=-1 quiet")
	out, err := cmd.CombinedOutput()
	console := string(out)
	if ctx.Err() != nil {
		t.Fatalf("qemu did not power off in time: %v\n%s", err, console)
	}
	for _, want := range []string{
		"plinth-testinit: running as pid 1",
		"/etc/plinth/cmdline: 1 lines: " + c.Cmdline,
		"/etc/plinth/modules: 2 lines: " + c.Modules[0].Path + " | " + c.Modules[1].Path,
		"/plinth/rootfs.digest: 1 lines: " + c.Embedded.RootfsDigest,
	} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q:\n%s", want, console)
		}
	}
	t.Logf("figure: QEMU (TCG) booted to /init and powered off in %v", time.Since(start).Round(100*time.Millisecond))
}
