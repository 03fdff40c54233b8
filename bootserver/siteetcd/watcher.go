package siteetcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/plinth-dev/plinth/profiles"
	"github.com/plinth-dev/plinth/profiles/node"
)

// Members are the site's etcd members as every profile lists them.
func Members(site *profiles.Site) ([]node.Member, error) {
	if len(site.Machines) == 0 {
		return nil, nil
	}
	c, err := site.Render(site.Machines[0], "")
	if err != nil {
		return nil, err
	}
	return c.Cluster.EtcdMembers, nil
}

// Config configures a Watcher.
type Config struct {
	Dir    string  // <state>/etcd: the Store
	Client *Client // with the boot server's certificate
	// Members returns the site's etcd members now (the site reloads).
	Members func() []node.Member
	// ClientURL is a member's client URL; nil: ClientURL(m.Address).
	ClientURL func(node.Member) string
	// Poll is how often every member is asked for its status; 0: 30 s.
	Poll time.Duration
	// SnapshotEvery is how old the newest snapshot may grow before another
	// is taken; 0: no snapshots.
	SnapshotEvery time.Duration
	// Keep is how many snapshots to keep; 0: 24.
	Keep int
	// Etcdutl checks each snapshot when it is not "".
	Etcdutl string
	Log     *slog.Logger
	Now     func() time.Time
}

// Watcher follows the site's etcd: the cluster's ID, scheduled snapshots,
// and when to offer a restore.
type Watcher struct {
	cfg   Config
	store Store
	log   *slog.Logger

	mu         sync.Mutex
	cluster    ClusterRecord
	round      *Round            // the last poll; nil before the first
	restore    *RestoreRequest   // on disk at the last poll
	offer      bool              // restore is in the members' profiles
	refused    string            // the request last refused (logged once)
	restoreErr string            // the request's last error, logged once
	lastTry    time.Time         // last snapshot attempt
	states     map[string]string // member name → state last logged
}

// Round is what one poll found.
type Round struct {
	Members  int      // in the site
	Answered []Status // members that answered, in the site's order
	Failed   map[string]error
}

// Healthy are the members that answered and are part of a working cluster.
func (r *Round) Healthy() []Status {
	var out []Status
	for _, s := range r.Answered {
		if s.Healthy() {
			out = append(out, s)
		}
	}
	return out
}

// AllHealthy reports whether every member of the site answered healthy.
func (r *Round) AllHealthy() bool { return r.Members > 0 && len(r.Healthy()) == r.Members }

// NewWatcher reads what the last run recorded.
func NewWatcher(cfg Config) (*Watcher, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 30 * time.Second
	}
	if cfg.Keep <= 0 {
		cfg.Keep = 24
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ClientURL == nil {
		cfg.ClientURL = func(m node.Member) string { return ClientURL(m.Address) }
	}
	if cfg.Client == nil || cfg.Members == nil || cfg.Dir == "" {
		return nil, errors.New("etcd watcher: a client, the members and a directory are needed")
	}
	w := &Watcher{cfg: cfg, store: Store{Dir: cfg.Dir}, log: cfg.Log}
	rec, err := w.store.Cluster()
	if err != nil {
		return nil, fmt.Errorf("etcd watcher: %w", err)
	}
	w.cluster = rec
	if cfg.SnapshotEvery > 0 && cfg.Etcdutl == "" {
		w.log.Warn("etcdutl not found (--etcdutl or PATH): etcd snapshots are not checked by etcdutl, only by their sha256")
	}
	if rec.ClusterID != "" {
		w.log.Info("etcd cluster known from the last run", "cluster_id", rec.ClusterID, "seen", rec.Seen)
	}
	return w, nil
}

// Store is where the watcher keeps its records and snapshots.
func (w *Watcher) Store() Store { return w.store }

// ClusterID is the ID of the site's etcd cluster as last seen; "" when
// this server never saw one.
func (w *Watcher) ClusterID() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cluster.ClusterID
}

// RestoreOffer is the restore to put into etcd members' profiles: non-nil
// only while one is requested and the last poll found no member answering.
func (w *Watcher) RestoreOffer() *RestoreRequest {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.offer || w.restore == nil {
		return nil
	}
	r := *w.restore
	return &r
}

// RestoreFile is the snapshot file of the requested restore when its
// digest is sha256; it is served while the request stands, offered in
// profiles or not, so a member that read its profile a moment before the
// first restored member answered still gets the file.
func (w *Watcher) RestoreFile(sha256 string) (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.restore == nil || w.restore.SHA256 != sha256 {
		return "", false
	}
	return w.restore.File, true
}

