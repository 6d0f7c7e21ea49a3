package gate_test

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/internal/testpki"
	"github.com/confsync/confsync/internal/testutil"
)

func (h *harness) putStatus(key, user, password string) int {
	h.t.Helper()
	return h.do(req{method: "PUT", path: "/v2/keys" + key, body: form("value", "x"), user: user, password: password}).status
}

func (h *harness) waitReloadError(kind string) {
	h.t.Helper()
	testutil.Eventually(h.t, "the failed "+kind+" reload to be logged", func() bool {
		return strings.Contains(h.logs.String(), "reload failed; keeping the previous configuration") &&
			strings.Contains(h.logs.String(), "file="+kind)
	})
}

// TestACLReload: a changed ACL takes effect without a restart; a broken one
// is refused, logged, and the previous ACL stays.
func TestACLReload(t *testing.T) {
	h := newHarness(t)
	acl := h.cfg.ACLFile
	if s := h.putStatus("/spicerack/x", "conftool", ""); s != 401 {
		t.Fatalf("conftool writing /spicerack before the change: %d", s)
	}
	write(t, acl, gate.SiteACL+"\n[[acl]]\nprefix = \"/spicerack\"\nusers = [\"root\", \"conftool\"]\n")
	testutil.Eventually(t, "the new ACL to let conftool write /spicerack", func() bool {
		return h.putStatus("/spicerack/x", "conftool", "") == 201 || h.putStatus("/spicerack/x", "conftool", "") == 200
	})

	write(t, acl, gate.SiteACL+"\n[[acl]]\nprefix = \"/spicerack\"\nuser = [\"conftool\"]\n")
	h.waitReloadError("acl")
	if !strings.Contains(h.logs.String(), "unknown key acl.user") {
		t.Errorf("the log does not say what is wrong:\n%s", h.logs.String())
	}
	if s := h.putStatus("/spicerack/y", "conftool", ""); s != 201 {
		t.Errorf("after a broken ACL, the previous ACL should stay: PUT /spicerack as conftool = %d", s)
	}
	if h.metric(`confsync_gate_config_reloads_total{file="acl",result="error"}`) < 1 {
		t.Error("failed reload not counted")
	}
}

// TestHtpasswdReloadDropsTheCache: after a password change the old
// password, though cached as verified, no longer works.
func TestHtpasswdReloadDropsTheCache(t *testing.T) {
	h := newHarness(t)
	for range 2 { // the second is answered from the cache
		if s := h.putStatus("/conftool/x", "conftool", ""); s != 201 && s != 200 {
			t.Fatalf("PUT with the current password: %d", s)
		}
	}
	if h.metric(`confsync_gate_credential_checks_total{result="cached"}`) < 1 {
		t.Error("second check of the same credentials did not hit the cache")
	}
	changed := strings.Replace(siteHtpasswd, "conftool:$apr1$HmN3Vi6J$QhkRVahT7wVasiYAhCq9g.", conftoolNewHash, 1)
	write(t, h.cfg.HtpasswdFile, changed)
	testutil.Eventually(t, "the old password to be refused", func() bool { return h.putStatus("/conftool/x", "conftool", "") == 401 })
	if s := h.putStatus("/conftool/x", "conftool", "conftool-pw2"); s != 200 {
		t.Errorf("PUT with the new password: %d", s)
	}

	write(t, h.cfg.HtpasswdFile, changed+"broken:{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=\n")
	h.waitReloadError("htpasswd")
	if !strings.Contains(h.logs.String(), `user \"broken\": unsupported`) && !strings.Contains(h.logs.String(), `{SHA}`) {
		t.Errorf("the log does not name the bad entry:\n%s", h.logs.String())
	}
	if s := h.putStatus("/conftool/x", "conftool", "conftool-pw2"); s != 200 {
		t.Errorf("after a broken htpasswd the previous users should stay: %d", s)
	}
}

// TestCertificateReload: new certificate files are served to new
// connections; a broken pair is refused and the old one kept.
func TestCertificateReload(t *testing.T) {
	h := newHarness(t)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	copyFile(t, h.pki.ServerCert, cert)
	copyFile(t, h.pki.ServerKey, key)
	h2 := newHarness(t, withEtcd(h.etcd), withPKI(h.pki), withConfig(func(c *gate.Config) { c.TLSCertFile, c.TLSKeyFile = cert, key }))

	next := testpki.New(t) // a new CA and server certificate
	copyFile(t, next.ServerKey, key)
	copyFile(t, next.ServerCert, cert)
	testutil.Eventually(t, "the new certificate to be served", func() bool {
		conn, err := tls.Dial("tcp", h2.addr, next.ClientTLS(false))
		if err != nil {
			return false
		}
		conn.Close()
		return true
	})

	os.WriteFile(cert+".tmp", []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), 0o600)
	os.Rename(cert+".tmp", cert)
	h2.waitReloadError("tls")
	conn, err := tls.Dial("tcp", h2.addr, next.ClientTLS(false))
	if err != nil {
		t.Fatalf("after a broken certificate file the previous certificate should stay: %v", err)
	}
	conn.Close()
}

