package gate_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	client "go.etcd.io/etcd/client/v2"
)

// watch is an open wait=true request through the gate.
type watch struct {
	key  string
	resp *http.Response
	body chan string
}

// openWatch sends GET key?wait=true and returns once the response headers
// are in: a gate that buffered would block here until the event.
func (h *harness) openWatch(client *http.Client, key string, waitIndex uint64) *watch {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	target := fmt.Sprintf("%s/v2/keys%s?wait=true&waitIndex=%d", h.base, key, waitIndex)
	hr, _ := http.NewRequest(http.MethodGet, target, nil)
	type result struct {
		resp *http.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := client.Do(hr)
		done <- result{resp, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		h.t.Fatalf("watch %s: no response headers within 30s (buffered by the proxy?)", key)
	}
	if r.err != nil {
		h.t.Fatalf("watch %s: %v", key, r.err)
	}
	if r.resp.StatusCode != http.StatusOK || r.resp.Header.Get("X-Etcd-Index") == "" {
		h.t.Fatalf("watch %s: %s, X-Etcd-Index %q", key, r.resp.Status, r.resp.Header.Get("X-Etcd-Index"))
	}
	w := &watch{key: key, resp: r.resp, body: make(chan string, 1)}
	go func() {
		b, _ := io.ReadAll(r.resp.Body)
		r.resp.Body.Close()
		w.body <- string(b)
	}()
	h.t.Cleanup(func() { r.resp.Body.Close() })
	return w
}

// event waits for the watch to deliver and returns the event's value.
func (w *watch) event(t *testing.T) string {
	t.Helper()
	select {
	case b := <-w.body:
		var ev struct {
			Action string
			Node   struct{ Key, Value string }
		}
		if err := json.Unmarshal([]byte(b), &ev); err != nil {
			t.Fatalf("watch %s delivered %q: %v", w.key, b, err)
		}
		if ev.Node.Key != w.key {
			t.Fatalf("watch %s delivered an event for %s", w.key, ev.Node.Key)
		}
		return ev.Node.Value
	case <-time.After(30 * time.Second):
		t.Fatalf("watch %s delivered nothing within 30s", w.key)
		return ""
	}
}

// pending reports whether the watch is still open and has delivered nothing.
func (w *watch) pending() bool {
	select {
	case b := <-w.body:
		w.body <- b
		return false
	default:
		return true
	}
}

func (h *harness) watchClient() *http.Client {
	// A transport of its own: each watch holds a connection.
	tr := &http.Transport{TLSClientConfig: h.pki.ClientTLS(false), MaxConnsPerHost: 0}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// TestWatchHeadersArriveBeforeTheEvent is the third nginx flaw: with
// buffering on, a long poll's headers were held until the event.
func TestWatchHeadersArriveBeforeTheEvent(t *testing.T) {
	h := newHarness(t)
	set := h.etcd.Set(t, "/conftool/w", "before")
	w := h.openWatch(h.watchClient(), "/conftool/w", set.Node.ModifiedIndex+1)
	if te := w.resp.TransferEncoding; len(te) != 1 || te[0] != "chunked" {
		t.Errorf("HTTP/1.1 watch Transfer-Encoding = %v, want chunked", te)
	}
	if got := h.metric("confsync_gate_open_watches"); got != 1 {
		t.Errorf("confsync_gate_open_watches = %v with one watch open", got)
	}
	if !w.pending() {
		t.Fatal("watch returned before any event")
	}
	h.etcd.Set(t, "/conftool/w", "after")
	if v := w.event(t); v != "after" {
		t.Errorf("watch delivered %q", v)
	}
	testutil.Eventually(t, "confsync_gate_open_watches back to 0", func() bool { return h.metric("confsync_gate_open_watches") == 0 })
}

// TestHTTP10WatchLikePybal: pybal speaks HTTP/1.0 over TLS without ALPN,
// one request per connection, and reads the body until the connection
// closes. Headers must come at once and the body must not be chunked.
func TestHTTP10WatchLikePybal(t *testing.T) {
	h := newHarness(t)
	set := h.etcd.Set(t, "/conftool/v1/pools/eqiad/appserver/apache2/mw1", `{"pooled":"yes","weight":10}`)
	request := fmt.Sprintf("GET /v2/keys/conftool/v1/pools/eqiad/appserver/apache2/?recursive=true&wait=true&waitIndex=%d HTTP/1.0\r\n"+
		"Host: %s\r\nUser-Agent: PyBal/1.0\r\n\r\n", set.Node.ModifiedIndex+1, h.addr)
	conn, br := h.rawTLS(request) // no ALPN, like Twisted's connectSSL
	if p := conn.ConnectionState().NegotiatedProtocol; p != "" {
		t.Errorf("negotiated %q without ALPN offered", p)
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no response headers to an HTTP/1.0 watch: %v", err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("X-Etcd-Index") == "" {
		t.Fatalf("HTTP/1.0 watch: %s, X-Etcd-Index %q", resp.Status, resp.Header.Get("X-Etcd-Index"))
	}
	if len(resp.TransferEncoding) != 0 || resp.ContentLength != -1 || !resp.Close {
		t.Errorf("HTTP/1.0 response must be close-delimited: Transfer-Encoding %v, Content-Length %d, close %v",
			resp.TransferEncoding, resp.ContentLength, resp.Close)
	}
	h.etcd.Set(t, "/conftool/v1/pools/eqiad/appserver/apache2/mw1", `{"pooled":"no","weight":10}`)
	body, err := io.ReadAll(resp.Body) // ends only when the gate closes the connection
	if err != nil {
		t.Fatalf("reading the event until close: %v", err)
	}
	if !strings.Contains(string(body), `"action":"set"`) || !strings.Contains(string(body), `pooled\":\"no`) {
		t.Errorf("HTTP/1.0 watch delivered %s", body)
	}
}

// TestALPN: curl -0 offers only http/1.0, which Go refuses unless listed;
// h2 is not offered.
func TestALPN(t *testing.T) {
	h := newHarness(t)
	for _, c := range []struct {
		offer []string
		want  string
	}{
		{[]string{"http/1.0"}, "http/1.0"},
		{[]string{"http/1.1"}, "http/1.1"},
		{[]string{"h2", "http/1.1"}, "http/1.1"},
		{nil, ""},
	} {
		conn, br := h.rawTLS("GET /version HTTP/1.0\r\nHost: x\r\n\r\n", c.offer...)
		if got := conn.ConnectionState().NegotiatedProtocol; got != c.want {
			t.Errorf("ALPN offer %v: negotiated %q, want %q", c.offer, got, c.want)
		}
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("ALPN offer %v: GET /version: %v %v", c.offer, resp, err)
		}
	}
	cfg := h.pki.ClientTLS(false)
	cfg.MaxVersion = tls.VersionTLS11
	if conn, err := tls.Dial("tcp", h.addr, cfg); err == nil {
		conn.Close()
		t.Error("TLS 1.1 handshake accepted")
	}
	cfg = h.pki.ClientTLS(false)
	cfg.MaxVersion = tls.VersionTLS12
	cfg.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}
	if conn, err := tls.Dial("tcp", h.addr, cfg); err == nil {
		conn.Close()
		t.Error("TLS 1.2 with CBC-only cipher suites accepted")
	}
	cfg.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
	conn, err := tls.Dial("tcp", h.addr, cfg)
	if err != nil {
		t.Fatalf("TLS 1.2 with ECDHE-ECDSA-AES128-GCM refused: %v", err)
	}
	conn.Close()
}

