package firstboot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/initramfs/stage1/events"
	"github.com/plinth-dev/plinth/internal/fsutil"
	"github.com/plinth-dev/plinth/profiles/node"
)

// Steps are the subcommands of plinth-agent this package provides.
var Steps = map[string]func(ctx context.Context, log *slog.Logger, args []string) error{
	"etcd-join":      etcdJoin,
	"etcd-promote":   etcdPromote,
	"state-disk":     stateDisk,
	"flannel-config": flannelConfig,
	"flannel-net":    flannelNet,
	"import-images":  importImages,
	"wait-api":       waitAPI,
}

// waitsForever are the steps that wait for as long as it takes, saying
// why: an etcd member that must not found a cluster waits for the others
// (or a restore); a learner is promoted whenever it has caught up; the
// controller manager and the scheduler start once their API server serves;
// the image import limits each archive instead (importLimit).
var waitsForever = map[string]bool{"etcd-join": true, "etcd-promote": true, "wait-api": true, "import-images": true}

// retry runs f until it succeeds or ctx ends, pausing between tries.
func retry(ctx context.Context, log *slog.Logger, what string, every time.Duration, f func() error) error {
	for i := 1; ; i++ {
		err := f()
		if err == nil {
			return nil
		}
		log.Info("not yet", "step", what, "try", i, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(every):
		}
	}
}

// postEvent tells the boot server (when the profile names one) what a
// step decided, best effort: a step never fails because the operator's
// screen is unreachable.
func postEvent(ctx context.Context, log *slog.Logger, cfg *node.Config, stage, msg string) {
	if cfg.Cluster == nil || cfg.Cluster.BootServer == "" {
		return
	}
	p, err := MachinePoster(cfg, events.Poster{Timeout: 10 * time.Second})
	if err != nil {
		log.Warn("report", "err", err)
	}
	if err := p.Send(ctx, api.Event{Stage: stage, Message: msg}); err != nil {
		log.Warn("event not posted", "stage", stage, "err", err)
	}
}

// ReportFiles are this machine's certificate, key and site CA, as its
// reports to the boot server use them.
var ReportFiles = events.TLSFiles{CA: role.CAFile, Cert: role.NodeCert, Key: role.NodeKey}

// MachinePoster is p set up to report as this machine: with its own
// certificate to the profile's ReportURL, else with the boot's token (from
// the kernel command line) to its boot server.
func MachinePoster(cfg *node.Config, p events.Poster) (events.Poster, error) {
	cmdline, _ := os.ReadFile("/proc/cmdline")
	params := api.ParseCmdline(string(cmdline))
	files := ReportFiles
	files.Pin = params[api.ParamCA]
	return p.ForMachine(cfg, files, params[api.ParamToken])
}

func loadConfig() (*node.Config, error) {
	b, err := os.ReadFile(role.ConfigPath)
	if err != nil {
		return nil, err
	}
	return node.Decode(b)
}

// writeAtomic writes a file by rename, so a reader never sees half of it.
func writeAtomic(path, data string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, []byte(data), mode)
}

func flannelConfig(ctx context.Context, log *slog.Logger, _ []string) error {
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	want, err := FlannelNetConfig(cfg.Cluster)
	if err != nil {
		return err
	}
	e, err := EtcdAs(node.IdentityEtcdFlannel)
	if err != nil {
		return err
	}
	key := role.FlannelPrefix + "/config"
	return retry(ctx, log, "flannel-config", 5*time.Second, func() error {
		have, set, err := e.PutIfAbsent(ctx, EtcdEndpoints(cfg.Cluster), key, want)
		if err != nil {
			return err
		}
		switch {
		case set:
			log.Info("flannel network config written", "key", key, "value", want)
		case have != want:
			log.Warn("flannel network config in etcd differs from the site's; flanneld uses etcd's", "key", key, "etcd", have, "site", want)
		default:
			log.Info("flannel network config already in etcd", "key", key)
		}
		return nil
	})
}

func flannelNet(ctx context.Context, log *slog.Logger, _ []string) error {
	var sn Subnet
	err := retry(ctx, log, "flannel-net", 2*time.Second, func() error {
		b, err := os.ReadFile(role.FlannelSubnetFile)
		if err != nil {
			return err
		}
		sn, err = ParseSubnetEnv(string(b))
		return err
	})
	if err != nil {
		return err
	}
	s := SplitSubnet(sn)
	if err := writeAtomic(role.DockerConfig, s.DockerJSON(), 0o644); err != nil {
		return err
	}
	if err := writeAtomic(role.CNIConfig, s.CNIConflist(), 0o644); err != nil {
		return err
	}
	log.Info("node subnet split", "flannel", sn.Subnet, "docker", s.Docker, "pods", s.Pods, "mtu", s.MTU)
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	return serviceRoute(log, cfg)
}

