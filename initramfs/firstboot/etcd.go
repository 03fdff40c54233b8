// Package firstboot holds the steps a cluster role runs on the machine
// after switch_root, before its services start, where the answer depends on
// the running cluster rather than on the profile alone: whether an etcd
// member founds the cluster or joins it, writing flannel's network config
// once, splitting the node's flannel subnet between Docker and the pods,
// importing the baked-in container images. The readiness agent runs them
// as subcommands (plinth-agent etcd-join, ...), from units the role
// configurators write.
//
// etcd is reached through its JSON gateway (/v3/...), with the machine's
// certificate: no etcd client library in the initramfs.
package firstboot

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/plinth-dev/plinth/initramfs/role"
	"github.com/plinth-dev/plinth/profiles/node"
)

// Etcd talks to etcd members' JSON gateway.
type Etcd struct {
	Client *http.Client
	// Timeout bounds one request to one member.
	Timeout time.Duration
}

// TLSClient is an HTTP client presenting the machine's certificate and
// trusting only the site CA, from the files the roles write.
func TLSClient(caFile, certFile, keyFile string) (*http.Client, error) {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s: no certificate", caFile)
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		kp, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}, nil
}

// call POSTs req as JSON to one member's gateway path and decodes the
// answer into resp.
func (e *Etcd) call(ctx context.Context, endpoint, path string, req, resp any) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	t := e.Timeout
	if t <= 0 {
		t = 3 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(endpoint, "/")+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	r.Header.Set("Content-Type", "application/json")
	res, err := e.Client.Do(r)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s%s: %s: %s", endpoint, path, res.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, resp); err != nil {
		return fmt.Errorf("%s%s: %w", endpoint, path, err)
	}
	return nil
}

// Member is an etcd member as the gateway shows it; IDs are uint64 sent as
// decimal strings.
type Member struct {
	ID         string   `json:"ID"`
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
}

type memberList struct {
	Members []Member `json:"members"`
}

// Members asks the endpoints in turn for the member list; it returns the
// first answer and the endpoint that gave it.
func (e *Etcd) Members(ctx context.Context, endpoints []string) ([]Member, string, error) {
	if len(endpoints) == 0 {
		return nil, "", errors.New("no etcd endpoint to ask")
	}
	var errs []error
	for _, ep := range endpoints {
		var l memberList
		if err := e.call(ctx, ep, "/v3/cluster/member/list", struct{}{}, &l); err != nil {
			errs = append(errs, err)
			continue
		}
		return l.Members, ep, nil
	}
	return nil, "", errors.Join(errs...)
}

// Add adds a member by its peer URL and returns the members after it.
func (e *Etcd) Add(ctx context.Context, endpoint, peerURL string) ([]Member, error) {
	var l memberList
	err := e.call(ctx, endpoint, "/v3/cluster/member/add", map[string]any{"peerURLs": []string{peerURL}}, &l)
	return l.Members, err
}

// Remove removes a member by ID.
func (e *Etcd) Remove(ctx context.Context, endpoint, id string) error {
	var l memberList
	return e.call(ctx, endpoint, "/v3/cluster/member/remove", map[string]any{"ID": id}, &l)
}

// JoinPlan is what etcd-join decided.
type JoinPlan struct {
	State   string // new | existing
	Initial string // --initial-cluster: name=peerURL,...
	Why     string
}

// Env is the plan as etcd's environment file (role.EtcdEnvFile).
func (j JoinPlan) Env() string {
	return fmt.Sprintf("# plinth etcd-join: %s\nETCD_INITIAL_CLUSTER_STATE=%s\nETCD_INITIAL_CLUSTER=%s\n", j.Why, j.State, j.Initial)
}

// Join decides how this member starts, changing the cluster's membership
// when it must:
//   - no other member answers: the cluster does not exist yet, found it
//     with the profile's members (state new);
//   - the cluster lists this member's peer URL and the member never
//     started (no client URLs): it was founded or added with it, start
//     (state existing);
//   - the cluster lists it as started: this machine rebooted and lost its
//     data (etcd lives on tmpfs), so it is removed and added again: a
//     member must never rejoin with its log gone;
//   - the cluster does not list it: a member added to the profile later;
//     add it, then start (state existing).
//
// Membership changes go through the cluster, which refuses one that would
// cost it quorum (etcd's strict reconfiguration check).
func (e *Etcd) Join(ctx context.Context, cfg *node.Config) (JoinPlan, error) {
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
	var others []string
	byPeer := map[string]string{}
	for _, m := range ms {
		byPeer[role.PeerURL(m.Address)] = m.Name
		if m.Name != self.Name {
			others = append(others, role.ClientURL(m.Address))
		}
	}
	members, ep, err := e.Members(ctx, others)
	if err != nil {
		var parts []string
		for _, m := range ms {
			parts = append(parts, m.Name+"="+role.PeerURL(m.Address))
		}
		return JoinPlan{State: "new", Initial: strings.Join(parts, ","),
			Why: "no other member answers: founding the cluster"}, nil
	}
	why := ""
	j := slices.IndexFunc(members, func(m Member) bool { return slices.Contains(m.PeerURLs, selfPeer) })
	switch {
	case j >= 0 && len(members[j].ClientURLs) == 0:
		why = "listed by the running cluster, never started: joining"
	case j >= 0:
		if err := e.Remove(ctx, ep, members[j].ID); err != nil {
			return JoinPlan{}, fmt.Errorf("remove this member's old self (%s) to rejoin with no data: %w", members[j].ID, err)
		}
		if members, err = e.Add(ctx, ep, selfPeer); err != nil {
			return JoinPlan{}, fmt.Errorf("add this member again: %w", err)
		}
		why = "rebooted with no data: removed and added again"
	default:
		if members, err = e.Add(ctx, ep, selfPeer); err != nil {
			return JoinPlan{}, fmt.Errorf("add this member to the running cluster: %w", err)
		}
		why = "new to the running cluster: added"
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
