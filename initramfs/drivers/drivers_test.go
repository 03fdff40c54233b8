package drivers

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

var sample = &Index{Drivers: []Driver{
	{Name: "e1000e", Load: []string{"lib/modules/6.1/kernel/e1000e.ko"}, Aliases: []string{"pci:v00008086d000010D3sv*sd*bc*sc*i*"}},
	{Name: "r8169", Load: []string{"lib/modules/6.1/kernel/libphy.ko", "lib/modules/6.1/kernel/realtek.ko", "lib/modules/6.1/kernel/r8169.ko"},
		Aliases: []string{"pci:v000010ECd00008168sv*sd*bc*sc*i*", "pci:v000010ECd00008161sv*sd*bc*sc*i*"}},
	{Name: "virtio_net", Load: []string{"lib/modules/6.1/kernel/virtio_net.ko"}, Aliases: []string{"virtio:d00000001v*"}},
}}

func TestWriteParseRoundTrip(t *testing.T) {
	var b bytes.Buffer
	if err := sample.Write(&b); err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, sample) {
		t.Errorf("round trip\n got %+v\nwant %+v", got, sample)
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct{ modalias, want string }{
		// QEMU's e1000e (82574L, 8086:10d3).
		{"pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00", "e1000e"},
		{"pci:v000010ECd00008168sv00001043sd00008554bc02sc00i00", "r8169"},
		{"virtio:d00000001v00001AF4", "virtio_net"},
		{"pci:v00008086d00001234sv00008086sd00000000bc02sc00i00", ""},
		{"", ""},
	} {
		var names []string
		for _, d := range sample.Match(tc.modalias) {
			names = append(names, d.Name)
		}
		if got := strings.Join(names, " "); got != tc.want {
			t.Errorf("Match(%q) = %q, want %q", tc.modalias, got, tc.want)
		}
	}
}

func TestParseErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"load a.ko\n", ":1: load before any driver"},
		{"# c\ndriver x\nload /abs.ko\n", ":3: load \"/abs.ko\""},
		{"driver x\nload ../up.ko\n", ":2:"},
		{"driver x\nalias [bad\n", ":2: alias"},
		{"driver a/b\n", ":1: driver"},
		{"driver x\nmodprobe y\n", ":2: unknown directive"},
	} {
		_, err := Parse([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), File) {
			t.Errorf("Parse(%q) = %v, want an error naming %s and %q", tc.in, err, File, tc.want)
		}
	}
	if err := (&Index{Drivers: []Driver{{Name: "x", Load: []string{"a b.ko"}}}}).Write(&bytes.Buffer{}); err == nil {
		t.Errorf("Write of a path with a space: no error")
	}
}

func FuzzParse(f *testing.F) {
	var b bytes.Buffer
	sample.Write(&b)
	f.Add(b.Bytes())
	f.Add([]byte("driver x\nalias *\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		ix, err := Parse(in)
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := ix.Write(&out); err != nil {
			t.Fatalf("a parsed index does not write: %v", err)
		}
		again, err := Parse(out.Bytes())
		if err != nil || !reflect.DeepEqual(again, ix) {
			t.Fatalf("written index reads back as %+v, %v; was %+v", again, err, ix)
		}
		ix.Match("pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00")
	})
}
