package stage1

import (
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/bootserver/api"
)

const digestA = "sha256:" + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

func TestParseParamsCommandLineWinsOverInitramfsDefaults(t *testing.T) {
	p, err := ParseParams("plinth.server=http://a:1/ plinth.machine=m1 plinth.rootfs="+digestA+" plinth.rescue=1",
		"plinth.machine=m2 plinth.rescue=0 plinth.iface=52:54:00:00:00:01")
	if err != nil {
		t.Fatal(err)
	}
	want := Params{Server: "http://a:1", Machine: "m2", Rootfs: digestA, Iface: "52:54:00:00:00:01", Init: "/sbin/init", Reboot: DefaultReboot}
	if p != want {
		t.Errorf("params %+v, want %+v", p, want)
	}
}

func TestParseParamsRefusesWhatCannotBoot(t *testing.T) {
	for _, tc := range []struct{ cmdline, want string }{
		{"plinth.server=http://a plinth.rootfs=" + digestA, "plinth.machine is not"},
		{"plinth.server=http://a plinth.machine=m", "must be pinned by digest"},
		{"plinth.server=ftp://a plinth.machine=m plinth.rootfs=" + digestA, "want an http"},
		{"plinth.rootfs=sha256:XYZ", "plinth.rootfs"},
		{"plinth.rootfs=md5:" + strings.Repeat("a", 64), "plinth.rootfs"},
		{"plinth.init=sbin/init", "absolute"},
		{"plinth.server=http://a plinth.machine=../x plinth.rootfs=" + digestA, "plinth.machine"},
		{"plinth.server=http://a plinth.machine=m plinth.rootfs=" + digestA + " plinth.ca=deadbeef", "plinth.ca"},
		{"plinth.server=http://a plinth.machine=m plinth.rootfs=" + digestA + " plinth.tls=http://a:8443", "want an https"},
		{"plinth.tls=https://a:8443", "plinth.server is not"},
	} {
		if _, err := ParseParams("", tc.cmdline); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want %q", tc.cmdline, err, tc.want)
		}
	}
}

func TestParseParamsKeepsRescueWhenTheRestIsWrong(t *testing.T) {
	p, err := ParseParams("", "plinth.server=http://a plinth.rescue=1")
	if err == nil || !p.Rescue {
		t.Errorf("err %v, rescue %v: a broken command line must still honour plinth.rescue", err, p.Rescue)
	}
}

func TestCheckDigest(t *testing.T) {
	for d, ok := range map[string]bool{
		digestA:                             true,
		"sha256:" + strings.Repeat("A", 64): false,
		"sha256:" + strings.Repeat("a", 63): false,
		strings.Repeat("a", 64):             false,
		"":                                  false,
	} {
		if err := CheckDigest(d); (err == nil) != ok {
			t.Errorf("CheckDigest(%q) = %v, want ok=%v", d, err, ok)
		}
	}
}

func FuzzParseParams(f *testing.F) {
	f.Add("", "console=ttyS0 plinth.server=http://10.0.0.1 plinth.machine=a plinth.rootfs="+digestA)
	f.Add("plinth.server=https://b", `a="b c" "d=e" =f plinth.rescue`)
	f.Add(`"`, `x="`)
	f.Add("", `a"b c"=d`) // found by fuzzing: a quote inside a key let a blank into it
	f.Fuzz(func(t *testing.T, defaults, cmdline string) {
		for k := range api.ParseCmdline(cmdline) {
			if k == "" || strings.ContainsAny(k, " \t\n") {
				t.Fatalf("key %q from %q", k, cmdline)
			}
		}
		p, err := ParseParams(defaults, cmdline)
		if err != nil {
			return
		}
		if p.Server != "" && (p.Machine == "" || CheckDigest(p.Rootfs) != nil) {
			t.Fatalf("accepted netboot without machine or digest: %+v", p)
		}
		if !strings.HasPrefix(p.Init, "/") || strings.ContainsAny(p.Machine, "/?# %") {
			t.Fatalf("accepted %+v", p)
		}
	})
}

func TestReadModuleListKeepsOrderAndSkipsComments(t *testing.T) {
	got, err := ReadModuleList([]byte("# virtio first\nlib/modules/6.1/kernel/drivers/virtio/virtio.ko\n\n/lib/modules/6.1/kernel/fs/squashfs/squashfs.ko.xz\n  lib/modules/6.1/kernel/fs/overlayfs/overlay.ko  \n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/lib/modules/6.1/kernel/drivers/virtio/virtio.ko", "/lib/modules/6.1/kernel/fs/squashfs/squashfs.ko.xz", "/lib/modules/6.1/kernel/fs/overlayfs/overlay.ko"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, bad := range []string{"lib/modules/../../etc/shadow.ko\n", "lib/modules/x.txt\n"} {
		if _, err := ReadModuleList([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
