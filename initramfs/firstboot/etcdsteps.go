package firstboot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/initramfs/stage1/events"
	"github.com/plinth-dev/plinth/profiles/node"
)

// etcdJoin decides how this member starts (Join), restores a snapshot when
// that is the plan, and writes etcd's environment. What it decides, and
// what it waits for, is posted as an event each time it changes.
func etcdJoin(ctx context.Context, log *slog.Logger, _ []string) error {
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	e, err := EtcdAs(node.IdentityEtcdMember)
	if err != nil {
		return err
	}
	if err := mounted(role.EtcdDataDir); err != nil {
		// Looking at the directory under the mount would find no data
		// where the disk holds some.
		return err
	}
	hasData := HasEtcdData(role.EtcdDataDir)
	var plan JoinPlan
	said := ""
	for i := 1; ; i++ {
		plan, err = e.Join(ctx, cfg, hasData)
		if err == nil {
			break
		}
		if errors.Is(err, ErrWait) {
			// What the boot server knows may have changed while this
			// member waits: a restore it now offers, say.
			refreshCluster(ctx, log, cfg)
		}
		log.Info("not yet", "try", i, "err", err)
		if msg := err.Error(); errors.Is(err, ErrWait) && msg != said {
			postEvent(ctx, log, cfg, api.StageEtcd, msg)
			said = msg
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd-join: %w (last: %v)", ctx.Err(), err)
		case <-time.After(5 * time.Second):
		}
	}
	if plan.Restore {
		client, err := TLSClient(role.CAFile, role.NodeCert, role.NodeKey)
		if err != nil {
			return err
		}
		if err := restoreSnapshot(ctx, log, client, cfg); err != nil {
			postEvent(ctx, log, cfg, api.StageError, "etcd restore: "+err.Error())
			return err
		}
	}
	log.Info("etcd member", "state", plan.State, "initial_cluster", plan.Initial, "why", plan.Why)
	postEvent(ctx, log, cfg, api.StageEtcd, plan.Why)
	return writeAtomic(role.EtcdEnvFile, plan.Env(), 0o644)
}

// refreshCluster reads the site's etcd state (the cluster the boot server
// has seen, a snapshot it offers) from a fresh profile, keeping the rest
// of the one stage 1 applied. It asks over HTTPS with the machine's own
// certificate (what the server takes in place of an enrolment token for
// a profile without credentials), else over HTTP. Best effort: where the
// profile cannot be fetched again the old one stands.
func refreshCluster(ctx context.Context, log *slog.Logger, cfg *node.Config) {
	if cfg.Cluster == nil || cfg.Cluster.BootServer == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	url := strings.TrimRight(cfg.Cluster.BootServer, "/") + api.ProfilePath(cfg.Machine)
	client := http.DefaultClient
	if cfg.Cluster.ReportURL != "" {
		if c, err := events.BootServerClient(ReportFiles); err == nil {
			url, client = strings.TrimRight(cfg.Cluster.ReportURL, "/")+api.ProfilePath(cfg.Machine), c
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return
	}
	res, err := client.Do(req)
	if err != nil {
		log.Info("profile not refreshed", "err", err)
		return
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 4<<20))
	if err != nil || res.StatusCode != http.StatusOK {
		log.Info("profile not refreshed", "status", res.Status, "err", err)
		return
	}
	fresh, err := node.Decode(b)
	if err != nil || fresh.Cluster == nil {
		log.Info("profile not refreshed", "err", err)
		return
	}
	cfg.Cluster.EtcdClusterID = fresh.Cluster.EtcdClusterID
	cfg.Cluster.EtcdRestore = fresh.Cluster.EtcdRestore
}