// Run polls until ctx is cancelled, taking snapshots when they are due.
func (w *Watcher) Run(ctx context.Context) error {
	t := time.NewTicker(w.cfg.Poll)
	defer t.Stop()
	for {
		w.Poll(ctx)
		if w.snapshotDue() {
			w.Snapshot(ctx)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Ask asks every member for its status at once; url is a member's client
// URL (nil: ClientURL of its address).
func Ask(ctx context.Context, c *Client, members []node.Member, url func(node.Member) string) *Round {
	if url == nil {
		url = func(m node.Member) string { return ClientURL(m.Address) }
	}
	r := &Round{Members: len(members), Failed: map[string]error{}}
	answers := make([]*Status, len(members))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Go(func() {
			st, err := c.Status(ctx, url(m))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				r.Failed[m.Name] = err
				return
			}
			answers[i] = &st
		})
	}
	wg.Wait()
	for _, st := range answers {
		if st != nil {
			r.Answered = append(r.Answered, *st)
		}
	}
	return r
}

// Poll asks every member once, records the cluster ID it sees and decides
// whether a requested restore is offered, kept or done.
func (w *Watcher) Poll(ctx context.Context) *Round {
	members := w.cfg.Members()
	r := Ask(ctx, w.cfg.Client, members, w.cfg.ClientURL)
	now := w.cfg.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.round = r
	w.logChanges(members, r)
	// The record may have been removed meanwhile (plinth etcd forget): a
	// cluster no member answers for is then forgotten here too.
	if rec, err := w.store.Cluster(); err == nil && rec.ClusterID != w.cluster.ClusterID {
		if rec.ClusterID == "" {
			w.log.Warn("etcd cluster forgotten (plinth etcd forget): members with no data may found a new one", "was", w.cluster.ClusterID)
		}
		w.cluster = rec
	}
	w.record(r, now)
	w.decideRestore(r, now)
	return r
}

// logChanges logs each member whose state changed since the last poll.
func (w *Watcher) logChanges(members []node.Member, r *Round) {
	if w.states == nil {
		w.states = map[string]string{}
	}
	byEndpoint := map[string]Status{}
	for _, s := range r.Answered {
		byEndpoint[s.Endpoint] = s
	}
	for _, m := range members {
		state, attrs := "healthy", []any{"member", m.Name}
		if err, ok := r.Failed[m.Name]; ok {
			state = "not answering"
			attrs = append(attrs, "err", err)
		} else if s := byEndpoint[w.cfg.ClientURL(m)]; !s.Healthy() {
			state = "unhealthy"
			attrs = append(attrs, "leader", s.Leader, "alarms", fmt.Sprint(s.Errors))
		} else {
			attrs = append(attrs, "cluster_id", s.ClusterID, "revision", s.Revision, "db_bytes", s.DBSize)
		}
		if w.states[m.Name] == state {
			continue
		}
		w.states[m.Name] = state
		if state == "healthy" {
			w.log.Info("etcd member "+state, attrs...)
		} else {
			w.log.Warn("etcd member "+state, attrs...)
		}
	}
}

// recordEvery bounds how often an unchanged cluster ID is written again
// (its seen time): not a disk write every poll.
const recordEvery = 10 * time.Minute

// record keeps the ID of the cluster the healthy members belong to.
func (w *Watcher) record(r *Round, now time.Time) {
	ids := map[string][]string{}
	for _, s := range r.Healthy() {
		ids[s.ClusterID] = append(ids[s.ClusterID], s.Endpoint)
	}
	if len(ids) == 0 {
		return
	}
	id := ""
	for k, eps := range ids {
		if id == "" || len(eps) > len(ids[id]) || len(eps) == len(ids[id]) && k < id {
			id = k
		}
	}
	if len(ids) > 1 {
		w.log.Error("etcd members belong to different clusters; recording the one most of them are in", "cluster_id", id, "clusters", fmt.Sprint(ids))
	}
	old := w.cluster
	if old.ClusterID == id && now.Sub(old.Seen) < recordEvery {
		return
	}
	rec := ClusterRecord{ClusterID: id, Seen: now.UTC(), FirstSeen: old.FirstSeen}
	if old.ClusterID != id {
		rec.FirstSeen = now.UTC()
	}
	if err := w.store.SaveCluster(rec); err != nil {
		w.log.Error("etcd cluster ID not recorded", "cluster_id", id, "err", err)
		return
	}
	w.cluster = rec
	switch {
	case old.ClusterID == "":
		w.log.Info("etcd cluster seen", "cluster_id", id, "members", r.Members, "healthy", len(ids[id]))
	case old.ClusterID != id:
		w.log.Warn("etcd cluster ID changed", "cluster_id", id, "was", old.ClusterID)
	}
}

// decideRestore offers a requested restore while no member answers, and
// clears it once the restored cluster answers on every member.
func (w *Watcher) decideRestore(r *Round, now time.Time) {
	req, err := w.store.Restore()
	if err != nil {
		if msg := err.Error(); msg != w.restoreErr {
			w.log.Error("etcd restore request unreadable; not offered", "err", err)
			w.restoreErr = msg
		}
		w.restore, w.offer = nil, false
		return
	}
	w.restoreErr = ""
	w.restore = req
	if req == nil {
		w.offer = false
		return
	}
	key := req.SHA256 + req.Requested.String()
	if _, err := os.Stat(req.File); err != nil {
		w.offer = false
		if w.refused != "gone "+key {
			w.refused = "gone " + key
			w.log.Error("etcd restore requested but its snapshot is gone; not offered", "err", err)
		}
		return
	}
	switch {
	case r.Members > 0 && len(r.Answered) == 0:
		w.offer = true
		if req.Offered == nil {
			t := now.UTC()
			req.Offered = &t
			if err := w.store.SaveRestore(*req); err != nil {
				w.log.Error("etcd restore offered, but not recorded as offered", "err", err)
			}
			w.log.Warn("etcd restore offered: no member answers; members that boot with no data restore the snapshot", "file", req.File, "sha256", req.SHA256, "members", r.Members)
		}
	case r.AllHealthy() && req.Offered != nil:
		w.offer = false
		if _, err := w.store.CancelRestore(); err != nil {
			w.log.Error("etcd restored, but the restore request could not be removed", "err", err)
			return
		}
		w.restore = nil
		w.log.Info("etcd restored: every member answers; restore request cleared", "file", req.File, "sha256", req.SHA256, "cluster_id", w.cluster.ClusterID)
	case r.Members == 0:
		w.offer = false
		if w.refused != "none "+key {
			w.refused = "none " + key
			w.log.Error("etcd restore requested but the site has no etcd members", "file", req.File)
		}
	default:
		w.offer = false
		if req.Offered == nil && w.refused != key {
			w.refused = key
			w.log.Error("etcd restore requested but not offered: the cluster runs; a restore is for when every member's data is lost (wipe their state disks and reboot them, or plinth etcd restore --cancel)",
				"file", req.File, "answering", len(r.Answered), "members", r.Members)
		}
	}
}

// snapshotDue reports whether the newest snapshot is older than
// SnapshotEvery and a member could give one; after a failure it waits
// the shorter of SnapshotEvery and 5 minutes.
func (w *Watcher) snapshotDue() bool {
	every := w.cfg.SnapshotEvery
	if every <= 0 {
		return false
	}
	w.mu.Lock()
	healthy := w.round != nil && len(w.round.Healthy()) > 0
	lastTry := w.lastTry
	w.mu.Unlock()
	if !healthy || w.cfg.Now().Sub(lastTry) < min(every, 5*time.Minute) {
		return false
	}
	list, err := w.store.Snapshots()
	if err != nil {
		w.log.Error("etcd snapshots unreadable", "dir", w.store.SnapshotDir(), "err", err)
		return false
	}
	return len(list) == 0 || w.cfg.Now().Sub(list[len(list)-1].Time) >= every
}

// Snapshot takes a snapshot from a healthy member (a follower first, to
// spare the leader), publishes it and prunes the old ones.
func (w *Watcher) Snapshot(ctx context.Context) (Saved, error) {
	w.mu.Lock()
	w.lastTry = w.cfg.Now()
	var healthy []Status
	if w.round != nil {
		healthy = w.round.Healthy()
	}
	except := ""
	if w.restore != nil {
		except = w.restore.File
	}
	w.mu.Unlock()
	s, err := TakeSnapshot(ctx, w.cfg.Client, healthy, w.store.NewSnapshotPath(w.cfg.Now()), w.cfg.Etcdutl, w.log)
	if err != nil {
		w.log.Error("etcd snapshot failed; nothing published", "err", err)
		return s, err
	}
	removed, err := w.store.Prune(w.cfg.Keep, except)
	for _, p := range removed {
		w.log.Info("etcd snapshot pruned", "file", p, "keep", w.cfg.Keep)
	}
	if err != nil {
		w.log.Error("etcd snapshots not all pruned", "err", err)
	}
	return s, nil
}

// TakeSnapshot saves a snapshot to path from one of the healthy members
// and logs it (size, duration, revision); plinth serve and plinth etcd
// snapshot both take theirs this way.
func TakeSnapshot(ctx context.Context, c *Client, healthy []Status, path, etcdutl string, log *slog.Logger) (Saved, error) {
	healthy = slices.Clone(healthy)
	slices.SortStableFunc(healthy, func(a, b Status) int { return boolCmp(a.MemberID == a.Leader, b.MemberID == b.Leader) })
	var eps []string
	rev := map[string]int64{}
	for _, s := range healthy {
		eps = append(eps, s.Endpoint)
		rev[s.Endpoint] = s.Revision
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	s, err := Save(ctx, c, eps, path, etcdutl)
	if err != nil {
		return s, err
	}
	attrs := []any{"file", s.Path, "member", s.Endpoint, "bytes", s.Size, "took", s.Took.Round(time.Millisecond), "sha256", s.SHA256, "storage_version", s.Version}
	if s.Status != nil {
		attrs = append(attrs, "revision", s.Status.Revision, "keys", s.Status.TotalKey)
	} else {
		// The stream carries no revision; the member's status just before
		// gives a lower bound.
		attrs = append(attrs, "revision_at_least", rev[s.Endpoint], "etcdutl", "not checked by etcdutl")
	}
	log.Info("etcd snapshot", attrs...)
	return s, nil
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
