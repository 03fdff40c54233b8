package pki

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/plinth-dev/plinth/internal/fsutil"
	"github.com/plinth-dev/plinth/roles"
)

// Files WriteCredentials writes.
const (
	AdminCertFile  = "admin.pem"
	AdminKeyFile   = "admin-key.pem"
	KubeconfigFile = "kubeconfig"
)

// WriteCredentials writes an operator's admin material into dir: the CA
// certificate, an admin client certificate and key (for kubectl and
// `etcdctl --cacert ca.pem --cert admin.pem --key admin-key.pem`), and a
// kubeconfig for cluster at server (https://API-NAME:PORT) with all of it
// embedded. Each file is written atomically; keys and the kubeconfig are
// 0600. It returns the paths written.
func (ca *CA) WriteCredentials(dir, cluster, server string) ([]string, error) {
	if !strings.HasPrefix(server, "https://") {
		return nil, fmt.Errorf("credentials: API server %q: want https://HOST:PORT", server)
	}
	kp, err := ca.Admin()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	files := []struct {
		name, data string
		mode       os.FileMode
	}{
		{CertFile, ca.certPEM, 0o644},
		{AdminCertFile, kp.Cert, 0o644},
		{AdminKeyFile, kp.Key, 0o600},
		{KubeconfigFile, Kubeconfig(cluster, server, ca.certPEM, kp.Cert, kp.Key), 0o600},
	}
	var out []string
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := fsutil.WriteFileAtomic(p, []byte(f.data), f.mode); err != nil {
			return out, fmt.Errorf("credentials: %w", err)
		}
		out = append(out, p)
	}
	return out, nil
}

// Kubeconfig renders a kubeconfig with one cluster, one user (roles.Admin) and
// one current context, the certificates embedded. Strings are written as
// JSON-quoted YAML scalars, so no value can break the document.
func Kubeconfig(cluster, server, caPEM, certPEM, keyPEM string) string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	b64 := func(s string) string { return q(base64.StdEncoding.EncodeToString([]byte(s))) }
	user := roles.Admin.CommonName + "@" + cluster
	var sb strings.Builder
	fmt.Fprintf(&sb, "apiVersion: v1\nkind: Config\n")
	fmt.Fprintf(&sb, "clusters:\n- name: %s\n  cluster:\n    server: %s\n    certificate-authority-data: %s\n", q(cluster), q(server), b64(caPEM))
	fmt.Fprintf(&sb, "users:\n- name: %s\n  user:\n    client-certificate-data: %s\n    client-key-data: %s\n", q(user), b64(certPEM), b64(keyPEM))
	fmt.Fprintf(&sb, "contexts:\n- name: %s\n  context:\n    cluster: %s\n    user: %s\n", q(cluster), q(cluster), q(user))
	fmt.Fprintf(&sb, "current-context: %s\npreferences: {}\n", q(cluster))
	return sb.String()
}