// etcdPromote promotes this member once it has caught up, when it joined
// as a learner, then makes sure etcd's authorisation is set up
// (EnsureAuth).
func etcdPromote(ctx context.Context, log *slog.Logger, _ []string) error {
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	e, err := EtcdAs(node.IdentityEtcdMember)
	if err != nil {
		return err
	}
	var self *node.Member
	for i, m := range cfg.Cluster.EtcdMembers {
		if m.Name == cfg.Machine {
			self = &cfg.Cluster.EtcdMembers[i]
		}
	}
	if self == nil {
		return fmt.Errorf("machine %s is not among the site's etcd members", cfg.Machine)
	}
	// The others first: a learner answers no membership request.
	var eps []string
	for _, m := range cfg.Cluster.EtcdMembers {
		if m.Name != self.Name {
			eps = append(eps, role.ClientURL(m.Address))
		}
	}
	eps = append(eps, role.ClientURL(self.Address))
	start := time.Now()
	learner := false
	err = retry(ctx, log, "etcd-promote", 5*time.Second, func() error {
		ms, _, err := e.Members(ctx, eps)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.IsLearner && slices.Contains(m.PeerURLs, role.PeerURL(self.Address)) {
				learner = true
			}
		}
		_, err = e.PromoteSelf(ctx, eps, role.PeerURL(self.Address))
		return err
	})
	if err != nil {
		return err
	}
	if learner {
		msg := fmt.Sprintf("promoted from learner to voting member after %s", time.Since(start).Round(time.Second))
		log.Info(msg)
		postEvent(ctx, log, cfg, api.StageEtcd, msg)
	}
	// A voting member sets up who may do what in etcd (EnsureAuth).
	var did []string
	if err := retry(ctx, log, "etcd-auth", 5*time.Second, func() error {
		var err error
		did, err = e.EnsureAuth(ctx, eps)
		return err
	}); err != nil {
		return err
	}
	if len(did) > 0 {
		msg := "etcd authorisation set up: " + strings.Join(did, "; ")
		log.Info(msg)
		postEvent(ctx, log, cfg, api.StageEtcd, msg)
	}
	return nil
}

// restoreSnapshot fetches the profile's snapshot, checks its digest and
// restores it into the (empty) data directory with etcdutl, as this
// member of a new cluster of the profile's members. The revision is
// bumped and marked compacted, so watchers (the API servers) that saw a
// later revision of the lost cluster start over instead of waiting.
func restoreSnapshot(ctx context.Context, log *slog.Logger, client *http.Client, cfg *node.Config) error {
	r := cfg.Cluster.EtcdRestore
	var self node.Member
	var all []string
	for _, m := range cfg.Cluster.EtcdMembers {
		all = append(all, m.Name+"="+role.PeerURL(m.Address))
		if m.Name == cfg.Machine {
			self = m
		}
	}
	work := filepath.Join(role.EtcdDataDir, ".restore")
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	if err := os.MkdirAll(work, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(work)
	snap := filepath.Join(work, "snapshot.db")
	if err := download(ctx, client, r.URL, snap, r.SHA256); err != nil {
		return err
	}
	data := filepath.Join(work, "data")
	out, err := exec.CommandContext(ctx, "etcdutl", "snapshot", "restore", snap,
		"--name", self.Name, "--initial-cluster", strings.Join(all, ","),
		"--initial-cluster-token", role.EtcdClusterToken(cfg.Cluster),
		"--initial-advertise-peer-urls", role.PeerURL(self.Address),
		"--data-dir", data, "--bump-revision", "1000000000", "--mark-compacted").CombinedOutput()
	if err != nil {
		return fmt.Errorf("etcdutl snapshot restore: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if err := os.Rename(filepath.Join(data, "member"), filepath.Join(role.EtcdDataDir, "member")); err != nil {
		return err
	}
	log.Info("snapshot restored", "sha256", r.SHA256, "data_dir", role.EtcdDataDir)
	return nil
}

// download fetches url into path and checks its sha256.
func download(ctx context.Context, client *http.Client, url, path, want string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		return fmt.Errorf("GET %s: %s: %s", url, res.Status, strings.TrimSpace(string(b)))
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(f, h), res.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.ToLower(want) {
		return fmt.Errorf("GET %s: sha256 %s, the boot server said %s: refused", url, got, want)
	}
	return nil
}

// mounted checks that dir is a mount point (the state disk's bind mount or
// the tmpfs the role's units put there): it is on another device than its
// parent.
func mounted(dir string) error {
	var st, parent syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return err
	}
	if err := syscall.Stat(filepath.Dir(dir), &parent); err != nil {
		return err
	}
	if st.Dev == parent.Dev {
		return fmt.Errorf("%s is not mounted: its data would be looked for in the wrong place", dir)
	}
	return nil
}
