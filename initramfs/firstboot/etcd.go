// Package firstboot holds the steps a cluster role runs on the machine
// after switch_root, before its services start, where the answer depends on
// the running cluster rather than on the profile alone: whether an etcd
// member founds the cluster or joins it, writing flannel's network config
// once, splitting the node's flannel subnet between Docker and the pods,
// importing the baked-in container images. The readiness agent runs them
// as subcommands (plinth-agent etcd-join, ...), from units the role
// configurators write.
//
// etcd is reached over gRPC (internal/etcdrpc) with the machine's
// certificate for the etcd identity the step acts as: no etcd client
// library in the initramfs.
package firstboot

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/initramfs/stage1/events"
	"github.com/plinth-dev/plinth/internal/etcdrpc"
	"github.com/plinth-dev/plinth/profiles/node"
)

// Etcd talks to etcd members over gRPC, as one of the machine's etcd
// identities (etcd knows a client by its certificate's common name).
type Etcd struct {
	RPC *etcdrpc.Client
}

// TLSClient is an HTTP client presenting the machine's certificate and
// trusting only the site CA, from the files the roles write.
func TLSClient(caFile, certFile, keyFile string) (*http.Client, error) {
	return events.TLSClient(events.TLSFiles{CA: caFile, Cert: certFile, Key: keyFile})
}

// EtcdAs is an Etcd presenting the machine's certificate for an etcd
// identity (node.IdentityEtcd*) from the files the roles write, trusting
// only the site CA.
func EtcdAs(id string) (*Etcd, error) {
	cfg, err := events.TLSConfig(events.TLSFiles{CA: role.CAFile, Cert: role.IdentityCert(id), Key: role.IdentityKey(id)})
	if err != nil {
		return nil, fmt.Errorf("etcd identity %s: %w", id, err)
	}
	return &Etcd{RPC: etcdrpc.New(cfg)}, nil
}

// Member is an etcd member; its ID in decimal.
type Member struct {
	ID         string
	Name       string
	PeerURLs   []string
	ClientURLs []string
	IsLearner  bool
}

func fromRPC(ms []etcdrpc.Member) []Member {
	out := make([]Member, len(ms))
	for i, m := range ms {
		out[i] = Member{ID: strconv.FormatUint(m.ID, 10), Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, IsLearner: m.IsLearner}
	}
	return out
}

// memberID is a Member's ID as etcd takes it.
func memberID(id string) (uint64, error) {
	v, err := strconv.ParseUint(id, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("member ID %q: %w", id, err)
	}
	return v, nil
}

// Members asks the endpoints in turn for the member list (a linearizable
// read: only a cluster with quorum answers); it returns the first answer
// and the endpoint that gave it.
func (e *Etcd) Members(ctx context.Context, endpoints []string) ([]Member, string, error) {
	return inTurn(endpoints, func(ep string) ([]Member, error) {
		ms, err := e.RPC.MemberList(ctx, ep)
		return fromRPC(ms), err
	})
}

// inTurn asks the endpoints in turn and returns the first answer, with the
// endpoint that gave it, or every endpoint's error.
func inTurn[T any](endpoints []string, f func(ep string) (T, error)) (T, string, error) {
	var zero T
	if len(endpoints) == 0 {
		return zero, "", errors.New("no etcd endpoint to ask")
	}
	var errs []error
	for _, ep := range endpoints {
		v, err := f(ep)
		if err == nil {
			return v, ep, nil
		}
		errs = append(errs, err)
	}
	return zero, "", errors.Join(errs...)
}

// Alive lists the endpoints whose etcd answers at all (/livez), quorum or
// not.
func (e *Etcd) Alive(ctx context.Context, endpoints []string) []string {
	var out []string
	for _, ep := range endpoints {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		r, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(ep, "/")+"/livez", nil)
		if err == nil {
			var res *http.Response
			if res, err = e.RPC.HTTP.Do(r); err == nil {
				res.Body.Close()
				out = append(out, ep)
			}
		}
		cancel()
	}
	return out
}

// AddLearner adds a member as a learner by its peer URL and returns the
// members after it. A learner gets the log without a vote, so a new
// member that is slow to start never costs the cluster its quorum.
func (e *Etcd) AddLearner(ctx context.Context, endpoint, peerURL string) ([]Member, error) {
	ms, err := e.RPC.MemberAdd(ctx, endpoint, []string{peerURL}, true)
	return fromRPC(ms), err
}

