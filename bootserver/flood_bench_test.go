package bootserver

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"

	"github.com/plinth-dev/plinth/bootserver/api"
)

// BenchmarkUnknownMACFlood measures what 100 000 boot-script requests
// with invented MACs leave in the server: the heap after them (MB, after
// a GC) and the machines listed. Run: go test -run '^$' -bench
// UnknownMACFlood ./bootserver/
func BenchmarkUnknownMACFlood(b *testing.B) {
	const flood = 100_000
	for b.Loop() {
		s, _ := fixture(b, "none")
		h := s.Handler()
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := range flood {
			r := httptest.NewRequest(http.MethodGet, fmt.Sprintf("%s?mac=02:%02x:%02x:%02x:00:00", api.PathBootScript, i>>16&0xff, i>>8&0xff, i&0xff), nil)
			h.ServeHTTP(httptest.NewRecorder(), r)
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/(1<<20), "heap-growth-MB")
		b.ReportMetric(float64(len(s.state.list())), "machines-listed")
	}
}
