package builder

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/plinth-dev/plinth/builder/kernel"
	"github.com/plinth-dev/plinth/builder/source"
	"github.com/plinth-dev/plinth/images"
	"github.com/plinth-dev/plinth/internal/testutil"
)

// The Debian kernel carries no firmware; a site's [stage1] firmware tree
// gives r8169 the file it asks for, and the rest stay listed as missing.
func TestFirmwareFromTheStage1Source(t *testing.T) {
	k := debianKernel(t)
	mods, err := k.Resolve([]string{"r8169"})
	if err != nil {
		t.Fatal(err)
	}
	fw := t.TempDir()
	p := filepath.Join(fw, "lib", "firmware", "rtl_nic", "rtl8168h-2.fw")
	os.MkdirAll(filepath.Dir(p), 0o755)
	os.WriteFile(p+".zst", []byte("not really firmware"), 0o644)
	b := &build{
		spec: &images.Spec{File: "r.toml", Kernel: &images.Kernel{Source: "dir:kernel"},
			Stage1: images.Stage1{Firmware: "dir:" + fw, FirmwareSrc: images.Source{Kind: images.KindDir, Path: fw, Raw: "dir:" + fw}}},
		log: slog.New(slog.DiscardHandler),
		res: &source.Resolver{},
	}
	got, err := b.firmware(context.Background(), k, mods)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.found) != 1 || got.found[0].Name != "rtl_nic/rtl8168h-2.fw.zst" || got.found[0].Src != p+".zst" {
		t.Errorf("found %+v, want the site's compressed rtl8168h-2", got.found)
	}
	if slices.Contains(got.missing, "rtl_nic/rtl8168h-2.fw") || !slices.Contains(got.missing, "rtl_nic/rtl8168g-2.fw") || len(got.missing) < 10 {
		t.Errorf("missing %v", got.missing)
	}
}

func TestExpandDrivers(t *testing.T) {
	named, optional := expandDrivers([]string{"sfc", images.CommonSet})
	if !slices.Equal(named, []string{"sfc"}) || !slices.Equal(optional, images.CommonDrivers) {
		t.Errorf("named %v optional %v", named, optional)
	}
	if n, o := expandDrivers([]string{}); n != nil || o != nil {
		t.Errorf("drivers = []: %v %v, want none", n, o)
	}
}

func TestMlx4LoadsItsEthernetDriver(t *testing.T) {
	k := debianKernel(t)
	ds, _, err := k.Drivers([]string{"mlx4_core"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	withCompanions(k, ds)
	var names []string
	for _, m := range ds[0].Load {
		names = append(names, m.Name)
	}
	if i, j := slices.Index(names, "mlx4_core"), slices.Index(names, "mlx4_en"); i < 0 || j < i {
		t.Errorf("mlx4_core's load order %v: want mlx4_en after it", names)
	}
}

// debianKernel is the Debian kernel fixture (make fixtures), or a skip.
func debianKernel(t *testing.T) *kernel.Kernel {
	t.Helper()
	fx := os.Getenv("PLINTH_FIXTURES")
	if fx == "" {
		home, _ := os.UserHomeDir()
		fx = filepath.Join(home, ".cache", "plinth", "fixtures")
	}
	k, err := kernel.Find(filepath.Join(fx, "kernel"))
	testutil.Need(t, err == nil, "no Debian kernel fixture (make fixtures): %v", err)
	return k
}