// addLearner is AddLearner, tried again for up to a minute while etcd
// calls the cluster unhealthy: it refuses a membership change until the
// member asked has been connected to every voting member for 5 s, which is
// not yet the case just after a member was removed or the cluster formed.
func (e *Etcd) addLearner(ctx context.Context, endpoint, peerURL string) ([]Member, error) {
	for i := 0; ; i++ {
		ms, err := e.AddLearner(ctx, endpoint, peerURL)
		if err == nil || !strings.Contains(err.Error(), "unhealthy cluster") || i == 30 {
			return ms, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(2 * time.Second):
		}
	}
}

// Remove removes a member by ID.
func (e *Etcd) Remove(ctx context.Context, endpoint, id string) error {
	v, err := memberID(id)
	if err != nil {
		return err
	}
	return e.RPC.MemberRemove(ctx, endpoint, v)
}

// Promote makes a learner a voting member; etcd refuses while the learner
// has not caught up with the leader.
func (e *Etcd) Promote(ctx context.Context, endpoint, id string) error {
	v, err := memberID(id)
	if err != nil {
		return err
	}
	return e.RPC.MemberPromote(ctx, endpoint, v)
}

// JoinPlan is what etcd-join decided.
type JoinPlan struct {
	State   string // new | existing
	Initial string // --initial-cluster: name=peerURL,...
	Why     string
	// Restore: restore the profile's snapshot into the data directory
	// before etcd starts (every member does, into a new cluster).
	Restore bool
}

// Env is the plan as etcd's environment file (role.EtcdEnvFile).
func (j JoinPlan) Env() string {
	return fmt.Sprintf("# plinth etcd-join: %s\nETCD_INITIAL_CLUSTER_STATE=%s\nETCD_INITIAL_CLUSTER=%s\n", j.Why, j.State, j.Initial)
}

// ErrWait is the error of a Join that must wait: trying again later may
// find the cluster; starting now could split it.
var ErrWait = errors.New("waiting")

// Join decides how this member starts, from its data first and the
// running cluster second, changing the membership only when it must:
//   - its data directory holds a member: it starts as itself, whatever
//     the others do (no remove, no add; etcd ignores the initial cluster);
//     members that all come back with their data re-form the cluster;
//   - no data, and the cluster answers with quorum: if the cluster lists
//     this member as started, its old self is removed; it is then added as
//     a learner (unless listed and never started: founded or added before
//     it ran) and promoted once caught up (etcd-promote);
//   - no data, members answer but without quorum: wait (ErrWait), never
//     found a second cluster beside a living one;
//   - no data and nobody answers: restore the profile's snapshot when it
//     names one; found a new cluster when the boot server has never seen
//     the site's cluster, or no member keeps data on disk (all in RAM: the
//     data is gone, as it always was); otherwise wait for the members that
//     may hold it (this one's own disk may be new).
func (e *Etcd) Join(ctx context.Context, cfg *node.Config, hasData bool) (JoinPlan, error) {
	if cfg.Cluster == nil {
		return JoinPlan{}, errors.New("the profile has no cluster settings")
	}
	ms := cfg.Cluster.EtcdMembers
	i := slices.IndexFunc(ms, func(m node.Member) bool { return m.Name == cfg.Machine })
	if i < 0 {
		return JoinPlan{}, fmt.Errorf("machine %s is not among the site's etcd members", cfg.Machine)
	}
	self := ms[i]
	selfPeer := role.PeerURL(self.Address)
	var all []string
	var others, durable []string
	byPeer := map[string]string{}
	for _, m := range ms {
		all = append(all, m.Name+"="+role.PeerURL(m.Address))
		byPeer[role.PeerURL(m.Address)] = m.Name
		if m.Name != self.Name {
			others = append(others, role.ClientURL(m.Address))
		}
		if m.Durable {
			durable = append(durable, m.Name)
		}
	}
	founding := JoinPlan{State: "new", Initial: strings.Join(all, ",")}
	if hasData {
		return JoinPlan{State: "existing", Initial: founding.Initial,
			Why: "its data is on disk: starting as itself, no membership change"}, nil
	}
	members, ep, err := e.Members(ctx, others)
	if err != nil {
		alive := e.Alive(ctx, others)
		id := cfg.Cluster.EtcdClusterID
		switch {
		case len(alive) > 0:
			return JoinPlan{}, fmt.Errorf("%w: %s answer but the cluster has no quorum; this member has no data and waits for the others (it never founds a second cluster)", ErrWait, strings.Join(alive, ", "))
		case cfg.Cluster.EtcdRestore != nil:
			founding.Restore = true
			founding.Why = "no member answers and the boot server offers a snapshot: restoring it (sha256 " + cfg.Cluster.EtcdRestore.SHA256 + ")"
			return founding, nil
		case id != "" && len(durable) > 0:
			return JoinPlan{}, fmt.Errorf("%w: no other member answers, this member has no data, and the site's etcd cluster %s exists with members that keep data on disk (%s): waiting for them; if every member's data is lost, restore a snapshot (plinth etcd restore) or start empty (plinth etcd forget)",
				ErrWait, id, strings.Join(durable, ", "))
		case id != "":
			founding.Why = "no other member answers and no member keeps data on disk: founding a NEW, EMPTY cluster in place of " + id + " (its data is gone; plinth etcd restore brings a snapshot back)"
		default:
			founding.Why = "no other member answers: founding the cluster"
		}
		return founding, nil
	}
	var why string
	j := slices.IndexFunc(members, func(m Member) bool { return slices.Contains(m.PeerURLs, selfPeer) })
	switch {
	case j >= 0 && len(members[j].ClientURLs) == 0:
		why = "listed by the running cluster, never started: joining"
		if members[j].IsLearner {
			why += " as a learner"
		}
	case j >= 0:
		if err := e.Remove(ctx, ep, members[j].ID); err != nil {
			return JoinPlan{}, fmt.Errorf("remove this member's old self (%s) to rejoin with no data: %w", members[j].ID, err)
		}
		if members, err = e.addLearner(ctx, ep, selfPeer); err != nil {
			return JoinPlan{}, fmt.Errorf("add this member again as a learner: %w", err)
		}
		why = "rebooted with no data: removed its old self, added again as a learner"
	default:
		if members, err = e.addLearner(ctx, ep, selfPeer); err != nil {
			return JoinPlan{}, fmt.Errorf("add this member to the running cluster as a learner: %w", err)
		}
		why = "not in the running cluster: added as a learner"
	}
	var parts []string
	for _, m := range members {
		for _, u := range m.PeerURLs {
			name := m.Name
			if u == selfPeer {
				name = self.Name
			}
			if name == "" {
				name = byPeer[u]
			}
			if name == "" {
				name = "member-" + m.ID
			}
			parts = append(parts, name+"="+u)
		}
	}
	slices.Sort(parts)
	return JoinPlan{State: "existing", Initial: strings.Join(parts, ","), Why: why}, nil
}

