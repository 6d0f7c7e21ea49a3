package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testpki"
	"github.com/confsync/confsync/internal/testutil"
	client "go.etcd.io/etcd/client/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// runCLI runs confsync mirror to completion.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut testutil.SyncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code = run(ctx, append([]string{"mirror"}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

// cliMirror is confsync mirror running in the background.
type cliMirror struct {
	cancel context.CancelFunc
	done   chan int
	stderr *testutil.SyncBuffer
}

func startCLI(t *testing.T, args ...string) *cliMirror {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &cliMirror{cancel: cancel, done: make(chan int, 1), stderr: &testutil.SyncBuffer{}}
	go func() { c.done <- run(ctx, append([]string{"mirror"}, args...), io.Discard, c.stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-c.done:
		case <-time.After(30 * time.Second):
		}
	})
	return c
}

// stop sends what SIGTERM sends (a cancelled context) and returns the exit code.
func (c *cliMirror) stop(t *testing.T) int {
	t.Helper()
	c.cancel()
	return c.wait(t)
}

func (c *cliMirror) wait(t *testing.T) int {
	t.Helper()
	select {
	case code := <-c.done:
		c.done <- code
		return code
	case <-time.After(30 * time.Second):
		t.Fatalf("mirror did not exit; stderr:\n%s", c.stderr)
		return -1
	}
}

var addrRE = regexp.MustCompile(`address=(\S+)`)

// httpAddr waits for the mirror to log its HTTP address.
func (c *cliMirror) httpAddr(t *testing.T) string {
	t.Helper()
	var addr string
	mirrorWaitFor(t, "the HTTP address in the log", func() bool {
		m := addrRE.FindStringSubmatch(c.stderr.String())
		if m != nil {
			addr = m[1]
		}
		return addr != ""
	})
	return addr
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestBadUsageExits2(t *testing.T) {
	pki := testpki.New(t)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no arguments", nil, "SRC and DST"},
		{"one argument", []string{"http://127.0.0.1:1"}, "SRC and DST"},
		{"unknown flag", []string{"--nope", "http://a:1", "http://b:1"}, "-nope"},
		{"bad regex", []string{"--src-ignore-keys-regex", "/a(", "http://a:1", "http://b:1"}, "--src-ignore-keys-regex"},
		{"look-around regex", []string{"--src-ignore-keys-regex", "/a(?!b)", "http://a:1", "http://b:1"}, "RE2"},
		{"relative prefix", []string{"--dst-prefix", "replica", "http://a:1", "http://b:1"}, "--dst-prefix"},
		{"URL without scheme", []string{"127.0.0.1:2379", "http://b:1"}, "SRC"},
		{"URL with a path", []string{"http://a:1", "http://b:1/v2/keys"}, "--dst-prefix"},
		{"cert without key", []string{"--src-cert", pki.ClientCert, "https://a:1", "http://b:1"}, "--src-cert and --src-key"},
		{"missing CA file", []string{"--dst-ca", "/nonexistent/ca.pem", "http://a:1", "https://b:1"}, "--dst-ca"},
		{"password file without user", []string{"--src-password-file", pki.CAFile, "http://a:1", "http://b:1"}, "--src-user"},
		{"bad duration", []string{"--poll-timeout", "soon", "http://a:1", "http://b:1"}, "poll-timeout"},
		{"short poll", []string{"--poll-timeout", "100ms", "http://a:1", "http://b:1"}, "--poll-timeout"},
		{"verify without DST", []string{"verify", "http://a:1"}, "SRC and DST"},
		{"unknown API", []string{"--src-api", "v4", "http://a:1", "http://b:1"}, "--src-api"},
		{"v3 into v2", []string{"--src-api", "v3", "http://a:1", "http://b:1"}, "--dst-api v3"},
		{"lock TTL too short", []string{"--lock-ttl", "1s", "http://a:1", "http://b:1"}, "--lock-ttl"},
		{"lock TTL not whole seconds", []string{"--lock-ttl", "4500ms", "http://a:1", "http://b:1"}, "--lock-ttl"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, c.args...)
			if code != 2 || !strings.Contains(stderr, c.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and a message naming %q", code, stderr, c.want)
			}
		})
	}
	code, stdout, _ := runCLI(t, "-h")
	if code != 0 || !strings.Contains(stdout, "--src-prefix") && !strings.Contains(stdout, "-src-prefix") {
		t.Fatalf("-h: exit %d, output %q", code, stdout)
	}
}