// TestReadOnlyFlipsUnderOpenWatches opens watches (HTTP/1.1 and pybal's
// HTTP/1.0), flips read-only by the flag file, by SetReadOnly and back,
// and checks that writes are refused and accepted accordingly while every
// watch stays open and still delivers etcd's events.
func TestReadOnlyFlipsUnderOpenWatches(t *testing.T) {
	h := newHarness(t)
	client := h.watchClient()
	flag := h.cfg.ReadOnlyFile

	put := func(key string) int {
		return h.do(req{method: "PUT", path: "/v2/keys" + key, body: form("value", "x"), user: "conftool"}).status
	}
	openAll := func(round string) []*watch {
		var ws []*watch
		for i := range 5 {
			key := fmt.Sprintf("/conftool/%s/w%d", round, i)
			set := h.etcd.Set(t, key, "0")
			ws = append(ws, h.openWatch(client, key, set.Node.ModifiedIndex+1))
		}
		return ws
	}
	deliverAll := func(ws []*watch, value string) {
		for _, w := range ws {
			if !w.pending() {
				t.Fatalf("watch %s ended before its event", w.key)
			}
			h.etcd.Set(t, w.key, value) // straight to etcd, as etcd-mirror writes
		}
		for _, w := range ws {
			if v := w.event(t); v != value {
				t.Errorf("watch %s delivered %q, want %q", w.key, v, value)
			}
		}
	}

	// Flag file appears: read-only.
	ws := openAll("a")
	testutil.Eventually(t, "5 open watches", func() bool { return h.metric("confsync_gate_open_watches") == 5 })
	began := time.Now()
	write(t, flag, "switchover in progress\n")
	testutil.Eventually(t, "writes refused after the flag file appeared", func() bool { return put("/conftool/probe") == http.StatusForbidden })
	t.Logf("read-only %v after the flag file appeared", time.Since(began).Round(time.Millisecond))
	if h.metric("confsync_gate_read_only") != 1 || !h.srv.ReadOnly() {
		t.Error("confsync_gate_read_only metric / ReadOnly() do not report read-only")
	}
	deliverAll(ws, "during read-only")

	// Flag file goes away: writable again, watches opened while read-only survive.
	ws = openAll("b")
	began = time.Now()
	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "writes accepted after the flag file went away", func() bool {
		s := put("/conftool/probe")
		return s == http.StatusOK || s == http.StatusCreated
	})
	t.Logf("writable %v after the flag file went away", time.Since(began).Round(time.Millisecond))
	deliverAll(ws, "after read-only")

	// SetReadOnly from code, under watches.
	ws = openAll("c")
	h.srv.SetReadOnly(true)
	rejected := h.metric("confsync_gate_read_only_rejections_total")
	if s := put("/conftool/probe"); s != http.StatusForbidden {
		t.Errorf("PUT after SetReadOnly(true): %d", s)
	}
	if got := h.metric("confsync_gate_read_only_rejections_total"); got != rejected+1 {
		t.Errorf("confsync_gate_read_only_rejections_total went from %v to %v after one refused PUT", rejected, got)
	}
	deliverAll(ws, "set by call")
	h.srv.SetReadOnly(false)
	if s := put("/conftool/probe"); s != http.StatusOK {
		t.Errorf("PUT after SetReadOnly(false): %d", s)
	}
	testutil.Eventually(t, "confsync_gate_open_watches back to 0", func() bool { return h.metric("confsync_gate_open_watches") == 0 })
}

