package bootserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/bootserver/siteetcd"
	"github.com/plinth-dev/plinth/profiles/node"
	"github.com/plinth-dev/plinth/roles"
)

// newEtcdWatcher makes the watcher of the site's etcd from cfg.Etcd: its
// client certificate comes from the site CA, its members from the site
// as it is now.
func (s *Server) newEtcdWatcher() (*siteetcd.Watcher, error) {
	ec := *s.cfg.Etcd
	if ec.Client == nil {
		if s.cfg.CA == nil {
			return nil, errors.New("serve: watching etcd needs the site CA (its members take only clients it certified)")
		}
		c, err := siteetcd.NewClient(s.cfg.CA)
		if err != nil {
			return nil, err
		}
		ec.Client = c
	}
	if ec.Members == nil {
		ec.Members = s.etcdMembers
	}
	if ec.Log == nil {
		ec.Log = s.log
	}
	return siteetcd.NewWatcher(ec)
}

// etcdMembers are the loaded site's etcd members.
func (s *Server) etcdMembers() []node.Member {
	ms, err := siteetcd.Members(s.snap.Load().site)
	if err != nil {
		s.log.Error("etcd members", "err", err)
	}
	return ms
}

// runEtcd runs the etcd watcher, if any, until the returned stop is
// called; stop waits for it (a snapshot in flight is cancelled).
func (s *Server) runEtcd(ctx context.Context) (stop func()) {
	if s.etcd == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.etcd.Run(ctx)
	}()
	return func() { cancel(); <-done }
}

// etcdProfile adds what the boot server knows of the site's etcd to a
// rendered profile: the cluster's ID for every machine with cluster
// settings, and a restore offer for etcd members (at base, the server as
// the machine reached it).
func (s *Server) etcdProfile(c *node.Config, base string) {
	if s.etcd == nil || c.Cluster == nil {
		return
	}
	c.Cluster.EtcdClusterID = s.etcd.ClusterID()
	if !roles.Get(c.Role).EtcdMember {
		return
	}
	if r := s.etcd.RestoreOffer(); r != nil {
		c.Cluster.EtcdRestore = &node.EtcdRestore{URL: base + api.EtcdRestorePath(r.SHA256), SHA256: r.SHA256}
	}
}

// etcdRestore serves the snapshot of a requested restore. It is the whole
// cluster's data, so only the requested digest, only while the request
// stands, and only to an address that is one of the site's etcd members
// (by the same ties as enrolment: static address, this server's lease or
// the ARP table). The boot network is still the trust boundary here, as
// for profiles; issue 14 brings mutual TLS.
func (s *Server) etcdRestore(w http.ResponseWriter, r *http.Request) {
	sum := r.PathValue("sha256")
	if s.etcd == nil {
		s.fail(w, r, http.StatusNotFound, "etcd restore: this server does not watch etcd")
		return
	}
	path, ok := s.etcd.RestoreFile(sum)
	if !ok {
		s.fail(w, r, http.StatusNotFound, "etcd restore: no restore of sha256 "+sum+" is requested", "sha256", sum)
		return
	}
	ip := remoteIP(r)
	member := ""
	for _, m := range s.snap.Load().site.Machines {
		if !roles.Get(m.Role).EtcdMember {
			continue
		}
		mac := m.MAC
		if mac == "" {
			mac, _ = s.firstMACs.get(m.Name)
		}
		if _, ok := s.verifyAddress(m, mac, ip); ok {
			member = m.Name
			break
		}
	}
	if member == "" {
		s.fail(w, r, http.StatusForbidden, "etcd restore: "+ip+" is not an etcd member of the site", "sha256", sum)
		return
	}
	f, err := os.Open(path)
	if err != nil {
		s.fail(w, r, http.StatusNotFound, fmt.Sprintf("etcd restore: snapshot %s is gone: %v", path, err), "sha256", sum)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		s.fail(w, r, http.StatusNotFound, "etcd restore: snapshot "+path+" is not a file", "sha256", sum)
		return
	}
	s.log.Info("etcd restore snapshot served", "machine", member, "remote", r.RemoteAddr, "file", path, "sha256", sum, "bytes", st.Size())
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("ETag", `"sha256:`+sum+`"`)
	http.ServeContent(w, r, "", st.ModTime(), f)
}
