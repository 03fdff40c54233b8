package bootserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/plinth-dev/plinth/roles"
)

// The API servers reach kubelets (logs, exec, port-forward) as
// roles.KubeletClient, which carries no group: kubelets ask the API server
// whether it may, and Kubernetes' default RBAC has the ClusterRole for it
// (system:kubelet-api-admin) but no binding. The boot server makes the
// binding — as kubeadm does at init with its admin credentials — through
// the first API server whose /readyz passes, once per start, with an admin
// certificate it makes for that call alone (valid kubeletBindingAuth, kept
// in memory only). It holds the site CA, so this gives it nothing it did
// not have; no machine holds an admin identity any more.

const kubeletBindingAuth = 5 * time.Minute

// kubeletClientBinding is the ClusterRoleBinding, as JSON.
func kubeletClientBinding() []byte {
	b, _ := json.Marshal(map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1",
		"kind":       "ClusterRoleBinding",
		"metadata": map[string]any{
			"name":   roles.KubeletClientBinding,
			"labels": map[string]string{"app.kubernetes.io/managed-by": "plinth"},
		},
		"roleRef":  map[string]string{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kubelet-api-admin"},
		"subjects": []map[string]string{{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": roles.KubeletClient.CommonName}},
	})
	return b
}

// ensureKubeletBinding creates the binding through the API server at
// addr; one that exists already is fine.
func (s *Server) ensureKubeletBinding(ctx context.Context, addr netip.Addr) error {
	kp, err := s.cfg.CA.AdminFor(kubeletBindingAuth)
	if err != nil {
		return err
	}
	cert, err := tls.X509KeyPair([]byte(kp.Cert), []byte(kp.Key))
	if err != nil {
		return err
	}
	conf := &tls.Config{RootCAs: x509.NewCertPool(), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	conf.RootCAs.AddCert(s.cfg.CA.Cert())
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	url := "https://" + net.JoinHostPort(addr.String(), strconv.Itoa(s.apiPort)) + "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(kubeletClientBinding()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	switch resp.StatusCode {
	case http.StatusCreated:
		s.log.Info("kubelet access: bound the API servers' kubelet client to system:kubelet-api-admin", "binding", roles.KubeletClientBinding, "via", addr)
		return nil
	case http.StatusConflict:
		return nil // there already
	}
	return fmt.Errorf("create ClusterRoleBinding %s: %s: %s", roles.KubeletClientBinding, resp.Status, truncate(string(body), 200))
}

// kubeletBinder returns what the pool's check loop calls after each round:
// until the binding is made, it tries, in the background, through a member
// whose checks pass, at most every kubeletBindingRetry.
func (s *Server) kubeletBinder(ctx context.Context) func() {
	var (
		done    bool
		running bool
		next    time.Time
		result  = make(chan error, 1)
	)
	return func() {
		select {
		case err := <-result:
			running = false
			if err == nil {
				done = true
			} else {
				s.log.Warn("kubelet access: binding not made yet; kubectl logs and exec fail until it is", "err", err, "retry_in", kubeletBindingRetry)
			}
		default:
		}
		if done || running || time.Now().Before(next) {
			return
		}
		var addr netip.Addr
		for _, m := range s.pool.list() {
			if m.Healthy {
				addr = m.Addr
				break
			}
		}
		if !addr.IsValid() {
			return
		}
		running, next = true, time.Now().Add(kubeletBindingRetry)
		go func() {
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			result <- s.ensureKubeletBinding(cctx, addr)
		}()
	}
}

const kubeletBindingRetry = 15 * time.Second