// TestReloadReportsErrors: Server.Reload (what SIGHUP calls) returns the
// failure, naming the file.
func TestReloadReportsErrors(t *testing.T) {
	h := newHarness(t)
	if err := h.srv.Reload(); err != nil {
		t.Fatalf("Reload with good files: %v", err)
	}
	os.WriteFile(h.cfg.ACLFile, []byte("[[acl]]\nprefix = \"conftool\"\nusers = [\"root\"]\n"), 0o600)
	err := h.srv.Reload()
	if err == nil || !strings.Contains(err.Error(), h.cfg.ACLFile) || !strings.Contains(err.Error(), "must start with /") {
		t.Errorf("Reload with a bad ACL: %v", err)
	}
	if s := h.putStatus("/conftool/x", "conftool", ""); s != 201 {
		t.Errorf("previous ACL not kept: %d", s)
	}
}

// TestReloadChecksTheFlagFile: Reload (SIGHUP) notices the read-only flag
// file even when nothing watches the directory (a Server used as a plain
// handler).
func TestReloadChecksTheFlagFile(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "acl.toml"), gate.SiteACL)
	write(t, filepath.Join(dir, "htpasswd"), siteHtpasswd)
	flag := filepath.Join(dir, "ro")
	srv, err := gate.New(gate.Config{
		Upstreams:    []string{"http://127.0.0.1:1"},
		ACLFile:      filepath.Join(dir, "acl.toml"),
		HtpasswdFile: filepath.Join(dir, "htpasswd"),
		ReadOnlyFile: flag,
	})
	if err != nil {
		t.Fatal(err)
	}
	write(t, flag, "")
	if srv.ReadOnly() {
		t.Fatal("read-only before anything looked at the flag file")
	}
	if err := srv.Reload(); err != nil || !srv.ReadOnly() {
		t.Errorf("after Reload with the flag file present: read-only %v (%v)", srv.ReadOnly(), err)
	}
	os.Remove(flag)
	if srv.Reload(); srv.ReadOnly() {
		t.Error("still read-only after Reload with the flag file gone")
	}
}

// TestNewRefusesBadConfiguration: every bad file or setting is refused at
// start with an error naming it.
func TestNewRefusesBadConfiguration(t *testing.T) {
	pki := testpki.New(t)
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		return p
	}
	goodACL := file("acl.toml", gate.SiteACL)
	goodUsers := file("htpasswd", siteHtpasswd)
	base := gate.Config{
		Upstreams:    []string{"http://127.0.0.1:2379"},
		TLSCertFile:  pki.ServerCert,
		TLSKeyFile:   pki.ServerKey,
		HtpasswdFile: goodUsers,
		ACLFile:      goodACL,
	}
	if _, err := gate.New(base); err != nil {
		t.Fatalf("good configuration refused: %v", err)
	}
	garbage := file("garbage.pem", "not a certificate")
	for _, c := range []struct {
		name   string
		change func(*gate.Config)
		want   []string
	}{
		{"unknown ACL key", func(c *gate.Config) { c.ACLFile = file("bad-key.toml", "admins = [\"root\"]\nsuperusers = [\"x\"]\n") }, []string{"bad-key.toml", "superusers"}},
		{"bad ACL prefix", func(c *gate.Config) {
			c.ACLFile = file("bad-prefix.toml", "[[acl]]\nprefix = \"/conftool/\"\nusers = [\"root\"]\n")
		}, []string{"bad-prefix.toml", "/conftool/"}},
		{"missing ACL", func(c *gate.Config) { c.ACLFile = filepath.Join(dir, "nope.toml") }, []string{"nope.toml"}},
		{"unknown hash", func(c *gate.Config) {
			c.HtpasswdFile = file("sha.htpasswd", "root:{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=\n")
		}, []string{"sha.htpasswd:1", "{SHA}"}},
		{"ACL users without htpasswd", func(c *gate.Config) { c.HtpasswdFile = "" }, []string{"acl.toml", "no htpasswd"}},
		{"garbage certificate", func(c *gate.Config) { c.TLSCertFile = garbage }, []string{"garbage.pem"}},
		{"certificate without key", func(c *gate.Config) { c.TLSKeyFile = "" }, []string{"TLS certificate and key"}},
		{"key of another certificate", func(c *gate.Config) { c.TLSKeyFile = pki.ClientKey }, []string{pki.ServerCert, pki.ClientKey}},
		{"missing upstream CA", func(c *gate.Config) { c.UpstreamCAFile = filepath.Join(dir, "ca-nope.pem") }, []string{"ca-nope.pem"}},
		{"garbage upstream CA", func(c *gate.Config) { c.UpstreamCAFile = garbage }, []string{"garbage.pem", "no PEM certificate"}},
		{"upstream cert without key", func(c *gate.Config) { c.UpstreamCertFile = pki.ClientCert }, []string{"upstream client certificate and key"}},
		{"no upstream", func(c *gate.Config) { c.Upstreams = nil }, []string{"no upstream"}},
		{"upstream with a path", func(c *gate.Config) { c.Upstreams = []string{"http://127.0.0.1:2379/v2"} }, []string{"127.0.0.1:2379/v2"}},
		{"upstream scheme", func(c *gate.Config) { c.Upstreams = []string{"unix:///run/etcd.sock"} }, []string{"unix:///run/etcd.sock"}},
		{"read-only file in a missing directory", func(c *gate.Config) { c.ReadOnlyFile = filepath.Join(dir, "nodir", "ro") }, []string{"nodir"}},
		{"bad advertise URL", func(c *gate.Config) { c.AdvertiseURL = "conf1001:4001" }, []string{"conf1001:4001"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := base
			c.change(&cfg)
			_, err := gate.New(cfg)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	write(t, to, string(b))
}
