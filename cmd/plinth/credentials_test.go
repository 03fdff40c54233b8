package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/bootserver"
	"github.com/plinth-dev/plinth/bootserver/api"
	"github.com/plinth-dev/plinth/bootserver/pki"
)

func labSite(t *testing.T) string {
	t.Helper()
	site := filepath.Join(t.TempDir(), "site")
	os.MkdirAll(site, 0o755)
	os.WriteFile(filepath.Join(site, "site.toml"), []byte("[site]\nname = \"lab\"\ndomain = \"lab.example\"\napi_name = \"api.lab.example\"\n"), 0o644)
	return site
}

func run(args ...string) (string, error) {
	root := newRoot()
	var out strings.Builder
	root.SetOut(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestCredentialsNeedTheServersCAAndWriteAKubeconfigForTheAPIName(t *testing.T) {
	site := labSite(t)
	state := filepath.Join(t.TempDir(), "state")
	out := filepath.Join(t.TempDir(), "admin")
	if _, err := run("credentials", "--site", site, "--state", state, "--out", out); err == nil || !strings.Contains(err.Error(), "no site CA for site lab in "+state) {
		t.Fatalf("before serve ever ran: %v", err)
	}
	if _, _, err := pki.LoadOrCreate(state, "lab", nil); err != nil {
		t.Fatal(err)
	}
	printed, err := run("credentials", "--site", site, "--state", state, "--out", out)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.pem", "admin.pem", "admin-key.pem", "kubeconfig"} {
		if !strings.Contains(printed, filepath.Join(out, f)) {
			t.Errorf("output does not list %s: %q", f, printed)
		}
	}
	kc, _ := os.ReadFile(filepath.Join(out, "kubeconfig"))
	if !strings.Contains(string(kc), `server: "https://api.lab.example:6443"`) {
		t.Errorf("kubeconfig:\n%s", kc)
	}
	if _, err := run("credentials", "--site", site, "--state", filepath.Join(site, "keys"), "--out", out); err == nil || !strings.Contains(err.Error(), "inside the site") {
		t.Errorf("a state inside the site: %v", err)
	}
	if _, err := run("credentials", "--site", site, "--state", state, "--out", filepath.Join(site, "admin")); err == nil || !strings.Contains(err.Error(), "inside the site") {
		t.Errorf("credentials written into the site: %v", err)
	}
}

func TestServeDNSIsOnWhereAsked(t *testing.T) {
	site := labSite(t)
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		flag string
		on   bool
	}{{"off", false}, {"auto", false} /* no --server-ip */, {"127.0.0.1:0", true}} {
		c := bootserver.Config{SiteDir: site}
		dns, err := siteServices(&c, filepath.Join(t.TempDir(), "state"), true, tc.flag, nil, log)
		if err != nil {
			t.Fatalf("--dns %s: %v", tc.flag, err)
		}
		if c.CA == nil {
			t.Errorf("--dns %s: serve has no CA", tc.flag)
		}
		if (dns != nil) != tc.on || (c.Masters != nil) != tc.on {
			t.Errorf("--dns %s: DNS on = %v, want %v", tc.flag, dns != nil, tc.on)
		}
		if dns != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			if err := runAll(ctx, dns); err != nil {
				t.Errorf("--dns %s: %v", tc.flag, err)
			}
			cancel()
		}
	}
}

