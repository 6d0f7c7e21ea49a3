package gate_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testpki"
	"github.com/confsync/confsync/internal/testutil"
)

// Users and passwords; hashes written by htpasswd -m (apr1) and -B (bcrypt).
const siteHtpasswd = `root:$apr1$fGLQ4S4A$QXFqKmEGcBIaI9OCECwqB/
conftool:$apr1$HmN3Vi6J$QhkRVahT7wVasiYAhCq9g.
pool-eqiad-appserver:$2y$04$VgFGnPSaKgA4icRrz4f63u4ZqUy3BgCn2IZmq7OTy5gM4GbP9QFBG
pool-eqiad-jobrunner:$apr1$IR2MoClr$wKbuGWVh9mXNkeRzSqZWp0
`

// conftool's password after a change, hashed with htpasswd -m.
const conftoolNewHash = "conftool:$apr1$HmwLlU2u$MgBHiPJl/jFyeU9tUJi7H1"

var passwords = map[string]string{
	"root":                 "root-pw",
	"conftool":             "conftool-pw",
	"pool-eqiad-appserver": "appserver-pw",
	"pool-eqiad-jobrunner": "jobrunner-pw",
}

const (
	wantUnauthorized = `{"errorCode":110,"message":"The request requires user authentication","cause":"Insufficient credentials","index":0}`
	wantReadOnly     = `{"errorCode":107,"message":"This cluster is in read-only mode","cause":"Cluster configured to be read-only","index":0}`
)

// harness is a real etcd behind a gate serving TLS on loopback.
type harness struct {
	t        *testing.T
	etcd     *etcdtest.Server
	srv      *gate.Server
	pki      *testpki.PKI
	dir      string
	cfg      gate.Config
	addr     string // host:port of the gate
	base     string // https://host:port
	client   *http.Client
	logs     *testutil.SyncBuffer
	served   chan error
	shutdown context.CancelFunc
}

type option func(*harness)

func withConfig(f func(*gate.Config)) option { return func(h *harness) { f(&h.cfg) } }

func withEtcd(e *etcdtest.Server) option { return func(h *harness) { h.etcd = e } }

// withPKI makes clients trust p's CA (the gate's certificate files are
// left to the caller).
func withPKI(p *testpki.PKI) option { return func(h *harness) { h.pki = p } }

func newHarness(t *testing.T, opts ...option) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), pki: testpki.New(t), logs: &testutil.SyncBuffer{}}
	write(t, filepath.Join(h.dir, "acl.toml"), gate.SiteACL)
	write(t, filepath.Join(h.dir, "htpasswd"), siteHtpasswd)
	h.cfg = gate.Config{
		TLSCertFile:  h.pki.ServerCert,
		TLSKeyFile:   h.pki.ServerKey,
		HtpasswdFile: filepath.Join(h.dir, "htpasswd"),
		ACLFile:      filepath.Join(h.dir, "acl.toml"),
		ReadOnlyFile: filepath.Join(h.dir, "read-only"),
		Logger:       slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, o := range opts {
		o(h)
	}
	if h.etcd == nil && len(h.cfg.Upstreams) == 0 {
		h.etcd = etcdtest.New(t)
	}
	if len(h.cfg.Upstreams) == 0 {
		h.cfg.Upstreams = []string{h.etcd.URL()}
	}
	h.start()
	return h
}

