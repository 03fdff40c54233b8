package kernel

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeTree writes a kernel tree with a small modules.dep.
func fakeTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	md := filepath.Join(dir, "lib", "modules", "6.1.0-test")
	os.MkdirAll(filepath.Join(dir, "boot"), 0o755)
	os.MkdirAll(md, 0o755)
	os.WriteFile(filepath.Join(dir, "boot", "vmlinuz-6.1.0-test"), []byte("kernel"), 0o644)
	os.WriteFile(filepath.Join(md, "modules.dep"), []byte(`kernel/fs/squashfs/squashfs.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/fs/fuse/fuse-ext.ko:
`), 0o644)
	os.WriteFile(filepath.Join(md, "modules.builtin"), []byte("kernel/drivers/block/loop.ko\n"), 0o644)
	return dir
}

func names(ms []Module) string {
	var n []string
	for _, m := range ms {
		n = append(n, m.Name)
	}
	return strings.Join(n, " ")
}

func TestResolveLoadsDependenciesFirst(t *testing.T) {
	k, err := Find(fakeTree(t))
	if err != nil {
		t.Fatal(err)
	}
	ms, err := k.Resolve([]string{"virtio-net", "br_netfilter", "squashfs", "loop", "virtio_ring"})
	if err != nil {
		t.Fatal(err)
	}
	want := "failover net_failover virtio_ring virtio virtio_net llc stp bridge br_netfilter squashfs"
	if got := names(ms); got != want {
		t.Errorf("load order\n got %s\nwant %s", got, want)
	}
	if ms[0].Path != "lib/modules/6.1.0-test/kernel/net/core/failover.ko" {
		t.Errorf("path %s", ms[0].Path)
	}
}

func TestResolveNamesUnknownModules(t *testing.T) {
	k, _ := Find(fakeTree(t))
	_, err := k.Resolve([]string{"squashfs", "nosuch", "zfs"})
	if err == nil || !strings.Contains(err.Error(), "no module nosuch, zfs") {
		t.Fatalf("err = %v", err)
	}
}

func TestFindNeedsExactlyOneKernel(t *testing.T) {
	dir := fakeTree(t)
	// A stray file beside the kernel is not a second kernel...
	os.WriteFile(filepath.Join(dir, "boot", "vmlinuz-6.1.0-test.sha256"), nil, 0o644)
	if k, err := Find(dir); err != nil || k.Version != "6.1.0-test" {
		t.Fatalf("Find with a stray file: %v, %v", k, err)
	}
	// ...but a second kernel with its modules is.
	os.WriteFile(filepath.Join(dir, "boot", "vmlinuz-6.2"), nil, 0o644)
	os.MkdirAll(filepath.Join(dir, "lib", "modules", "6.2"), 0o755)
	if _, err := Find(dir); err == nil || !strings.Contains(err.Error(), "2 kernels") {
		t.Fatalf("err = %v", err)
	}
	if _, err := Find(t.TempDir()); err == nil {
		t.Fatal("an empty tree has a kernel")
	}
}

func TestResolveOnDebianKernel(t *testing.T) {
	fx := os.Getenv("PLINTH_FIXTURES")
	if fx == "" {
		home, _ := os.UserHomeDir()
		fx = filepath.Join(home, ".cache", "plinth", "fixtures")
	}
	k, err := Find(filepath.Join(fx, "kernel"))
	if err != nil {
		t.Skipf("no Debian kernel fixture (make fixtures): %v", err)
	}
	ms, err := k.Resolve([]string{"virtio_net", "squashfs", "overlay", "vxlan", "br_netfilter"})
	if err != nil {
		t.Fatal(err)
	}
	got := " " + names(ms) + " "
	for _, want := range []string{" failover net_failover ", " udp_tunnel ", " llc stp bridge br_netfilter "} {
		if !strings.Contains(got, want) {
			t.Errorf("load order %q lacks %q", got, want)
		}
	}
	for _, m := range ms {
		if _, err := os.Stat(filepath.Join(k.Tree, m.Path)); err != nil {
			t.Errorf("%s: %v", m.Name, err)
		}
	}
}