// PromoteSelf promotes the member with peerURL when it is a learner,
// asking the endpoints in turn (a learner serves no membership changes:
// list it last); it reports whether the member votes now.
//
// The promotion is sent to the leader itself. Only the leader knows
// whether a learner has caught up, so a follower forwards a promotion to
// it over the peer port, and etcd (v3.6.16; etcd-io/etcd#20757) forwards
// only a password login's token, never the identity of a client
// certificate: with authorisation on, the leader refuses the forwarded
// request ("user name is empty") and the follower retries until the
// caller's deadline. Asked first, a follower would never promote anyone.
func (e *Etcd) PromoteSelf(ctx context.Context, endpoints []string, peerURL string) (bool, error) {
	ms, ep, err := e.Members(ctx, endpoints)
	if err != nil {
		return false, err
	}
	j := slices.IndexFunc(ms, func(m Member) bool { return slices.Contains(m.PeerURLs, peerURL) })
	if j < 0 {
		return false, fmt.Errorf("the cluster does not list %s", peerURL)
	}
	if !ms[j].IsLearner {
		return true, nil
	}
	leader, err := e.leaderURL(ctx, ep, ms)
	if err != nil {
		return false, err
	}
	if err := e.Promote(ctx, leader, ms[j].ID); err != nil {
		return false, fmt.Errorf("promote %s through the leader %s: %w", peerURL, leader, err)
	}
	return true, nil
}

// leaderURL is the client URL of the leader that the member at ep knows
// of, looked up in ms.
func (e *Etcd) leaderURL(ctx context.Context, ep string, ms []Member) (string, error) {
	st, err := e.RPC.Status(ctx, ep)
	if err != nil {
		return "", err
	}
	if st.Leader == 0 {
		return "", fmt.Errorf("%s knows no leader", ep)
	}
	id := strconv.FormatUint(st.Leader, 10)
	i := slices.IndexFunc(ms, func(m Member) bool { return m.ID == id })
	if i < 0 || len(ms[i].ClientURLs) == 0 {
		return "", fmt.Errorf("%s names leader %x, which the member list does not give a client URL", ep, st.Leader)
	}
	return ms[i].ClientURLs[0], nil
}

// HasEtcdData reports whether dir holds an etcd member's data (its WAL).
func HasEtcdData(dir string) bool {
	m, _ := filepath.Glob(filepath.Join(dir, "member", "wal", "*.wal"))
	return len(m) > 0
}