func TestFlagSetHasEtcdmirrorFlags(t *testing.T) {
	fs := mirrorFlagSet(&mirrorFlags{}, "mirror")
	for _, name := range []string{"src-prefix", "dst-prefix", "strip", "src-ignore-keys-regex", "reload", "port", "debug", "d",
		"src-ca", "src-cert", "src-key", "src-insecure", "dst-ca", "dst-cert", "dst-key", "dst-insecure"} {
		if fs.Lookup(name) == nil {
			t.Errorf("flag --%s missing", name)
		}
	}
	if fs.Lookup("src-prefix").DefValue != "/" || fs.Lookup("dst-prefix").DefValue != "/replica" || fs.Lookup("port").DefValue != "8000" {
		t.Error("defaults differ from etcdmirror's")
	}
	if fs.Lookup("src-api").DefValue != "v2" || fs.Lookup("dst-api").DefValue != "v2" || fs.Lookup("standby").DefValue != "false" {
		t.Error("an unchanged etcdmirror command line must keep meaning v2 to v2, exiting when another mirror holds the destination")
	}
}

// The whole life of a replica as an operator drives it: a first start
// refuses without an index, --reload initialises it, the HTTP endpoints
// report, SIGTERM exits 0, verify agrees, tampering makes verify list the
// key and exit 1, and the next event on that key exits 1.
func TestCommandLineLifecycle(t *testing.T) {
	src, dst := etcdtest.New(t), etcdtest.New(t)
	src.Set(t, "/conftool/v1/pools/eqiad/mw1", `{"pooled":"yes"}`)
	common := []string{"--src-prefix", "/conftool", "--dst-prefix", "/conftool", "--strip", "--poll-timeout", "2s"}
	urls := []string{src.URL(), dst.URL()}

	code, _, stderr := runCLI(t, append(append([]string{"--port", "-1"}, common...), urls...)...)
	if code != 1 || !strings.Contains(stderr, "/__replication/conftool") || !strings.Contains(stderr, "--reload") {
		t.Fatalf("start without an index: exit %d, stderr:\n%s", code, stderr)
	}

	args := append(append([]string{"--reload", "--port", "0", "--listen-address", "127.0.0.1"}, common...), urls...)
	c := startCLI(t, args...)
	base := "http://" + c.httpAddr(t)
	mirrorWaitFor(t, "the reload to finish", func() bool {
		_, body := httpGet(t, base+"/status")
		return strings.Contains(body, `"phase": "streaming"`)
	})
	r := src.Set(t, "/conftool/v1/pools/eqiad/mw2", `{"pooled":"no"}`)
	mirrorWaitFor(t, "mw2 to be replicated", func() bool {
		return indexKeyValue(t, dst, "/__replication/conftool") >= r.Index
	})
	mirrorWaitFor(t, "/lag to read 0", func() bool {
		_, body := httpGet(t, base+"/lag")
		return body == "0\n"
	})
	status, body := httpGet(t, base+"/metrics")
	for _, want := range []string{
		fmt.Sprintf(`etcdmirror_lag{prefix="/conftool",url="%s"} 0`, dst.URL()),
		"etcdmirror_replicated_events_total 1",
		fmt.Sprintf(`etcdmirror_write_latency_count{prefix="/conftool",url="%s"} 1`, dst.URL()),
		`confsync_mirror_phase{phase="streaming"} 1`,
		`confsync_mirror_events_total{action="set",outcome="applied"} 1`,
		"confsync_mirror_lag_seconds 0",
		`confsync_mirror_resyncs_total{reason="reload"} 1`,
		"process_resident_memory_bytes",
	} {
		if status != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if status, body := httpGet(t, base+"/healthz"); status != 200 || !strings.HasPrefix(body, "ok") {
		t.Errorf("/healthz: %d %q", status, body)
	}
	if status, _ := httpGet(t, base+"/nope"); status != 404 {
		t.Errorf("/nope: %d", status)
	}
	if code := c.stop(t); code != 0 {
		t.Fatalf("SIGTERM: exit %d, stderr:\n%s", code, c.stderr)
	}

	code, stdout, stderr := runCLI(t, append(append([]string{"verify"}, common...), urls...)...)
	if code != 0 || !strings.Contains(stdout, "matches") {
		t.Fatalf("verify of equal trees: exit %d\n%s%s", code, stdout, stderr)
	}
	dst.Set(t, "/conftool/v1/pools/eqiad/mw1", `{"pooled":"inactive"}`)
	dst.Set(t, "/conftool/v1/stray", "x")
	code, stdout, _ = runCLI(t, append(append([]string{"verify"}, common...), urls...)...)
	if code != 1 || !strings.Contains(stdout, "/conftool/v1/pools/eqiad/mw1") || !strings.Contains(stdout, "inactive") ||
		!strings.Contains(stdout, "/conftool/v1/stray") {
		t.Fatalf("verify of differing trees: exit %d\n%s", code, stdout)
	}

	c = startCLI(t, append(append([]string{"--port", "-1"}, common...), urls...)...)
	ev := src.Set(t, "/conftool/v1/pools/eqiad/mw1", `{"pooled":"no"}`)
	if code := c.wait(t); code != 1 {
		t.Fatalf("divergence: exit %d, stderr:\n%s", code, c.stderr)
	}
	msg := c.stderr.String()
	for _, want := range []string{"/conftool/v1/pools/eqiad/mw1", "inactive", `pooled\":\"yes`, fmt.Sprint(ev.Index), "--reload"} {
		if !strings.Contains(msg, want) {
			t.Errorf("divergence message lacks %q:\n%s", want, msg)
		}
	}
}

// set-index is the switchover step: refused while the trees differ, and
// once they match it records the source index, from which the mirror then
// starts without a reload.
func TestSetIndex(t *testing.T) {
	src, dst := etcdtest.New(t), etcdtest.New(t)
	for _, k := range []string{"/conftool/a", "/conftool/b/c"} {
		src.Set(t, k, "v")
		dst.Set(t, k, "v")
	}
	dst.Set(t, "/conftool/b/c", "other")
	common := []string{"--src-prefix", "/conftool", "--dst-prefix", "/conftool", "--strip"}
	urls := []string{src.URL(), dst.URL()}

	code, stdout, stderr := runCLI(t, append(append([]string{"set-index"}, common...), urls...)...)
	if code != 1 || !strings.Contains(stdout, "/conftool/b/c") || !strings.Contains(stderr, "index not recorded") {
		t.Fatalf("set-index with differences: exit %d\n%s%s", code, stdout, stderr)
	}
	if !isAbsentKey(t, dst.Client(), "/__replication/conftool") {
		t.Fatal("set-index recorded an index although the trees differ")
	}

	dst.Set(t, "/conftool/b/c", "v")
	want := src.Index(t)
	code, stdout, stderr = runCLI(t, append(append([]string{"set-index"}, common...), urls...)...)
	if code != 0 || indexKeyValue(t, dst, "/__replication/conftool") != want {
		t.Fatalf("set-index: exit %d, index %d, want %d\n%s%s", code, indexKeyValue(t, dst, "/__replication/conftool"), want, stdout, stderr)
	}

	c := startCLI(t, append(append([]string{"--port", "-1", "--poll-timeout", "2s"}, common...), urls...)...)
	r := src.Set(t, "/conftool/a", "after switchover")
	mirrorWaitFor(t, "the write after set-index to arrive", func() bool {
		return indexKeyValue(t, dst, "/__replication/conftool") >= r.Index
	})
	if n := getNode(t, dst.Client(), "/conftool/a"); n.Value != "after switchover" {
		t.Fatalf("after switchover: %+v", n)
	}
	if code := c.stop(t); code != 0 || strings.Contains(c.stderr.String(), "resynchronising") {
		t.Fatalf("exit %d; stderr:\n%s", code, c.stderr)
	}
}

// TLS with verification and client certificates on both sides, several
// endpoints per side (the first one dead), credentials in the URL.
func TestTLSAndSeveralEndpoints(t *testing.T) {
	pki := testpki.New(t)
	tlsFiles := &etcdtest.TLSFiles{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, ClientCAFile: pki.CAFile}
	src := etcdtest.New(t, etcdtest.Options{TLS: tlsFiles})
	dst := etcdtest.New(t, etcdtest.Options{TLS: tlsFiles})
	tr := &http.Transport{TLSClientConfig: pki.ClientTLS(true)}
	srcKeys := src.Client(tr)
	if _, err := srcKeys.Set(context.Background(), "/src/k", "secret", nil); err != nil {
		t.Fatal(err)
	}
	dead := freeAddr(t)
	srcURLs := "https://" + dead + ",https://user:pw@" + src.Addr()
	dstURLs := "https://" + dead + "," + dst.URL()
	pwFile := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pwFile, []byte("pw\n"), 0o600)
	tlsArgs := []string{"--src-ca", pki.CAFile, "--src-cert", pki.ClientCert, "--src-key", pki.ClientKey,
		"--dst-ca", pki.CAFile, "--dst-cert", pki.ClientCert, "--dst-key", pki.ClientKey,
		"--dst-user", "user", "--dst-password-file", pwFile, "--request-timeout", "2s"}

	c := startCLI(t, append(tlsArgs, "--reload", "--port", "-1", "--poll-timeout", "2s", srcURLs, dstURLs)...)
	mirrorWaitFor(t, "the key to be replicated over TLS", func() bool {
		resp, err := dst.Client(tr).Get(context.Background(), "/replica/src/k", nil)
		return err == nil && resp.Node.Value == "secret"
	})
	if code := c.stop(t); code != 0 {
		t.Fatalf("exit %d:\n%s", code, c.stderr)
	}

	// Without the CA the server certificate is not trusted: the mirror
	// keeps retrying (and says why) rather than talk to an unverified peer.
	c = startCLI(t, "--port", "-1", "--dst-cert", pki.ClientCert, "--dst-key", pki.ClientKey, "--src-ca", pki.CAFile,
		"--src-cert", pki.ClientCert, "--src-key", pki.ClientKey, src.URL(), dst.URL())
	mirrorWaitFor(t, "a certificate error", func() bool {
		return strings.Contains(c.stderr.String(), "certificate")
	})
	if code := c.stop(t); code != 0 {
		t.Fatalf("exit %d:\n%s", code, c.stderr)
	}
}

func mirrorWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, what, cond)
}

// indexKeyValue reads a replication index key, 0 when absent.
func indexKeyValue(t *testing.T, s *etcdtest.Server, key string) uint64 {
	t.Helper()
	resp, err := s.Client().Get(context.Background(), key, nil)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(resp.Node.Value, 10, 64)
	return n
}

func isAbsentKey(t *testing.T, keys client.KeysAPI, key string) bool {
	t.Helper()
	_, err := keys.Get(context.Background(), key, &client.GetOptions{Quorum: true})
	if err != nil && !client.IsKeyNotFound(err) {
		t.Fatalf("get %s: %v", key, err)
	}
	return err != nil
}

func getNode(t *testing.T, keys client.KeysAPI, key string) *client.Node {
	t.Helper()
	resp, err := keys.Get(context.Background(), key, &client.GetOptions{Quorum: true})
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return resp.Node
}

// v3 to v3 through the command line: a second mirror on the same
// destination exits 1 naming the first, verify agrees with the first.
func TestCommandLineV3AndTheLock(t *testing.T) {
	src, dst := etcdtest.New(t), etcdtest.New(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{src.URL()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(context.Background(), "/conftool/v1/pools/eqiad/mw1", `{"pooled":"yes"}`); err != nil {
		t.Fatal(err)
	}
	common := []string{"--src-api", "v3", "--dst-api", "v3", "--src-prefix", "/conftool", "--dst-prefix", "/conftool", "--strip",
		"--poll-timeout", "2s", "--lock-ttl", "3s", "--port", "-1"}
	urls := []string{src.URL(), dst.URL()}
	first := startCLI(t, append(append([]string{"--reload"}, common...), urls...)...)
	mirrorWaitFor(t, "the first mirror to stream", func() bool {
		return strings.Contains(first.stderr.String(), "msg=resynchronised")
	})
	code, _, stderr := runCLI(t, append(common, urls...)...)
	if code != 1 || !strings.Contains(stderr, "/__replication/conftool.lock") || !strings.Contains(stderr, "--standby") {
		t.Fatalf("second mirror: exit %d, stderr:\n%s", code, stderr)
	}
	code, stdout, stderr := runCLI(t, append(append([]string{"verify"}, common...), urls...)...)
	if code != 0 || !strings.Contains(stdout, "matches") {
		t.Fatalf("verify: exit %d\n%s%s", code, stdout, stderr)
	}
	if code := first.stop(t); code != 0 {
		t.Fatalf("SIGTERM: exit %d, stderr:\n%s", code, first.stderr)
	}
}
