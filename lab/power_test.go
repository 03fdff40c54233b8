package lab

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver"
	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/lab/qemu"
)

// fakeVM stands for a machine's QEMU: running until closed.
type fakeVM struct {
	cfg     qemu.Config
	started time.Time
	done    chan struct{}
	once    sync.Once
}

func (f *fakeVM) Exited() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

func (f *fakeVM) Close() error          { f.once.Do(func() { close(f.done) }); return nil }
func (f *fakeVM) Started() time.Time    { return f.started }
func (f *fakeVM) Uptime() time.Duration { return time.Since(f.started) }

const powerSite = `[site]
name   = "t"
domain = "t.example"

[state.etcd]
disk = "min-size:1GiB"

[[machine]]
name  = "etcd-1"
mac   = "52:54:00:00:01:01"
role  = "etcd"
image = "etcd"

[[machine]]
name  = "plain"
mac   = "52:54:00:00:01:02"
image = "plain"
`

// fakeCluster is a Cluster of powerSite whose VMs are fakes, each machine
// with a tap already made (the lab's network needs root).
func fakeCluster(t *testing.T) (*Cluster, *[]*fakeVM, *bytes.Buffer) {
	t.Helper()
	probe := qemu.ProbeKernel
	t.Cleanup(func() { qemu.ProbeKernel = probe })
	dir := t.TempDir()
	site := filepath.Join(dir, "site")
	if err := os.MkdirAll(site, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(site, "site.toml"), []byte(powerSite), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	logDir := filepath.Join(dir, "log")
	c := newCluster(Config{Site: site, Artifacts: dir, LogDir: logDir, Disks: DisksDir(logDir, ""), Out: &out})
	var vms []*fakeVM
	c.startVM = func(_ context.Context, cfg qemu.Config) (machineVM, error) {
		vm := &fakeVM{cfg: cfg, started: time.Now(), done: make(chan struct{})}
		vms = append(vms, vm)
		return vm, nil
	}
	for i, n := range []string{"etcd-1", "plain"} {
		c.taps[n] = "tap,ifname=tap" + string(rune('0'+i)) + ",script=no,downscript=no"
	}
	return c, &vms, &out
}

// TestKillReplaceDiskAndStartBringAMachineBackOnABlankDisk: the disk of
// a running machine is never swapped; a killed one comes back with its
// MAC and tap, on a new blank disk, its ready time measured afresh.
func TestKillReplaceDiskAndStartBringAMachineBackOnABlankDisk(t *testing.T) {
	c, vms, out := fakeCluster(t)
	ctx := t.Context()
	if err := c.Start(ctx, "etcd-1", "plain"); err != nil {
		t.Fatal(err)
	}
	disk := c.DiskPath("etcd-1")
	if want := filepath.Join(c.cfg.Disks, "etcd-1.raw"); disk != want {
		t.Fatalf("DiskPath %q, want %q", disk, want)
	}
	if c.DiskPath("plain") != "" {
		t.Errorf("plain has a disk: %q", c.DiskPath("plain"))
	}
	if !strings.Contains(out.String(), "created etcd-1.raw") {
		t.Errorf("output %q does not say the disk was created", out)
	}
	first := (*vms)[0]
	if d := first.cfg.Drives; !slices.Equal(d, []qemu.Drive{{Path: disk, Interface: qemu.DriveVirtio, Serial: "plinth-etcd-1"}}) {
		t.Errorf("etcd-1 started with drives %+v", d)
	}
	if d := (*vms)[1].cfg.Drives; len(d) != 0 {
		t.Errorf("plain started with drives %+v", d)
	}
	state := []byte("etcd-1's state")
	f, err := os.OpenFile(disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(state, 0)
	f.Close()
	os.WriteFile(filepath.Join(c.cfg.LogDir, "etcd-1.console.log"), []byte("first life"), 0o644)
	c.readyAt["etcd-1"], c.upAt["etcd-1"] = time.Second, time.Second

	if err := c.ReplaceDisk("etcd-1"); err == nil || !strings.Contains(err.Error(), "running") {
		t.Fatalf("ReplaceDisk of a running machine: %v", err)
	}
	if err := c.Start(ctx, "etcd-1"); err == nil || !strings.Contains(err.Error(), "running") {
		t.Fatalf("Start of a running machine: %v", err)
	}
	if !bytes.Equal(head(t, disk, len(state)), state) {
		t.Fatal("a running machine's disk changed")
	}

	if err := c.Kill("etcd-1"); err != nil {
		t.Fatal(err)
	}
	if !first.Exited() || (*vms)[1].Exited() {
		t.Fatalf("after Kill etcd-1: etcd-1 exited %v, plain exited %v", first.Exited(), (*vms)[1].Exited())
	}
	if err := c.ReplaceDisk("etcd-1"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(disk)
	if err != nil || fi.Size() != DefaultDiskSize {
		t.Fatalf("new disk: %v, %v", fi, err)
	}
	if b := head(t, disk, len(state)); !bytes.Equal(b, make([]byte, len(state))) {
		t.Errorf("the new disk is not blank: %q", b)
	}

	if err := c.Start(ctx, "etcd-1"); err != nil {
		t.Fatal(err)
	}
	second := c.vm("etcd-1")
	if second == machineVM(first) || len(*vms) != 3 {
		t.Fatal("the restarted machine kept its old VM")
	}
	if a, b := first.cfg, (*vms)[2].cfg; a.NICs[0] != b.NICs[0] || !slices.Equal(a.Drives, b.Drives) {
		t.Errorf("restarted with NIC %+v drives %+v, want %+v %+v", b.NICs, b.Drives, a.NICs, a.Drives)
	}
	if _, ok := c.ReadyAfter("etcd-1"); ok {
		t.Error("ReadyAfter still measures the killed machine's life")
	}
	if b, err := os.ReadFile(filepath.Join(c.cfg.LogDir, "etcd-1.console.1.log")); string(b) != "first life" {
		t.Errorf("the first life's console: %q, %v", b, err)
	}
	if c.Booted() != 2 {
		t.Errorf("Booted %d, want 2", c.Booted())
	}

	if err := c.PowerCut(); err != nil {
		t.Fatal(err)
	}
	for _, vm := range *vms {
		if !vm.Exited() {
			t.Errorf("%s still runs after the power cut", vm.cfg.Name)
		}
	}
	if err := c.Kill("etcd-1", "nobody"); err == nil || !strings.Contains(err.Error(), "nobody") {
		t.Errorf("Kill of a machine the lab never booted: %v", err)
	}
}

// head is the first n bytes of the file at p.
func head(t *testing.T, p string, n int) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestReplaceDiskOfAMachineWithoutOneFails: nothing to swap.
func TestReplaceDiskOfAMachineWithoutOneFails(t *testing.T) {
	c, _, _ := fakeCluster(t)
	if err := c.Start(t.Context(), "plain"); err != nil {
		t.Fatal(err)
	}
	c.Kill("plain")
	if err := c.ReplaceDisk("plain"); err == nil || !strings.Contains(err.Error(), "no state disk") {
		t.Errorf("error %v", err)
	}
}

// TestReadyFromBeforeARestartDoesNotCount: the server still shows a
// killed machine ready until its new boot asks for a boot script.
func TestReadyFromBeforeARestartDoesNotCount(t *testing.T) {
	vm := &fakeVM{started: time.Now()}
	for _, tt := range []struct {
		st   bootserver.MachineStatus
		want bool
	}{
		{bootserver.MachineStatus{State: api.StageReady, LastSeen: vm.started.Add(-time.Second)}, false},
		{bootserver.MachineStatus{State: api.StageKernel, LastSeen: vm.started.Add(time.Second)}, false},
		{bootserver.MachineStatus{State: api.StageReady, LastSeen: vm.started.Add(time.Second)}, true},
	} {
		if got := isReady(tt.st, vm); got != tt.want {
			t.Errorf("%s seen %s after the VM started: ready %v, want %v", tt.st.State, tt.st.LastSeen.Sub(vm.started), got, tt.want)
		}
	}
}
