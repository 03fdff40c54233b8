package bootserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"text/template"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/plinth-dev/plinth/roles"
)

// The cluster's addons: objects Kubernetes needs that no machine may
// create, applied by the boot server through the first API server whose
// /readyz passes, once per start, as kubeadm does at init with its admin
// credentials. The boot server holds the site CA, so it makes an admin
// certificate for that round alone (valid addonAuth, kept in memory only);
// no machine holds an admin identity.
//
//   - The API servers reach kubelets (logs, exec, port-forward) as
//     roles.KubeletClient, which carries no group: kubelets ask the API
//     server whether it may, and Kubernetes' default RBAC has the
//     ClusterRole for it (system:kubelet-api-admin) but no binding
//     (addons/kubelet-api.yaml).
//   - Cluster DNS (addons/coredns.yaml): CoreDNS as a Deployment behind the
//     kube-dns Service at roles.ClusterDNSIP, the address every kubelet
//     gives its pods. A Deployment through the API rather than static pods:
//     masters run no kubelet, a static pod cannot use a service account
//     (CoreDNS watches Services and EndpointSlices), and the scheduler then
//     moves it off a minion that is gone.
//
// Every object is applied with server-side apply (field manager "plinth",
// forced), so a newer plinth's objects replace an older one's on its first
// start, and a second boot server or restart changes nothing.

const addonAuth = 5 * time.Minute

// addonFiles are the addons' objects, rendered with text/template and
// applied in this order.
var addonFiles = []string{"addons/kubelet-api.yaml", "addons/coredns.yaml"}

//go:embed addons/*.yaml
var addonFS embed.FS

var addonTmpl = template.Must(template.New("addons").Option("missingkey=error").ParseFS(addonFS, "addons/*.yaml"))

// addon is one object to apply.
type addon struct {
	kind, namespace, name string
	path                  string // the object's API path
	body                  []byte // JSON
}

func (a addon) String() string {
	if a.namespace != "" {
		return a.kind + " " + a.namespace + "/" + a.name
	}
	return a.kind + " " + a.name
}

// resources are the API paths of the kinds the addons use.
var resources = map[string]struct {
	plural     string
	namespaced bool
}{
	"ServiceAccount":     {"serviceaccounts", true},
	"ConfigMap":          {"configmaps", true},
	"Service":            {"services", true},
	"Deployment":         {"deployments", true},
	"ClusterRole":        {"clusterroles", false},
	"ClusterRoleBinding": {"clusterrolebindings", false},
}

// newAddon finds obj's API path from its apiVersion, kind and metadata.
func newAddon(obj map[string]any) (addon, error) {
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	ns, _ := meta["namespace"].(string)
	r, ok := resources[kind]
	if !ok || apiVersion == "" || name == "" || r.namespaced != (ns != "") {
		return addon{}, fmt.Errorf("addon %s %q (namespace %q): not a kind the boot server applies, or no name", kind, name, ns)
	}
	path := "/apis/" + apiVersion
	if apiVersion == "v1" {
		path = "/api/v1"
	}
	if ns != "" {
		path += "/namespaces/" + ns
	}
	path += "/" + r.plural + "/" + name
	body, err := json.Marshal(obj)
	if err != nil {
		return addon{}, err
	}
	return addon{kind: kind, namespace: ns, name: name, path: path, body: body}, nil
}

// clusterAddons renders the addons for a site whose service network is
// serviceCIDR, in the order they are applied.
func clusterAddons(serviceCIDR string) ([]addon, error) {
	dnsIP, err := roles.ClusterDNSIP(serviceCIDR)
	if err != nil {
		return nil, err
	}
	data := map[string]any{
		"KubeletBinding": roles.KubeletClientBinding, "KubeletUser": roles.KubeletClient.CommonName,
		"DNSIP": dnsIP.String(), "Domain": roles.ClusterDomain, "Image": roles.CoreDNSImage, "Replicas": 2,
	}
	var objs []map[string]any
	for _, f := range addonFiles {
		var b bytes.Buffer
		if err := addonTmpl.ExecuteTemplate(&b, path.Base(f), data); err != nil {
			return nil, err
		}
		dec := yaml.NewDecoder(&b)
		for {
			var obj map[string]any
			if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			if obj != nil {
				objs = append(objs, obj)
			}
		}
	}
	out := make([]addon, 0, len(objs))
	for _, o := range objs {
		a, err := newAddon(o)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// applyAddons applies every addon through the API server at addr; it
// stops at the first that fails.
func (s *Server) applyAddons(ctx context.Context, addr netip.Addr, addons []addon) error {
	kp, err := s.cfg.CA.AdminFor(addonAuth)
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
	base := "https://" + net.JoinHostPort(addr.String(), strconv.Itoa(s.apiPort))
	for _, a := range addons {
		req, err := http.NewRequestWithContext(ctx, http.MethodPatch, base+a.path+"?fieldManager=plinth&force=true", bytes.NewReader(a.body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/apply-patch+yaml")
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("apply %s: %w", a, err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("apply %s: %s: %s", a, resp.Status, truncate(strings.TrimSpace(string(body)), 300))
		}
	}
	names := make([]string, len(addons))
	for i, a := range addons {
		names[i] = a.String()
	}
	s.log.Info("cluster addons applied: the API servers' kubelet access and cluster DNS", "via", addr, "objects", strings.Join(names, ", "))
	return nil
}

// addonApplier returns what the pool's check loop calls after each round:
// until the addons are applied, it tries, in the background, through a
// member whose checks pass, at most every addonRetry.
func (s *Server) addonApplier(ctx context.Context) func() {
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
				s.log.Warn("cluster addons not applied yet; kubectl logs and exec and cluster DNS fail until they are", "err", err, "retry_in", addonRetry)
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
		addons, err := clusterAddons(s.snap.Load().site.Network.Services)
		if err != nil {
			s.log.Error("cluster addons: cannot render them", "err", err)
			done = true
			return
		}
		running, next = true, time.Now().Add(addonRetry)
		go func() {
			cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			result <- s.applyAddons(cctx, addr, addons)
		}()
	}
}

const addonRetry = 15 * time.Second
