package kernel

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/plinth-dev/plinth/internal/testutil"
)

const fakeDep = `kernel/fs/squashfs/squashfs.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/fs/fuse/fuse-ext.ko.xz:
kernel/crypto/needs-crc.ko: kernel/lib/crc32c_generic.ko
kernel/crypto/broken.ko: kernel/crypto/missing.ko
`

// fakeTree writes a kernel tree with a small modules.dep; crc32c_generic
// and loop are built in.
func fakeTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	md := filepath.Join(dir, "lib", "modules", "6.1.0-test")
	write(t, filepath.Join(dir, "boot", "vmlinuz-6.1.0-test"), []byte("kernel"))
	write(t, filepath.Join(md, "modules.dep"), []byte(fakeDep))
	write(t, filepath.Join(md, "modules.builtin"), []byte("kernel/drivers/block/loop.ko\nkernel/lib/crc32c_generic.ko\n"))
	return dir
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func names(ms []Module) string {
	var n []string
	for _, m := range ms {
		n = append(n, m.Name)
	}
	return strings.Join(n, " ")
}

func TestResolveGivesTheDependencyClosureInLoadOrder(t *testing.T) {
	k, err := Find(fakeTree(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, want string
		in         []string
	}{
		{"dependencies first, in modules.dep order", "failover net_failover virtio_ring virtio virtio_net", []string{"virtio_net"}},
		{"dashes are underscores", "failover net_failover virtio_ring virtio virtio_net", []string{"virtio-net"}},
		{"a shared dependency is loaded once", "llc stp bridge br_netfilter", []string{"br_netfilter", "bridge", "llc"}},
		{"built-in modules are satisfied silently", "squashfs", []string{"loop", "squashfs"}},
		{"a built-in dependency is left out", "needs_crc", []string{"needs-crc"}},
		{"named modules keep the order given", "squashfs virtio_ring", []string{"squashfs", "virtio_ring"}},
		{"nothing asked, nothing loaded", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms, err := k.Resolve(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got := names(ms); got != tc.want {
				t.Errorf("load order\n got %s\nwant %s", got, tc.want)
			}
		})
	}
	// A file whose name has a dash answers to both spellings, once.
	ms, err := k.Resolve([]string{"fuse-ext", "fuse_ext"})
	if err != nil || len(ms) != 1 || ms[0].Path != "lib/modules/6.1.0-test/kernel/fs/fuse/fuse-ext.ko.xz" {
		t.Errorf("fuse-ext: %+v, %v", ms, err)
	}
	ms, _ = k.Resolve([]string{"virtio_net"})
	if ms[0].Path != "lib/modules/6.1.0-test/kernel/net/core/failover.ko" {
		t.Errorf("path %s, want relative to the tree", ms[0].Path)
	}
}

func TestResolveErrors(t *testing.T) {
	k, err := Find(fakeTree(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in   []string
		want string
	}{
		{[]string{"squashfs", "zfs", "nosuch"}, "no module nosuch, zfs"},
		{[]string{"broken"}, "broken depends on missing"},
	} {
		_, err := k.Resolve(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Resolve(%v) = %v, want an error with %q", tc.in, err, tc.want)
		}
	}
}

func TestFindNeedsExactlyOneKernelWithModules(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(dir string)
		want  string // version, or error text
		fails bool
	}{
		{"one kernel", func(string) {}, "6.1.0-test", false},
		{"a stray file beside the kernel is not a second kernel", func(dir string) {
			write(t, filepath.Join(dir, "boot", "vmlinuz-6.1.0-test.sha256"), nil)
		}, "6.1.0-test", false},
		{"a second kernel with modules is", func(dir string) {
			write(t, filepath.Join(dir, "boot", "vmlinuz-6.2"), nil)
			write(t, filepath.Join(dir, "lib", "modules", "6.2", "modules.dep"), nil)
		}, "2 kernels (boot/vmlinuz-6.1.0-test, boot/vmlinuz-6.2)", true},
		{"a kernel without modules is named", func(dir string) {
			os.RemoveAll(filepath.Join(dir, "lib"))
		}, "found only boot/vmlinuz-6.1.0-test", true},
		{"an empty tree has none", func(dir string) {
			os.RemoveAll(filepath.Join(dir, "boot"))
		}, "no boot/vmlinuz-* kernel", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeTree(t)
			tc.setup(dir)
			k, err := Find(dir)
			switch {
			case tc.fails && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Find = %v, want an error with %q", err, tc.want)
			case !tc.fails && err != nil:
				t.Errorf("Find: %v", err)
			case !tc.fails && (k.Version != tc.want || k.Image != filepath.Join(dir, "boot", "vmlinuz-"+tc.want) ||
				k.ModulesDir != filepath.Join(dir, "lib", "modules", tc.want)):
				t.Errorf("Find = %+v", k)
			}
		})
	}
}