// Renaming a site in its site.toml changes its default state directory; a
// start must not quietly make a second CA there, which no machine trusts.
func TestARenamedSiteGetsNoSecondCAUnnoticed(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	site := labSite(t)
	c := bootserver.Config{SiteDir: site}
	if _, err := siteServices(&c, "", true, "off", nil, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	first := c.CA.Cert().Raw
	old, _ := pki.DefaultStateDir("lab")

	toml := filepath.Join(site, "site.toml")
	b, _ := os.ReadFile(toml)
	os.WriteFile(toml, []byte(strings.Replace(string(b), `name = "lab"`, `name = "lab2"`, 1)), 0o644)
	c = bootserver.Config{SiteDir: site}
	_, err := siteServices(&c, "", true, "off", nil, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "renamed?") || !strings.Contains(err.Error(), old) {
		t.Fatalf("renamed site: %v; want an error naming the old state %s", err, old)
	}
	renamed, _ := pki.DefaultStateDir("lab2")
	if _, err := os.Stat(filepath.Join(renamed, pki.CertFile)); err == nil {
		t.Fatal("a second CA was made anyway")
	}
	// The remedy the message gives: the old state, named.
	c = bootserver.Config{SiteDir: site}
	if _, err := siteServices(&c, old, true, "off", nil, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.CA.Cert().Raw, first) {
		t.Error("--state with the old directory did not give the site's CA")
	}
	// Another site directory with its own name is no rename.
	other := labSite(t)
	ob, _ := os.ReadFile(filepath.Join(other, "site.toml"))
	os.WriteFile(filepath.Join(other, "site.toml"), []byte(strings.Replace(string(ob), `name = "lab"`, `name = "lab3"`, 1)), 0o644)
	c = bootserver.Config{SiteDir: other}
	if _, err := siteServices(&c, "", true, "off", nil, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("a second site beside the first: %v", err)
	}
}

// plinth serve with a broken site on disk starts from the last good site
// its state keeps, found by the site directory even though the broken
// site.toml cannot give the name.
func TestServeStartsFromTheLastGoodSiteWhenTheSiteIsBroken(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	site := labSite(t)
	c := bootserver.Config{SiteDir: site, ArtifactsDir: t.TempDir(), PublicURL: "http://127.0.0.1:1"}
	if _, err := siteServices(&c, "", true, "off", nil, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if _, err := bootserver.New(c); err != nil { // keeps the last good site
		t.Fatal(err)
	}
	first := c.CA.Cert().Raw
	os.WriteFile(filepath.Join(site, "site.toml"), []byte("[site\nname = \"lab\"\n"), 0o644)

	c = bootserver.Config{SiteDir: site, ArtifactsDir: c.ArtifactsDir, PublicURL: "http://127.0.0.1:1"}
	if _, err := siteServices(&c, "", true, "off", nil, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("serve with a broken site and a last good one: %v", err)
	}
	if !bytes.Equal(c.CA.Cert().Raw, first) {
		t.Fatal("not the site's CA")
	}
	if _, err := bootserver.New(c); err != nil {
		t.Fatalf("the server with a broken site and a last good one: %v", err)
	}
}

// A site CA is made only when asked: serve without --init-ca on a state
// with no CA stops and says how (plinth ca init, or restore the backup),
// writing nothing; plinth ca init makes it once and prints its
// fingerprint; a second init refuses to replace it; serve then starts on
// it.
func TestASiteCAIsMadeOnlyWhenAsked(t *testing.T) {
	site := labSite(t)
	state := filepath.Join(t.TempDir(), "state")
	c := bootserver.Config{SiteDir: site}
	_, err := siteServices(&c, state, false, "off", nil, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "plinth ca init --site "+site) || !strings.Contains(err.Error(), "restore your backup") {
		t.Fatalf("serve without a CA: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, pki.CertFile)); err == nil {
		t.Fatal("serve made a CA without being asked")
	}
	out, err := run("ca", "init", "--site", site, "--state", state)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.Load(state)
	if err != nil {
		t.Fatal(err)
	}
	fp := api.CAFingerprint(ca.Cert().Raw)
	if !strings.Contains(out, fp) || !strings.Contains(out, "back it up") {
		t.Errorf("ca init printed %q, want the fingerprint %s and the backup reminder", out, fp)
	}
	if _, err := run("ca", "init", "--site", site, "--state", state); err == nil || !strings.Contains(err.Error(), "already holds a site CA ("+fp+")") {
		t.Errorf("a second init: %v", err)
	}
	if again, _ := pki.Load(state); !bytes.Equal(again.Cert().Raw, ca.Cert().Raw) {
		t.Error("the CA was replaced")
	}
	c = bootserver.Config{SiteDir: site}
	if _, err := siteServices(&c, state, false, "off", nil, slog.New(slog.DiscardHandler)); err != nil || !bytes.Equal(c.CA.Cert().Raw, ca.Cert().Raw) {
		t.Fatalf("serve on the CA init made: %v", err)
	}
}