// TestReadOnlyFlagSourcesCombine: the gate is read-only while any source
// says so.
func TestReadOnlyFlagSourcesCombine(t *testing.T) {
	dir := t.TempDir()
	flag := dir + "/ro"
	write(t, flag, "")
	h := newHarness(t, withConfig(func(c *gate.Config) { c.ReadOnlyFile = flag }))
	if !h.srv.ReadOnly() {
		t.Fatal("flag file present at start: not read-only")
	}
	h.srv.SetReadOnly(false) // does not override the file
	if got := h.do(req{method: "PUT", path: "/v2/keys/conftool/x", body: form("value", "x"), user: "conftool"}); got.status != 403 {
		t.Errorf("PUT with the flag file present: %d", got.status)
	}
	h2 := newHarness(t, withConfig(func(c *gate.Config) { c.ReadOnly = true }))
	if got := h2.do(req{method: "DELETE", path: "/v2/keys/conftool/x", user: "root"}); got.status != 403 || got.body != wantReadOnly {
		t.Errorf("DELETE with Config.ReadOnly: %d %s", got.status, got.body)
	}
}

// newProcessHarness is a gate in front of Debian's etcd running as a
// process of its own: the only etcd whose watchers a test may count
// (reading /v2/stats/store of an in-process etcd 3.5 races with watchers
// going away inside etcd, and fails -race runs).
func newProcessHarness(t *testing.T) (*harness, *etcdtest.ProcessCluster) {
	pc := etcdtest.NewProcessCluster(t, 1)
	h := newHarness(t, withConfig(func(c *gate.Config) { c.Upstreams = []string{pc.URL(0)} }))
	return h, pc
}

// processSet writes a key straight to the process etcd.
func processSet(t *testing.T, pc *etcdtest.ProcessCluster, key, value string) *client.Response {
	t.Helper()
	resp, err := pc.Client().Set(context.Background(), key, value, nil)
	if err != nil {
		t.Fatalf("set %s: %v", key, err)
	}
	return resp
}