func importImages(ctx context.Context, log *slog.Logger, args []string) error {
	if len(args) != 1 {
		return errors.New("usage: plinth-agent import-images DIR")
	}
	tars, err := filepath.Glob(filepath.Join(args[0], "*.tar"))
	if err != nil {
		return err
	}
	// ctr reads the archive from us, so the step knows how far it is.
	ctr := func(ctx context.Context, t string, read *atomic.Int64) error {
		f, err := os.Open(t)
		if err != nil {
			return err
		}
		defer f.Close()
		read.Store(0)
		cmd := exec.CommandContext(ctx, "ctr", "-n", "k8s.io", "images", "import", "-")
		cmd.Stdin = &countingReader{f, read}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("ctr images import %s: %v: %s", t, err, out)
		}
		return nil
	}
	// systemd keeps the unit's status line; the agent shows it while the
	// unit is starting.
	status := func(s string) { _, _ = daemon.SdNotify(false, "STATUS="+s) }
	return importArchives(ctx, log, tars, ctr, status, importLimit, 30*time.Second)
}

// importLimit is how long one archive may take to import: long enough for
// emulation (the conformance minions' 100 MiB archive took 10.5 minutes,
// 2 reading it and the rest unpacking, four machines on two host cores),
// short enough that a hung ctr fails the unit. The whole step has no limit:
// a machine may carry several archives.
const importLimit = 30 * time.Minute

// countingReader counts what is read through it.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// importArchives imports each archive with imp, which counts in read what
// it has read of it, within limit each. It says which archive, how many
// there are and how big before each, and every tick how much is read and
// for how long: minutes of import are visibly work going on, and the
// line changes (what the lab's stall check looks for).
func importArchives(ctx context.Context, log *slog.Logger, tars []string, imp func(context.Context, string, *atomic.Int64) error,
	status func(string), limit, tick time.Duration) error {
	mib := func(n int64) int64 { return (n + 1<<20 - 1) >> 20 }
	for i, t := range tars {
		var size int64 = -1
		if st, err := os.Stat(t); err == nil {
			size = st.Size()
		}
		what := fmt.Sprintf("importing %s (%d of %d, %d MiB)", filepath.Base(t), i+1, len(tars), mib(size))
		status(what)
		var read atomic.Int64
		start := time.Now()
		actx, cancel := context.WithTimeout(ctx, limit)
		done := make(chan struct{})
		go func() {
			tk := time.NewTicker(tick)
			defer tk.Stop()
			for {
				select {
				case <-done:
					return
				case <-tk.C:
					r, took := read.Load(), time.Since(start).Round(time.Second)
					if r >= size {
						status(fmt.Sprintf("%s: read, unpacking, %s", what, took))
					} else {
						status(fmt.Sprintf("%s: %d MiB read, %s", what, mib(r), took))
					}
				}
			}
		}()
		err := retry(actx, log, "import "+filepath.Base(t), 2*time.Second, func() error { return imp(actx, t, &read) })
		close(done)
		cancel()
		if err != nil {
			return err
		}
		log.Info("image imported", "file", t, "took", time.Since(start).Round(time.Second))
	}
	status(fmt.Sprintf("imported %d archives", len(tars)))
	return nil
}

// Main runs one step; it is plinth-agent's entry for them.
func Main(name string, args []string, stderr io.Writer) int {
	f, ok := Steps[name]
	if !ok {
		fmt.Fprintf(stderr, "plinth-agent: no step %q\n", name)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("step", name)
	ctx, cancel := context.WithCancel(context.Background())
	if !waitsForever[name] {
		ctx, cancel = context.WithTimeout(context.Background(), 15*time.Minute)
	}
	defer cancel()
	if err := f(ctx, log, args); err != nil {
		log.Error("failed", "err", err)
		return 1
	}
	return 0
}

// waitAPI waits until the API server at the URL (this master's own) says
// /readyz "ok". The controller manager and the scheduler run it before
// they start (ExecStartPre): started beside a booting API server, each
// failed its first API call (a TLS handshake timing out on a starved
// machine), exited and was restarted, 22 times in one e2e boot at ~24 s of
// CPU each, CPU the API server needed to finish its post-start hooks
// within their 30 s (it exits when one does not, and starts over).
func waitAPI(ctx context.Context, log *slog.Logger, args []string) error {
	if len(args) != 1 {
		return errors.New("usage: plinth-agent wait-api URL")
	}
	c, err := TLSClient(role.CAFile, role.NodeCert, role.NodeKey)
	if err != nil {
		return err
	}
	return waitReady(ctx, log, c, args[0], 5*time.Second)
}

// waitReady asks base's /readyz every period until it answers 200 "ok".
func waitReady(ctx context.Context, log *slog.Logger, c *http.Client, base string, every time.Duration) error {
	url := strings.TrimSuffix(base, "/") + "/readyz"
	err := retry(ctx, log, "the API server ready at "+url, every, func() error {
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != "ok" {
			return fmt.Errorf("%s: %s", resp.Status, firstLine(string(b)))
		}
		return nil
	})
	if err == nil {
		log.Info("API server ready", "url", url)
	}
	return err
}

// firstLine is s up to its first newline.
func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return l
}
