package kernel

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const fakeAlias = `# Aliases extracted from modules themselves.
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
alias virtio:d00000001v* virtio_net
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias pci:v000010ECd00008168sv*sd*bc*sc*i* r8169
`

const fakeSoftdep = `# Soft dependencies extracted from modules themselves.
softdep libcrc32c pre: crc32c
softdep r8169 pre: realtek
softdep cifs gcm
softdep bridge post: br_netfilter nosuch
`

// hwTree is fakeTree with aliases, soft dependencies and the modules they
// name; crc32c_generic is a module here.
func hwTree(t *testing.T) *Kernel {
	t.Helper()
	dir := fakeTree(t)
	md := filepath.Join(dir, "lib", "modules", "6.1.0-test")
	dep, _ := os.ReadFile(filepath.Join(md, "modules.dep"))
	dep = append(dep, []byte(`kernel/lib/libcrc32c.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/net/ethernet/intel/e1000/e1000.ko:
kernel/drivers/net/ethernet/realtek/r8169.ko: kernel/drivers/net/phy/libphy.ko
kernel/drivers/net/phy/realtek.ko: kernel/drivers/net/phy/libphy.ko
kernel/drivers/net/phy/libphy.ko:
`)...)
	write(t, filepath.Join(md, "modules.dep"), dep)
	write(t, filepath.Join(md, "modules.builtin"), []byte("kernel/drivers/block/loop.ko\n"))
	write(t, filepath.Join(md, "modules.alias"), []byte(fakeAlias))
	write(t, filepath.Join(md, "modules.softdep"), []byte(fakeSoftdep))
	k, err := Find(dir)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestResolveFollowsSoftDependencies(t *testing.T) {
	k := hwTree(t)
	for _, tc := range []struct{ in, want string }{
		// crc32c is an alias of two modules: both come, in modules.alias order.
		{"libcrc32c", "crc32c_intel crc32c_generic libcrc32c"},
		// The PHY driver before the NIC, sharing libphy.
		{"r8169", "libphy realtek r8169"},
		// post: after; a soft dependency the kernel lacks is skipped.
		{"bridge", "llc stp bridge br_netfilter"},
		// Names before pre:/post: mean nothing.
		{"cifs", ""},
	} {
		ms, err := k.Resolve([]string{tc.in})
		if tc.in == "cifs" {
			if err == nil {
				t.Errorf("cifs: no error for a module the tree lacks")
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if got := names(ms); got != tc.want {
			t.Errorf("%s: load order\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
}

func TestDriversGiveAliasesAndLoadOrder(t *testing.T) {
	k := hwTree(t)
	ds, missing, err := k.Drivers([]string{"r8169"}, []string{"e1000", "loop", "ice", "virtio-net"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(missing, []string{"ice"}) {
		t.Errorf("missing %v, want [ice]", missing)
	}
	var got []string
	for _, d := range ds {
		got = append(got, d.Name+"="+strings.Join(d.Aliases, ",")+"="+names(d.Load))
	}
	want := []string{
		"e1000=pci:v00008086d0000100Esv*sd*bc*sc*i*=e1000",
		"virtio_net=virtio:d00000001v*=failover net_failover virtio_ring virtio virtio_net",
		"r8169=pci:v000010ECd00008168sv*sd*bc*sc*i*=libphy realtek r8169",
	}
	if !slices.Equal(got, want) {
		t.Errorf("drivers (built-in loop left out)\n got %q\nwant %q", got, want)
	}
	if _, _, err := k.Drivers([]string{"ice"}, nil); err == nil || !strings.Contains(err.Error(), "no module ice") {
		t.Errorf("a named driver the kernel lacks: %v, want an error naming it", err)
	}
}

func TestParseAliasesAndSoftdepsRejectGarbage(t *testing.T) {
	if _, err := parseAliases(strings.NewReader("alias a\n")); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("short alias line: %v", err)
	}
	if _, err := parseAliases(strings.NewReader("\nalias [ m\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("bad pattern: %v", err)
	}
	if _, err := parseSoftdeps(strings.NewReader("options x y\n")); err == nil {
		t.Errorf("not a softdep line: no error")
	}
}

// The Debian kernel: every driver of the stock images resolves, with the
// soft dependencies that make them work in an initramfs without modprobe.
func TestDebianDriversAndSoftdeps(t *testing.T) {
	k := debianKernel(t)
	ms, err := k.Resolve([]string{"r8169", "libcrc32c"})
	if err != nil {
		t.Fatal(err)
	}
	order := strings.Fields(names(ms))
	at := func(n string) int { return slices.Index(order, n) }
	if at("realtek") < 0 || at("realtek") > at("r8169") {
		t.Errorf("r8169 without its PHY driver first: %v", order)
	}
	if at("crc32c_generic") < 0 || at("crc32c_generic") > at("libcrc32c") {
		t.Errorf("libcrc32c without crc32c first: %v", order)
	}
	ds, missing, err := k.Drivers(nil, []string{"e1000e", "igb", "ixgbe", "i40e", "ice", "mlx4_core", "mlx5_core", "bnxt_en", "tg3", "bnx2x", "r8169", "vmxnet3", "nvme", "ahci"})
	if err != nil || len(missing) > 0 {
		t.Fatalf("drivers: %v, missing %v", err, missing)
	}
	for _, d := range ds {
		if len(d.Aliases) == 0 || d.Load[len(d.Load)-1].Name != d.Name && d.Name != "r8169" {
			t.Errorf("%s: %d aliases, load %s", d.Name, len(d.Aliases), names(d.Load))
		}
	}
	fw, bad := k.Firmware(ds[slices.IndexFunc(ds, func(d Driver) bool { return d.Name == "r8169" })].Load)
	if len(bad) > 0 || !slices.ContainsFunc(fw, func(f string) bool { return strings.HasPrefix(f, "rtl_nic/") }) {
		t.Errorf("r8169 firmware: %v, unreadable %v", fw, bad)
	}
}

// Without modules.dep and modules.softdep, a soft dependency is read from
// the module's own .modinfo.
func TestSoftdepsFromModinfo(t *testing.T) {
	deb := debianKernel(t)
	ref, err := deb.Resolve([]string{"r8169"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write(t, filepath.Join(dir, "boot", "vmlinuz-"+deb.Version), nil)
	for _, m := range ref {
		b, err := os.ReadFile(filepath.Join(deb.Tree, m.Path))
		if err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, m.Path), b)
	}
	k, err := Find(dir)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := k.Resolve([]string{"r8169"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(ms), names(ref); got != want {
		t.Errorf("from .modinfo\n got %s\nwant %s (from the index files)", got, want)
	}
}
