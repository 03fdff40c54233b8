package node

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// TestDecodeRefusesWhatTheMachineCannotFullyApply: a profile from a boot
// server of another schema, with a field this image does not know, or
// with trailing data is refused with the reason, not partly applied.
func TestDecodeRefusesWhatTheMachineCannotFullyApply(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{`{"version":2,"hostname":"n1"}`, ""},
		{`{"hostname":"n1"}`, "schema version 0, this image reads 2"},
		{`{"version":1,"hostname":"n1"}`, "schema version 1, this image reads 2"},
		{`{"version":2,"hostname":"n1","files":[{"path":"/etc/motd"}]}`, `unknown field "files"`},
		{`{"version":2,"hostname":"n1","cluster":{"name":"c","etcd":"x"}}`, `unknown field "etcd"`},
		{`{"version":2,"hostname":"n1"} {"version":2}`, "more than one document"},
		{`{"version":2,"hostname":"Bad_Name"}`, `hostname "Bad_Name"`},
		// What stage 1 writes into systemd-networkd files cannot carry a
		// line break, a section or a path.
		{`{"version":2,"hostname":"n1","network":{"bonds":[{"name":"bond0\n[Network]","mode":"802.3ad","members":["eno1"]}]}}`, `bond name "bond0\n[Network]"`},
		{`{"version":2,"hostname":"n1","network":{"bonds":[{"name":"bond0","mode":"802.3ad","members":["../x"]}]}}`, `member "../x"`},
		{`{"version":2,"hostname":"n1","network":{"bonds":[{"name":"bond0","mode":"balance-rr","members":["eno1"]}]}}`, `mode "balance-rr"`},
		{`{"version":2,"hostname":"n1","network":{"vlans":[{"name":"v","link":"eno1","id":0}]}}`, `id 0`},
		{`{"version":2,"hostname":"n1","network":{"vlans":[{"name":"v","link":"eno1","id":7,"address":"10.0.0.1/24\nDNS=1.1.1.1"}]}}`, `want a CIDR`},
		{`{"version":2,"hostname":"n1","network":{"bonds":[{"name":"bond0","mode":"active-backup","members":["52:54:00:00:00:01","eno2"],"address":"dhcp"}],"vlans":[{"name":"bond0.7","link":"bond0","id":7}]}}`, ""},
	} {
		c, err := Decode([]byte(tc.doc))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.doc, err)
		case tc.want == "" && c.Hostname != "n1":
			t.Errorf("%s: decoded %+v", tc.doc, c)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error with %q", tc.doc, err, tc.want)
		}
	}
}

// FuzzDecode: what Decode accepts is valid, and what this tree writes for
// it (the boot server's encoding) decodes to the same document: a profile
// is never read one way by the server and another by the machine.
func FuzzDecode(f *testing.F) {
	f.Add(`{"version":2,"hostname":"n1"}`)
	f.Add(`{"version":2,"hostname":"n1","machine":"m","role":"master","network":{"address":"10.0.0.2/24"}}`)
	f.Add(`{"version":2,"hostname":"n1","state":{"disk":"serial:X","part_uuid":"00000000-0000-0000-0000-000000000000"}}`)
	f.Add(`{"version":2,"hostname":"n1","tls":{"ca":"x","cert":"","key":"","identities":{}}}`)
	f.Add(`{"version":2,"hostname":"n1"} {}`)
	f.Fuzz(func(t *testing.T, doc string) {
		c, err := Decode([]byte(doc))
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Decode accepted what Validate refuses: %v", err)
		}
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Decode(b)
		if err != nil {
			t.Fatalf("its own encoding is refused: %v\n%s", err, b)
		}
		b2, _ := json.Marshal(again)
		if !bytes.Equal(b, b2) {
			t.Fatalf("encode, decode, encode differs:\n%s\n%s", b, b2)
		}
	})
}
