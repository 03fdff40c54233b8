package compose

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/builder/kernel"
	"github.com/plinth-dev/plinth/internal/testutil"
)

// stage1Budget is the most a netboot stage 1 may weigh compressed: it is
// fetched over TFTP/HTTP by iPXE before anything else runs.
const stage1Budget = 15 << 20

// TestStage1FitsTheBudget composes plinth's real stage 1 (init, agent, six
// rescue commands, the usual modules of the Debian kernel). Its busybox is
// cached in the user's plinth cache, shared with plinth build, since it
// takes about a minute to compile.
func TestStage1FitsTheBudget(t *testing.T) {
	compiles(t)
	home, _ := os.UserHomeDir()
	fx := os.Getenv("PLINTH_FIXTURES")
	if fx == "" {
		fx = filepath.Join(home, ".cache", "plinth", "fixtures")
	}
	k, err := kernel.Find(filepath.Join(fx, "kernel"))
	testutil.Need(t, err == nil, "no Debian kernel fixture (make fixtures): %v", err)
	_, err = os.Stat(filepath.Join(srcDir(), "initramfs", "cmd", "init"))
	testutil.Need(t, err == nil, "no stage-1 init yet: %v", err)
	mods, err := k.Resolve([]string{"squashfs", "overlay", "loop", "virtio_net", "virtio_blk", "vxlan", "br_netfilter", "e1000e", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	c := Config{
		Commands: []string{"github.com/plinth-dev/plinth/initramfs/cmd/init", "github.com/plinth-dev/plinth/initramfs/cmd/plinth-agent"},
		Rescue: []string{"github.com/u-root/u-root/cmds/core/gosh", "github.com/u-root/u-root/cmds/core/ls",
			"github.com/u-root/u-root/cmds/core/cat", "github.com/u-root/u-root/cmds/core/ip",
			"github.com/u-root/u-root/cmds/core/dmesg", "github.com/u-root/u-root/cmds/core/mount"},
		ModuleDir: k.Tree,
		Modules:   mods,
		Epoch:     time.Unix(1700000000, 0),
		CacheDir:  filepath.Join(home, ".cache", "plinth", "initramfs"),
		WorkDir:   srcDir(),
	}
	start := time.Now()
	out := buildImage(t, c)
	st, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > stage1Budget {
		t.Errorf("stage 1 is %d bytes, over the %d budget", st.Size(), stage1Budget)
	}
	ents, err := Inspect(out)
	if err != nil {
		t.Fatal(err)
	}
	var plain int64
	for _, e := range ents {
		plain += e.Size
	}
	t.Logf("figure: stage 1 with %d modules: %.1f MB zstd (%.1f MB of files), built in %v",
		len(mods), float64(st.Size())/(1<<20), float64(plain)/(1<<20), time.Since(start).Round(time.Second))
}
