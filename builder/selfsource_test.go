package builder

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/module"
	modzip "golang.org/x/mod/zip"
)

// tinyProxy serves a one-file plinth module at version through a file://
// GOPROXY and returns the environment that reaches it alone.
func tinyProxy(t *testing.T, version string) []string {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module "+ModulePath+"\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "doc.go"), []byte("package plinth\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	proxy := t.TempDir()
	at := filepath.Join(proxy, "github.com", "plinth-dev", "plinth", "@v")
	if err := os.MkdirAll(at, 0o755); err != nil {
		t.Fatal(err)
	}
	var zb bytes.Buffer
	if err := modzip.CreateFromDir(&zb, module.Version{Path: ModulePath, Version: version}, src); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string][]byte{
		version + ".zip":  zb.Bytes(),
		version + ".mod":  []byte("module " + ModulePath + "\n\ngo 1.26\n"),
		version + ".info": []byte(`{"Version":"` + version + `"}`),
	} {
		if err := os.WriteFile(filepath.Join(at, name), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// -modcacherw: the test's temporary directory can be removed.
	return []string{"GOPROXY=file://" + proxy, "GOSUMDB=off", "GOMODCACHE=" + t.TempDir(), "GOFLAGS=-modcacherw", "GOTOOLCHAIN=local"}
}

func TestReleasedSourceIsFetchedAndMustBeTheBinarysOwn(t *testing.T) {
	env := tinyProxy(t, "v0.1.0")
	ctx := context.Background()
	dir, err := ReleasedSource(ctx, "v0.1.0", "", env)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "doc.go")); err != nil || string(b) != "package plinth\n" {
		t.Fatalf("source dir %s: doc.go %q, %v", dir, b, err)
	}
	// A module whose hash is not the one the binary was built from.
	_, err = ReleasedSource(ctx, "v0.1.0", "h1:"+strings.Repeat("A", 43)+"=", env)
	if err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("a module of another hash: %v, want a refusal", err)
	}
	// A version the proxy does not have: the error names it.
	_, err = ReleasedSource(ctx, "v0.2.0", "", env)
	if err == nil || !strings.Contains(err.Error(), ModulePath+"@v0.2.0") {
		t.Errorf("a missing version: %v, want an error naming %s@v0.2.0", err, ModulePath)
	}
}
