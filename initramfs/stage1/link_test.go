package stage1

import "testing"

func TestChooseLink(t *testing.T) {
	eth0 := LinkState{Name: "eth0", MAC: "52:54:00:00:00:01", Physical: true}
	eth1 := LinkState{Name: "eth1", MAC: "52:54:00:ab:cd:02", Physical: true, Carrier: true}
	br := LinkState{Name: "br0", MAC: "52:54:00:00:00:03", Carrier: true}
	for _, tc := range []struct {
		name  string
		links []LinkState
		want  string
		pick  string
	}{
		{"first physical with carrier", []LinkState{br, eth0, eth1}, "", "eth1"},
		{"none with carrier yet", []LinkState{eth0, br}, "", ""},
		{"by name, carrier or not", []LinkState{eth0, eth1}, "eth0", "eth0"},
		{"by MAC", []LinkState{eth0, eth1}, "52:54:00:00:00:01", "eth0"},
		{"by MAC in upper case", []LinkState{eth0, eth1}, "52:54:00:AB:CD:02", "eth1"},
		{"by unknown MAC", []LinkState{eth0, eth1}, "52:54:00:00:00:09", ""},
		{"named but absent", []LinkState{eth1}, "eth9", ""},
		{"nothing", nil, "", ""},
	} {
		got, ok := ChooseLink(tc.links, tc.want)
		if ok != (tc.pick != "") || got.Name != tc.pick {
			t.Errorf("%s: got %q ok=%v, want %q", tc.name, got.Name, ok, tc.pick)
		}
	}
}

func TestBackoffDoublesUpToItsCap(t *testing.T) {
	b := Backoff{Initial: 500e6, Max: 10e9}
	want := []float64{0.5, 1, 2, 4, 8, 10, 10}
	for i, w := range want {
		if got := b.Delay(i).Seconds(); got != w {
			t.Errorf("Delay(%d) = %vs, want %vs", i, got, w)
		}
	}
	if got := b.Delay(1000); got != 10e9 {
		t.Errorf("Delay(1000) = %v: overflowed", got)
	}
	if got := (Backoff{}).Delay(0); got != 500e6 {
		t.Errorf("zero Backoff first delay %v", got)
	}
}