// TestWatchConnectionIsKeptAlive: after a watch delivers, an HTTP/1.1
// client reuses the same connection for its next request, as through nginx
// (keepalive_timeout 3600).
func TestWatchConnectionIsKeptAlive(t *testing.T) {
	h := newHarness(t)
	client := h.watchClient()
	set := h.etcd.Set(t, "/conftool/ka", "0")
	for i := range 3 {
		var reused []bool
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = append(reused, info.Reused) }}
		ctx := httptrace.WithClientTrace(context.Background(), trace)
		hr, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s/v2/keys/conftool/ka?wait=true&waitIndex=%d", h.base, set.Node.ModifiedIndex+1), nil)
		resp, err := client.Do(hr)
		if err != nil {
			t.Fatal(err)
		}
		set = h.etcd.Set(t, "/conftool/ka", fmt.Sprint(i+1))
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !strings.Contains(string(b), fmt.Sprintf(`"value":"%d"`, i+1)) {
			t.Fatalf("watch %d: %q %v", i, b, err)
		}
		if i > 0 && (len(reused) != 1 || !reused[0]) {
			t.Errorf("watch %d did not reuse the connection of the previous one", i)
		}
	}
	// An ordinary request on the same connection, after the watches.
	var reused bool
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }})
	hr, _ := http.NewRequestWithContext(ctx, "GET", h.base+"/v2/keys/conftool/ka", nil)
	if status, body := send(t, client, hr); status != 200 || !reused || !strings.Contains(body, `"value":"3"`) {
		t.Errorf("GET after the watches: %d reused=%v %s", status, reused, body)
	}
}

// TestAbandonedWatchIsCancelledUpstream: a client that goes away must not
// leave its watcher behind in etcd (nor a connection in the gate).
func TestAbandonedWatchIsCancelledUpstream(t *testing.T) {
	h, pc := newProcessHarness(t)
	set := processSet(t, pc, "/conftool/gone", "0")
	var conns []io.Closer
	for range 3 {
		request := fmt.Sprintf("GET /v2/keys/conftool/gone?wait=true&waitIndex=%d HTTP/1.1\r\nHost: x\r\n\r\n", set.Node.ModifiedIndex+1)
		conn, br := h.rawTLS(request)
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("watch: %v", err)
		}
		conns = append(conns, conn)
	}
	testutil.Eventually(t, "etcd to count 3 watchers", func() bool { return pc.WatcherCount(t, 0) == 3 })
	// The store statistics pass through the gate, as through nginx.
	if got := h.do(req{method: "GET", path: "/v2/stats/store"}); got.status != 200 || !strings.Contains(got.body, `"watchers":3`) {
		t.Errorf("GET /v2/stats/store through the gate: %d %s", got.status, got.body)
	}
	for _, c := range conns {
		c.Close()
	}
	testutil.Eventually(t, "etcd's watchers to be cancelled", func() bool { return pc.WatcherCount(t, 0) == 0 })
	testutil.Eventually(t, "confsync_gate_open_watches back to 0", func() bool { return h.metric("confsync_gate_open_watches") == 0 })
}

// TestShutdownCutsWatches: Serve returns when its context ends even with
// watches open, and the watching clients see their connections close.
func TestShutdownCutsWatches(t *testing.T) {
	h, pc := newProcessHarness(t)
	set := processSet(t, pc, "/conftool/shutdown", "0")
	w := h.openWatch(h.watchClient(), "/conftool/shutdown", set.Node.ModifiedIndex+1)
	testutil.Eventually(t, "etcd to count the watcher", func() bool { return pc.WatcherCount(t, 0) == 1 })
	h.stop()
	select {
	case b := <-w.body:
		if strings.Contains(b, `"action"`) {
			t.Errorf("watch delivered %q at shutdown", b)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("watch still open 30s after shutdown")
	}
	testutil.Eventually(t, "etcd's watcher to be cancelled", func() bool { return pc.WatcherCount(t, 0) == 0 })
}

// TestSlowAndHugeRequests: a client dribbling its headers is cut off, and
// headers beyond the limit are refused, before anything reaches etcd.
func TestSlowAndHugeRequests(t *testing.T) {
	h := newHarness(t, withConfig(func(c *gate.Config) {
		c.ReadHeaderTimeout = 500 * time.Millisecond
		c.MaxHeaderBytes = 8 << 10
	}))
	conn, br := h.rawTLS("GET /version HTTP/1.1\r\nHost: x\r\n") // and never the blank line
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Error("a request whose headers never end got an answer")
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Error("the gate kept a slow client's connection open past ReadHeaderTimeout")
	}

	huge := "GET /version HTTP/1.1\r\nHost: x\r\nX-Filler: " + strings.Repeat("a", 64<<10) + "\r\n\r\n"
	if got := h.raw(huge); got.status != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB of headers: %d, want 431", got.status)
	}
}
