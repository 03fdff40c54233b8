package builder

import (
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/images"
	"github.com/plinth-dev/plinth/internal/testutil"
)

// benchSpec stacks the Debian base fixture (~230 MB) and ~96 MB of
// incompressible files: a ~300 MB root file system.
func benchSpec(b *testing.B) (*images.Spec, int64) {
	b.Helper()
	needPacker(b)
	fx := os.Getenv("PLINTH_FIXTURES")
	if fx == "" {
		home, _ := os.UserHomeDir()
		fx = filepath.Join(home, ".cache", "plinth", "fixtures")
	}
	base := filepath.Join(fx, "oci")
	_, err := os.Stat(filepath.Join(base, "index.json"))
	testutil.Need(b, err == nil, "no Debian base fixture: make fixtures")
	dir := b.TempDir()
	rng := rand.New(rand.NewSource(1))
	var extra int64
	for i := 0; i < 48; i++ {
		buf := make([]byte, 2<<20)
		rng.Read(buf)
		p := filepath.Join(dir, "data", "opt", "blob", string(rune('a'+i%26))+string(rune('a'+i/26)))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, buf, 0o644)
		extra += int64(len(buf))
	}
	fi, _ := os.Stat(filepath.Join(fx, "debian-base.tar"))
	spec := filepath.Join(dir, "bench.toml")
	os.WriteFile(spec, []byte("name = \"bench\"\n[[layer]]\nsource = \"oci:"+base+":debian-base\"\n[[layer]]\nsource = \"dir:data\"\n"), 0o644)
	s, err := images.Load(spec)
	if err != nil {
		b.Fatal(err)
	}
	return s, fi.Size() + extra
}

// BenchmarkBuildCold builds the ~300 MB rootfs with an empty cache each time.
func BenchmarkBuildCold(b *testing.B) {
	s, size := benchSpec(b)
	b.SetBytes(size)
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()
		start := time.Now()
		if _, err := Build(context.Background(), s, Options{Out: filepath.Join(dir, "out"), CacheDir: filepath.Join(dir, "cache")}); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/build")
	}
}

// BenchmarkBuildNoop builds again with nothing changed.
func BenchmarkBuildNoop(b *testing.B) {
	s, size := benchSpec(b)
	dir := b.TempDir()
	o := Options{Out: filepath.Join(dir, "out"), CacheDir: filepath.Join(dir, "cache")}
	if _, err := Build(context.Background(), s, o); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := Build(context.Background(), s, o)
		if err != nil {
			b.Fatal(err)
		}
		if !r.UpToDate {
			b.Fatal("no-op build did work")
		}
	}
}
