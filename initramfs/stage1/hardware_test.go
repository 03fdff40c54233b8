package stage1

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const testIndex = `# test
driver e1000e
load lib/modules/6.1/e1000e.ko
alias pci:v00008086d000010D3sv*sd*bc*sc*i*
driver virtio_pci
load lib/modules/6.1/virtio.ko
load lib/modules/6.1/virtio_pci.ko
alias pci:v00001AF4d*sv*sd*bc*sc*i*
driver virtio_net
load lib/modules/6.1/virtio.ko
load lib/modules/6.1/virtio_net.ko
alias virtio:d00000001v*
driver ixgbe
load lib/modules/6.1/ixgbe.ko
alias pci:v00008086d000010FBsv*sd*bc*sc*i*
driver r8169
load lib/modules/6.1/crc32c_intel.ko
load lib/modules/6.1/r8169.ko
alias pci:v000010ECd00008168sv*sd*bc*sc*i*
`

// A machine with an e1000e, a virtio NIC (its virtio device appears only
// once virtio_pci is loaded) and a Realtek NIC whose soft dependency does
// not fit the CPU: each driver loads once, what is not there does not.
func TestDriversLoadByHardwareInRounds(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"etc/plinth/modules":                           "lib/modules/6.1/squashfs.ko\n",
		"etc/plinth/drivers":                           testIndex,
		"sys/devices/pci0000:00/0000:00:02.0/modalias": "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00\n",
		"sys/devices/pci0000:00/0000:00:03.0/modalias": "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n",
		"sys/devices/pci0000:00/0000:00:04.0/modalias": "pci:v000010ECd00008168sv00001043sd00008554bc02sc00i00\n",
		"sys/devices/platform/serial8250/modalias":     "platform:serial8250\n",
	})
	m := &fakeMachine{onLoad: func(p string) error {
		switch p {
		case "/lib/modules/6.1/virtio_pci.ko":
			d := filepath.Join(dir, "sys/devices/pci0000:00/0000:00:03.0/virtio0")
			os.MkdirAll(d, 0o755)
			return os.WriteFile(filepath.Join(d, "modalias"), []byte("virtio:d00000001v00001AF4\n"), 0o644)
		case "/lib/modules/6.1/crc32c_intel.ko":
			return fmt.Errorf("finit_module: %w", syscall.ENODEV)
		}
		return nil
	}}
	s, out := newStage1(t, m, dir)
	if err := s.modules(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(m.loaded, " ")
	want := "/lib/modules/6.1/squashfs.ko /lib/modules/6.1/e1000e.ko /lib/modules/6.1/virtio.ko /lib/modules/6.1/virtio_pci.ko /lib/modules/6.1/r8169.ko /lib/modules/6.1/virtio_net.ko"
	if got != want {
		t.Errorf("loaded\n got %s\nwant %s", got, want)
	}
	if !strings.Contains(out.String(), "hardware: 5 devices, drivers e1000e, r8169, virtio_net, virtio_pci (3 rounds") {
		t.Errorf("console:\n%s", out)
	}
	if strings.Contains(out.String(), "FAILED") || strings.Contains(out.String(), "ixgbe") {
		t.Errorf("a driver not for this machine is not a failure, one for hardware it lacks is not loaded:\n%s", out)
	}
}

func TestDriversBadIndexIsReportedAndBootGoesOn(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"etc/plinth/modules": "lib/modules/6.1/squashfs.ko\n",
		"etc/plinth/drivers": "driver x\nload /abs.ko\n",
	})
	m := &fakeMachine{}
	s, out := newStage1(t, m, dir)
	if err := s.modules(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "FAILED drivers by hardware: /etc/plinth/drivers:2:") || len(m.loaded) != 1 {
		t.Errorf("loaded %v; console:\n%s", m.loaded, out)
	}
}

// The real /sys of the build host: every modalias read, none twice.
func TestScanModaliasesOnThisHost(t *testing.T) {
	as, err := ScanModaliases(os.DirFS("/"))
	if err != nil {
		t.Skipf("no /sys/devices here: %v", err)
	}
	seen := map[string]bool{}
	for _, a := range as {
		if seen[a] || a == "" {
			t.Errorf("%q twice or empty", a)
		}
		seen[a] = true
	}
	t.Logf("%d distinct modaliases", len(as))
}

// A profile with a bond and a VLAN gets bonding (with max_bonds=0) and
// 8021q from the initramfs by name; one the initramfs lacks is named on
// the console.
func TestLoadByName(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"etc/plinth/drivers": "driver bonding\nload lib/modules/6.1/bonding.ko\nalias rtnl-link-bond\ndriver 8021q\nload lib/modules/6.1/garp.ko\nload lib/modules/6.1/8021q.ko\n",
	})
	m := &fakeMachine{}
	s, out := newStage1(t, m, dir)
	s.loadByName(context.Background(), "config", "bonding", "8021q", "macvlan")
	if got := strings.Join(m.loaded, " "); got != "/lib/modules/6.1/bonding.ko /lib/modules/6.1/garp.ko /lib/modules/6.1/8021q.ko" {
		t.Errorf("loaded %s", got)
	}
	// bonding without max_bonds=0 makes a round-robin bond0 of its own,
	// which networkd then keeps as it is (seen in the lab).
	if got := m.params["/lib/modules/6.1/bonding.ko"]; got != "max_bonds=0" {
		t.Errorf("bonding loaded with %q, want max_bonds=0", got)
	}
	if !strings.Contains(out.String(), "FAILED: macvlan is not in this initramfs") {
		t.Errorf("console:\n%s", out)
	}
}
