package lab

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/lab/netlab"
)

// TestClientInWaitsAsLongAsItsContextAllows: `plinth qemu logs --fresh 45s`
// asks the server to wait for the machine's journal; the lab's client
// must not give up before the request's context does (it gave up at 10 s).
func TestClientInWaitsAsLongAsItsContextAllows(t *testing.T) {
	netlab.Require(t)
	l, err := New(t.Context(), "slow", "10.79.0.1/24", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var ln net.Listener
	if err := l.nl.Do(func() (err error) { ln, err = net.Listen("tcp", l.Server+":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(11 * time.Second)
		io.WriteString(w, "journal")
	}))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+l.Server+":8080/", nil)
	resp, err := ClientIn(l.Name()).Do(req)
	if err != nil {
		t.Fatalf("a reply after 11 s within a 30 s context: %v", err)
	}
	defer resp.Body.Close()
	if b, _ := io.ReadAll(resp.Body); string(b) != "journal" {
		t.Errorf("body %q", b)
	}
	// Lab.Get keeps its own bound.
	if _, err := l.Get(t.Context(), "http://"+l.Server+":8080/"); err == nil {
		t.Error("Lab.Get waited past its 10 s")
	}
}
