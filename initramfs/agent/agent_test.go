package agent

import (
	"strings"
	"testing"
)

// Lines as a machine booted by plinth shows them (Debian 12, kernel 6.1).
const goodMountinfo = `22 1 0:20 / / rw,relatime - overlay overlay rw,lowerdir=/run/plinth/lower,upperdir=/run/plinth/rw/upper,workdir=/run/plinth/rw/work
23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=496000k,nr_inodes=124000,mode=755
26 22 0:22 / /run rw,nosuid - tmpfs tmpfs rw,mode=755
27 26 7:0 / /run/plinth/lower ro,relatime - squashfs /dev/loop0 ro,errors=continue
28 26 0:23 / /run/plinth/rw rw,relatime - tmpfs tmpfs rw,mode=755
29 22 0:24 / /mnt/with\040space rw - tmpfs tmpfs rw
`

func TestCheckMountsAcceptsOverlayOnReadOnlySquashfs(t *testing.T) {
	ms, err := ParseMountinfo(strings.NewReader(goodMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	if p := CheckMounts(ms); len(p) != 0 {
		t.Errorf("problems on a good machine: %v", p)
	}
	if last(ms, "/mnt/with space") == nil {
		t.Error("octal escapes not decoded")
	}
}

func TestCheckMountsNamesWhatIsWrong(t *testing.T) {
	for name, tc := range map[string]struct{ info, want string }{
		"root on ext4":   {strings.Replace(goodMountinfo, "- overlay overlay", "- ext4 /dev/vda1", 1), "/ is not an overlay"},
		"writable lower": {strings.Replace(goodMountinfo, "ro,relatime - squashfs /dev/loop0 ro,", "rw,relatime - squashfs /dev/loop0 rw,", 1), "not read-only"},
		"no lower":       {strings.Replace(goodMountinfo, "/run/plinth/lower ro", "/srv ro", 1), "no squashfs at /run/plinth/lower"},
	} {
		ms, err := ParseMountinfo(strings.NewReader(tc.info))
		if err != nil {
			t.Fatal(err)
		}
		if p := strings.Join(CheckMounts(ms), "; "); !strings.Contains(p, tc.want) {
			t.Errorf("%s: problems %q, want %q", name, p, tc.want)
		}
	}
}

func TestReportLine(t *testing.T) {
	r := Report{Host: "a", Role: "etcd", Services: map[string]string{"etcd": "active"}}
	if got := r.Line(); got != "plinth-agent: ready host=a role=etcd root=overlay lower=ro upper=rw services=etcd=active" {
		t.Errorf("line %q", got)
	}
	r.Problems = []string{"etcd is failed"}
	if got := r.Line(); !strings.HasPrefix(got, "plinth-agent: NOT READY host=a role=etcd: etcd is failed") {
		t.Errorf("line %q", got)
	}
}

func FuzzParseMountinfo(f *testing.F) {
	f.Add(goodMountinfo)
	f.Add("1 2 3 4 5 6 - x\n")
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := ParseMountinfo(strings.NewReader(s))
		if err == nil {
			_ = CheckMounts(ms)
		}
	})
}