// debianKernel is the Debian kernel fixture (qemu-tests/fixtures), or a skip.
func debianKernel(t *testing.T) *Kernel {
	t.Helper()
	fx := os.Getenv("PLINTH_FIXTURES")
	if fx == "" {
		home, _ := os.UserHomeDir()
		fx = filepath.Join(home, ".cache", "plinth", "fixtures")
	}
	k, err := Find(filepath.Join(fx, "kernel"))
	testutil.Need(t, err == nil, "no Debian kernel fixture (make fixtures): %v", err)
	return k
}

// stage1Modules are the modules plinth's stage 1 typically loads.
var stage1Modules = []string{"squashfs", "overlay", "virtio_net", "vxlan", "br_netfilter"}

// assertLoadOrder checks that every module comes after all modules.dep
// says it needs, and that nothing else is included.
func assertLoadOrder(t *testing.T, k *Kernel, ms []Module) {
	t.Helper()
	f, err := os.Open(filepath.Join(k.ModulesDir, "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ix, err := parseDep(f)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, n := range stage1Modules {
		want[n] = true
		for _, d := range ix.deps[n] {
			want[d] = true
		}
	}
	seen := map[string]bool{}
	for _, m := range ms {
		for _, d := range ix.deps[m.Name] {
			if !seen[d] {
				t.Errorf("%s loaded before its dependency %s", m.Name, d)
			}
		}
		if seen[m.Name] {
			t.Errorf("%s twice", m.Name)
		}
		seen[m.Name] = true
		if !want[m.Name] {
			t.Errorf("%s is not needed", m.Name)
		}
		if _, err := os.Stat(filepath.Join(k.Tree, m.Path)); err != nil {
			t.Errorf("%s: %v", m.Name, err)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("%d modules, modules.dep says %d", len(seen), len(want))
	}
}

func TestResolveOnTheDebianKernel(t *testing.T) {
	k := debianKernel(t)
	ms, err := k.Resolve(stage1Modules)
	if err != nil {
		t.Fatal(err)
	}
	// What the fixture's modules.dep says: virtio_net needs net_failover,
	// failover, virtio, virtio_ring; vxlan ip6_udp_tunnel, udp_tunnel;
	// br_netfilter bridge, stp, llc.
	want := "squashfs overlay failover net_failover virtio_ring virtio virtio_net ip6_udp_tunnel udp_tunnel vxlan llc stp bridge br_netfilter"
	if got := names(ms); got != want {
		t.Errorf("load order\n got %s\nwant %s", got, want)
	}
	assertLoadOrder(t, k, ms)
}

// TestResolveWithoutModulesDepReadsModinfo copies the stage-1 modules of the
// Debian kernel into a tree without modules.dep, some of them compressed the
// ways kmod supports, and resolves them from their .modinfo.
func TestResolveWithoutModulesDepReadsModinfo(t *testing.T) {
	deb := debianKernel(t)
	ref, err := deb.Resolve(stage1Modules)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write(t, filepath.Join(dir, "boot", "vmlinuz-"+deb.Version), nil)
	compressors := map[string]func([]byte) []byte{
		"virtio_net": func(b []byte) []byte { // xz, as Debian ships from trixie on
			var buf bytes.Buffer
			w, err := xz.NewWriter(&buf)
			if err != nil {
				t.Fatal(err)
			}
			w.Write(b)
			w.Close()
			return buf.Bytes()
		},
		"failover": func(b []byte) []byte {
			e, _ := zstd.NewWriter(nil)
			defer e.Close()
			return e.EncodeAll(b, nil)
		},
		"bridge": func(b []byte) []byte {
			var buf bytes.Buffer
			w := gzip.NewWriter(&buf)
			w.Write(b)
			w.Close()
			return buf.Bytes()
		},
	}
	ext := map[string]string{"virtio_net": ".xz", "failover": ".zst", "bridge": ".gz"}
	for _, m := range ref {
		b, err := os.ReadFile(filepath.Join(deb.Tree, m.Path))
		if err != nil {
			t.Fatal(err)
		}
		if c := compressors[m.Name]; c != nil {
			b = c(b)
		}
		write(t, filepath.Join(dir, m.Path+ext[m.Name]), b)
	}
	k, err := Find(dir)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := k.Resolve(stage1Modules)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if want := ext[m.Name]; !strings.HasSuffix(m.Path, ".ko"+want) {
			t.Errorf("%s at %s, want the %q file", m.Name, m.Path, want)
		}
	}
	k.Tree, k.ModulesDir = deb.Tree, deb.ModulesDir // check the order against the real modules.dep
	for i := range ms {
		ms[i].Path = strings.TrimSuffix(ms[i].Path, ext[ms[i].Name])
	}
	assertLoadOrder(t, k, ms)
}

func FuzzParseDep(f *testing.F) {
	f.Add(fakeDep)
	f.Add("a.ko:\n\n# comment\nb-c.ko.zst: a.ko\n")
	f.Add("nocolon\n")
	f.Add("x.ko: y.ko y.ko\nx.ko: z.ko\n")
	f.Fuzz(func(t *testing.T, s string) {
		ix, err := parseDep(strings.NewReader(s))
		if err != nil {
			return
		}
		for n, p := range ix.paths {
			if n != nameOf(p) || strings.Contains(n, "-") || !isModuleFile(p) {
				t.Errorf("%q indexed as %q", p, n)
			}
			if _, ok := ix.deps[n]; !ok {
				t.Errorf("%s has no dependency list", n)
			}
		}
	})
}

func FuzzParseModinfoDepends(f *testing.F) {
	f.Add([]byte("license=GPL\x00depends=virtio_ring,virtio,net_failover\x00name=virtio_net\x00"))
	f.Add([]byte("depends=\x00"))
	f.Add([]byte("depends=a-b,,a_b\x00depends=c"))
	f.Fuzz(func(t *testing.T, b []byte) {
		deps := parseModinfoDepends(b)
		if !slices.IsSorted(deps) || len(slices.Compact(slices.Clone(deps))) != len(deps) {
			t.Errorf("not sorted and unique: %q", deps)
		}
		for _, d := range deps {
			if d == "" || strings.Contains(d, "-") {
				t.Errorf("bad name %q in %q", d, deps)
			}
		}
	})
}

func TestParseModinfoDepends(t *testing.T) {
	for in, want := range map[string]string{
		"license=GPL\x00depends=virtio_ring,virtio,net_failover\x00": "net_failover virtio virtio_ring",
		"depends=\x00name=squashfs\x00":                              "",
		"name=x\x00":                                                 "",
		"depends=nf-conntrack,nf_conntrack,nf_nat":                   "nf_conntrack nf_nat",
	} {
		if got := strings.Join(parseModinfoDepends([]byte(in)), " "); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}
