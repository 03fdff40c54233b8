package node

import (
	"strings"
	"testing"
)

// TestDecodeRefusesWhatTheMachineCannotFullyApply: a profile from a boot
// server of another schema, with a field this image does not know, or
// with trailing data is refused with the reason, not partly applied.
func TestDecodeRefusesWhatTheMachineCannotFullyApply(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{`{"version":1,"hostname":"n1"}`, ""},
		{`{"hostname":"n1"}`, "schema version 0, this image reads 1"},
		{`{"version":2,"hostname":"n1"}`, "schema version 2, this image reads 1"},
		{`{"version":1,"hostname":"n1","files":[{"path":"/etc/motd"}]}`, `unknown field "files"`},
		{`{"version":1,"hostname":"n1","cluster":{"name":"c","etcd":"x"}}`, `unknown field "etcd"`},
		{`{"version":1,"hostname":"n1"} {"version":1}`, "more than one document"},
		{`{"version":1,"hostname":"Bad_Name"}`, `hostname "Bad_Name"`},
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
