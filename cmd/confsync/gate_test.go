package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testpki"
	"github.com/confsync/confsync/internal/testutil"
)

const (
	gateTestACL = `
admins = ["root"]
[[acl]]
prefix = "/"
users = ["root"]
[[acl]]
prefix = "/conftool"
users = ["root", "conftool"]
`
	// Written by htpasswd -m: root-pw and conftool-pw.
	gateTestHtpasswd = `root:$apr1$fGLQ4S4A$QXFqKmEGcBIaI9OCECwqB/
conftool:$apr1$HmN3Vi6J$QhkRVahT7wVasiYAhCq9g.
`
)

func TestGateUsageAndConfigErrors(t *testing.T) {
	pki := testpki.New(t)
	dir := t.TempDir()
	badACL := filepath.Join(dir, "bad.toml")
	os.WriteFile(badACL, []byte("[[acl]]\nprefx = \"/a\"\n"), 0o600)
	tlsFlags := []string{"-tls-cert", pki.ServerCert, "-tls-key", pki.ServerKey}
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"help", []string{"-help"}, 0, "ACL file (TOML)"},
		{"unknown flag", []string{"-no-such-flag"}, 2, "no-such-flag"},
		{"stray argument", append(tlsFlags, "extra"), 2, `unexpected argument "extra"`},
		{"no TLS", nil, 2, "-tls-cert and -tls-key are required"},
		{"cert without key", []string{"-tls-cert", pki.ServerCert}, 2, "given together"},
		{"bad ACL", append(tlsFlags, "-acl", badACL), 2, "unknown key acl.prefx"},
		{"bad log level", append(tlsFlags, "-log-level", "loud"), 2, "-log-level"},
		{"bad upstream", append(tlsFlags, "-upstream", "etcd:2379"), 2, "etcd:2379"},
		{"negative rate", append(tlsFlags, "-client-rate", "-1"), 2, "-client-rate"},
		{"rate without burst", append(tlsFlags, "-user-burst", "0"), 2, "-user-burst"},
		{"access log in a missing directory", append(tlsFlags, "-access-log", filepath.Join(dir, "no", "access.log")), 2, "access log"},
		{"listen failure", append(tlsFlags, "-listen", "256.0.0.1:1"), 1, "listen on 256.0.0.1:1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), append([]string{"gate"}, c.args...), &stdout, &stderr)
			if code != c.code || !strings.Contains(stderr.String(), c.want) {
				t.Errorf("exit %d, want %d; stderr should contain %q:\n%s", code, c.code, c.want, stderr.String())
			}
		})
	}
	// Every flag of the issue is defined, with usage text.
	fs := gateFlagSet(&gateFlags{})
	for _, name := range []string{"listen", "upstream", "upstream-ca", "upstream-cert", "upstream-key", "tls-cert", "tls-key",
		"htpasswd", "acl", "read-only-file", "read-only", "metrics-addr", "log-level",
		"client-rate", "client-burst", "user-rate", "user-burst", "body-timeout", "body-min-rate",
		"access-log-max-size", "access-log-keep", "access-log-rate", "access-log-burst"} {
		if f := fs.Lookup(name); f == nil || f.Usage == "" {
			t.Errorf("flag -%s missing or undocumented", name)
		}
	}
}

// TestGateServes runs the command end to end: serves TLS, writes the access
// log, serves its own metrics and health, reopens the access log and
// reloads on SIGHUP, and exits 0 when its context ends.
func TestGateServes(t *testing.T) {
	etcd := etcdtest.New(t)
	pki := testpki.New(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "acl.toml"), []byte(gateTestACL), 0o600)
	os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(gateTestHtpasswd), 0o600)
	accessLog := filepath.Join(dir, "access.log")
	flagFile := filepath.Join(dir, "read-only")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr := &testutil.SyncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"gate",
			"-listen", "127.0.0.1:0", "-metrics-addr", "127.0.0.1:0",
			"-upstream", "http://127.0.0.1:1," + etcd.URL(), // a dead one first: failover
			"-tls-cert", pki.ServerCert, "-tls-key", pki.ServerKey,
			"-htpasswd", filepath.Join(dir, "htpasswd"), "-acl", filepath.Join(dir, "acl.toml"),
			"-read-only-file", flagFile, "-access-log", accessLog, "-log-format", "json",
		}, io.Discard, stderr)
	}()
	addr := waitForLog(t, stderr, `"msg":"gate listening","addr":"([^"]+)"`)
	metricsAddr := waitForLog(t, stderr, `"msg":"serving metrics","addr":"([^"]+)"`)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(false)}}
	defer client.CloseIdleConnections()
	put := func(key string) int {
		r, _ := http.NewRequest("PUT", "https://"+addr+"/v2/keys"+key, strings.NewReader("value=x"))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.SetBasicAuth("conftool", "conftool-pw")
		resp, err := client.Do(r)
		if err != nil {
			t.Fatalf("PUT %s: %v", key, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := put("/conftool/main"); s != 201 {
		t.Fatalf("PUT through the command: %d", s)
	}
	testutil.Eventually(t, "the access log line", func() bool {
		b, _ := os.ReadFile(accessLog)
		return strings.Contains(string(b), `"uri":"/v2/keys/conftool/main","proto":"HTTP/1.1","status":201`)
	})
	for path, want := range map[string]string{
		"/metrics": `confsync_gate_requests_total{code="201",method="PUT"} 1`,
		"/healthz": `"read_only":false`,
		"/readyz":  `"ready":true`,
	} {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("GET %s: %d, want %q in:\n%.2000s", path, resp.StatusCode, want, b)
		}
	}

	// logrotate: move the log away, SIGHUP, new lines go to a new file.
	os.Rename(accessLog, accessLog+".1")
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitForLog(t, stderr, `"msg":"(SIGHUP): reloading`)
	testutil.Eventually(t, "the access log to be reopened", func() bool {
		put("/conftool/after-hup")
		b, _ := os.ReadFile(accessLog)
		return strings.Contains(string(b), "/v2/keys/conftool/after-hup")
	})
	// The flag file switches the command's gate read-only.
	os.WriteFile(flagFile, nil, 0o600)
	testutil.Eventually(t, "read-only after the flag file appeared", func() bool { return put("/conftool/ro") == 403 })

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("gate exited %d after its context ended:\n%s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("gate did not return after its context ended")
	}
}

func waitForLog(t *testing.T, logs *testutil.SyncBuffer, pattern string) string {
	t.Helper()
	re := regexp.MustCompile(pattern)
	var m []string
	testutil.Eventually(t, "log matching "+pattern, func() bool {
		m = re.FindStringSubmatch(logs.String())
		return m != nil
	})
	return m[1]
}
