// Command bench compares plinth serve with nginx on loopback: the same
// 100 MB artifact fetched by 200 and 500 concurrent clients (wrk), and the
// p99 latency of plinth's iPXE script endpoint under the same load. It needs
// Debian's nginx and wrk (make bench-serve installs them) and prints figures.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/plinth-dev/plinth/bootserver"
	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/manifest"
)

func main() {
	dur := flag.Duration("d", 10*time.Second, "duration of each wrk run")
	size := flag.Int("mb", 100, "artifact size in MB")
	repeat := flag.Int("n", 3, "runs of each case (plinth and nginx alternate)")
	flag.Parse()
	if err := run(*dur, *size, *repeat); err != nil {
		log.Fatal(err)
	}
}

func run(dur time.Duration, sizeMB, repeat int) error {
	dir, err := os.MkdirTemp("", "plinth-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// nginx's workers run unprivileged: let them read the artifact.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	img := filepath.Join(dir, "artifacts", "bench")
	if err := writeImage(img, sizeMB); err != nil {
		return err
	}
	m, err := manifest.Read(img)
	if err != nil {
		return err
	}
	site := filepath.Join(dir, "site")
	if err := os.MkdirAll(site, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(site, "site.toml"), []byte("[site]\nname = \"bench\"\n[[machine]]\nname = \"m1\"\nmac = \"52:54:00:00:00:01\"\nimage = \"bench\"\n"), 0o644); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	plinthURL := "http://" + ln.Addr().String()
	srv, err := bootserver.New(bootserver.Config{SiteDir: site, ArtifactsDir: filepath.Join(dir, "artifacts"), PublicURL: plinthURL})
	if err != nil {
		return err
	}
	// The real server, with its connection limits, as plinth serve runs it.
	sctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { _ = srv.Serve(sctx, ln, nil) }()

	nport := freePort()
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`daemon off;
worker_processes auto;
pid %s/nginx.pid;
error_log %s/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  server { listen 127.0.0.1:%d; root %s; }
}
`, dir, dir, nport, img)), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	ng := exec.CommandContext(ctx, "nginx", "-c", conf, "-p", dir)
	ng.Stderr = os.Stderr
	// SIGTERM lets nginx's master take its workers down with it.
	ng.Cancel = func() error { return ng.Process.Signal(syscall.SIGTERM) }
	if err := ng.Start(); err != nil {
		cancel()
		return fmt.Errorf("nginx (apt-get install nginx-light): %w", err)
	}
	defer func() { cancel(); _ = ng.Wait() }()
	time.Sleep(500 * time.Millisecond)
	hexd := strings.TrimPrefix(m.File(manifest.Rootfs).SHA256, "sha256:")
	fmt.Printf("artifact %d MB, wrk %s per run, %d runs per case, loopback, %d cores\n", sizeMB, dur, repeat, runtime.NumCPU())
	for _, c := range []int{200, 500} {
		var ratios []float64
		for i := range repeat {
			p, err := wrk(dur, c, plinthURL+api.ArtifactPath(hexd))
			if err != nil {
				return err
			}
			n, err := wrk(dur, c, fmt.Sprintf("http://127.0.0.1:%d/%s", nport, manifest.Rootfs))
			if err != nil {
				return err
			}
			ratios = append(ratios, p.mbps/n.mbps)
			fmt.Printf("%d clients, run %d: plinth %.0f MB/s, nginx %.0f MB/s, ratio %.2f\n", c, i+1, p.mbps, n.mbps, p.mbps/n.mbps)
		}
		slices.Sort(ratios)
		fmt.Printf("%d clients: ratio plinth/nginx min %.2f median %.2f max %.2f\n", c, ratios[0], ratios[len(ratios)/2], ratios[len(ratios)-1])
		s, err := wrk(dur, c, plinthURL+"/boot.ipxe?mac=52:54:00:00:00:01")
		if err != nil {
			return err
		}
		fmt.Printf("%d clients: boot.ipxe %.0f req/s, p99 %s\n", c, s.rps, s.p99)
	}
	return nil
}

type result struct {
	mbps, rps float64
	p99       string
}

var (
	transferRE = regexp.MustCompile(`Transfer/sec:\s+([\d.]+)([KMG]?B)`)
	rpsRE      = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	p99RE      = regexp.MustCompile(`\s99%\s+(\S+)`)
)

func wrk(d time.Duration, conns int, url string) (result, error) {
	out, err := exec.Command("wrk", "-t2", fmt.Sprintf("-c%d", conns), "-d"+d.String(), "--latency", url).CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("wrk (apt-get install wrk): %v: %s", err, out)
	}
	if strings.Contains(string(out), "Non-2xx or 3xx responses") {
		return result{}, fmt.Errorf("wrk %s: errors in the responses:\n%s", url, out)
	}
	var r result
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		l := sc.Text()
		if m := transferRE.FindStringSubmatch(l); m != nil {
			var v float64
			fmt.Sscan(m[1], &v)
			switch m[2] {
			case "GB":
				v *= 1024
			case "KB":
				v /= 1024
			case "B":
				v /= 1 << 20
			}
			r.mbps = v
		}
		if m := rpsRE.FindStringSubmatch(l); m != nil {
			fmt.Sscan(m[1], &r.rps)
		}
		if m := p99RE.FindStringSubmatch(l); m != nil {
			r.p99 = m[1]
		}
	}
	return r, nil
}

func freePort() int {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// writeImage makes an image directory: a random rootfs of sizeMB and a
// manifest with real digests.
func writeImage(img string, sizeMB int) error {
	if err := os.MkdirAll(img, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(img, manifest.Rootfs))
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for i := 0; i < sizeMB; i++ {
		rand.Read(buf)
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	for _, n := range []string{manifest.KernelFile, manifest.Initramfs} {
		if err := os.WriteFile(filepath.Join(img, n), []byte(n), 0o644); err != nil {
			return err
		}
	}
	m := &manifest.Manifest{Schema: manifest.Schema, Name: "bench", Cmdline: "console=ttyS0"}
	for _, n := range []string{manifest.KernelFile, manifest.Initramfs, manifest.Rootfs} {
		d, sz, err := manifest.FileDigest(filepath.Join(img, n))
		if err != nil {
			return err
		}
		m.Files = append(m.Files, manifest.File{Name: n, SHA256: d, Size: sz})
	}
	b, err := m.Encode()
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(img, manifest.FileName), b, 0o644)
}