func (h *harness) start() {
	t := h.t
	t.Helper()
	srv, err := gate.New(h.cfg)
	if err != nil {
		t.Fatalf("gate.New: %v", err)
	}
	h.srv = srv
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	scheme := "https"
	if h.cfg.TLSCertFile == "" {
		scheme = "http"
	}
	h.base = scheme + "://" + h.addr
	ctx, cancel := context.WithCancel(context.Background())
	h.shutdown = cancel
	h.served = make(chan error, 1)
	go func() { h.served <- srv.Serve(ctx, ln) }()
	t.Cleanup(h.stop)
	h.client = &http.Client{
		Timeout:   60 * time.Second, // a hung request fails the test instead of the run
		Transport: &http.Transport{TLSClientConfig: h.pki.ClientTLS(false)},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	t.Cleanup(h.client.CloseIdleConnections)
	// Serve watches the configuration files before it answers anything, so
	// once this succeeds file changes are seen.
	testutil.Eventually(t, "gate to answer", func() bool {
		resp, err := h.client.Get(h.base + "/version")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
}

func (h *harness) stop() {
	if h.shutdown == nil {
		return
	}
	h.shutdown()
	h.shutdown = nil
	select {
	case err := <-h.served:
		if err != nil {
			h.t.Errorf("Serve: %v", err)
		}
		if err := h.srv.Close(); err != nil {
			h.t.Errorf("Close: %v", err)
		}
	case <-time.After(30 * time.Second):
		h.t.Errorf("Serve did not return after its context was cancelled")
	}
}

// response is what a client saw.
type response struct {
	status int
	header http.Header
	body   string
}

// req describes a request through the gate.
type req struct {
	method, path, body string
	user, password     string // user "" sends no credentials
	header             map[string]string
}

func (h *harness) do(r req) response {
	h.t.Helper()
	return h.doVia(h.client, r)
}

// doVia sends r with client c (see clientFrom).
func (h *harness) doVia(c *http.Client, r req) response {
	h.t.Helper()
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	hr, err := http.NewRequest(r.method, h.base+r.path, body)
	if err != nil {
		h.t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	if r.body != "" && !strings.HasPrefix(r.path, "/v3") && !strings.HasPrefix(r.path, "/v2/auth") {
		hr.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if r.user != "" {
		pw, ok := passwords[r.user]
		if r.password != "" || !ok {
			pw = r.password
		}
		hr.SetBasicAuth(r.user, pw)
	}
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	resp, err := c.Do(hr)
	if err != nil {
		h.t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("%s %s: read body: %v", r.method, r.path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// clientFrom is a client whose connections come from ip, another loopback
// address (127.0.0.0/8 is all loopback on Linux): another client to the
// gate's rate limits.
func (h *harness) clientFrom(ip string) *http.Client {
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr := &http.Transport{TLSClientConfig: h.pki.ClientTLS(false), DialContext: dialer.DialContext}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 60 * time.Second, Transport: tr}
}

// etcdValue reads a key directly from etcd, bypassing the gate.
func (h *harness) etcdValue(key string) (string, bool) {
	h.t.Helper()
	resp, err := http.Get(h.etcd.URL() + "/v2/keys" + key)
	if err != nil {
		h.t.Fatalf("direct GET %s: %v", key, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusNotFound {
		return "", false
	}
	if resp.StatusCode != http.StatusOK {
		h.t.Fatalf("direct GET %s: %s %s", key, resp.Status, b)
	}
	return string(b), true
}

// rawTLS sends text as-is over a new TLS connection and returns the
// connection and a reader positioned at the response.
func (h *harness) rawTLS(text string, nextProtos ...string) (*tls.Conn, *bufio.Reader) {
	h.t.Helper()
	cfg := h.pki.ClientTLS(false)
	cfg.NextProtos = nextProtos
	conn, err := tls.Dial("tcp", h.addr, cfg)
	if err != nil {
		h.t.Fatalf("TLS dial: %v", err)
	}
	h.t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, text); err != nil {
		h.t.Fatalf("write: %v", err)
	}
	return conn, bufio.NewReader(conn)
}

// raw sends one request as-is and reads the response.
func (h *harness) raw(text string) response {
	h.t.Helper()
	conn, br := h.rawTLS(text)
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		h.t.Fatalf("read response to %q: %v", firstLine(text), err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\r\n"); return l }

// metric returns the value of one sample of the gate's own /metrics.
func (h *harness) metric(name string) float64 {
	h.t.Helper()
	return scrape(h.t, h.srv.MetricsHandler(), name)
}

func scrape(t *testing.T, handler http.Handler, name string) float64 {
	t.Helper()
	rr := httptest.NewRecorder()
	handler.ServeHTTP(rr, httpRequest(http.MethodGet, "/metrics"))
	var total float64
	for line := range strings.Lines(rr.Body.String()) {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			fields := strings.Fields(line)
			if v, err := strconv.ParseFloat(fields[len(fields)-1], 64); err == nil {
				total += v
			}
		}
	}
	return total
}

func httpRequest(method, target string) *http.Request {
	return httptest.NewRequest(method, target, nil)
}

func write(t testing.TB, path, content string) {
	t.Helper()
	// Write then rename, as configuration management does, so the gate
	// never sees a half-written file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func form(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return v.Encode()
}
