package gate_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
)

func (h *harness) value(key string) (string, int) {
	h.t.Helper()
	got := h.do(req{method: "GET", path: "/v2/keys" + key})
	var r struct{ Node struct{ Value string } }
	json.Unmarshal([]byte(got.body), &r)
	return r.Node.Value, got.status
}

// TestFailoverBetweenUpstreams: two etcd clusters behind one gate (the
// value of /which tells them apart). When the one in use stops, reads and
// writes go to the other without a failed request.
func TestFailoverBetweenUpstreams(t *testing.T) {
	one, two := etcdtest.New(t), etcdtest.New(t)
	one.Set(t, "/which", "one")
	two.Set(t, "/which", "two")
	h := newHarness(t, withEtcd(one), withConfig(func(c *gate.Config) {
		c.Upstreams = []string{one.URL(), two.URL()}
	}))
	if v, status := h.value("/which"); v != "one" {
		t.Fatalf("first upstream not used: %d %q", status, v)
	}

	one.Stop()
	if v, status := h.value("/which"); v != "two" {
		t.Fatalf("after stopping the first upstream: %d %q, want the second's value", status, v)
	}
	if got := h.do(req{method: "PUT", path: "/v2/keys/conftool/after-failover", body: form("value", "x"), user: "conftool"}); got.status != 201 {
		t.Fatalf("PUT after failover: %d %s", got.status, got.body)
	}
	if h.metric("confsync_gate_upstream_failovers_total") < 1 || h.metric("confsync_gate_upstream_errors_total") < 1 {
		t.Error("failover not counted in confsync_gate_upstream_failovers_total / confsync_gate_upstream_errors_total")
	}
	if !strings.Contains(h.logs.String(), "failed over to another upstream") {
		t.Error("failover not logged")
	}

	// The gate stays on the second; when that one stops, a write (whose body
	// cannot have been sent anywhere yet) goes back to the first.
	if err := one.Restart(); err != nil {
		t.Fatal(err)
	}
	two.Stop()
	if got := h.do(req{method: "PUT", path: "/v2/keys/conftool/back", body: form("value", "y"), user: "conftool"}); got.status != 201 {
		t.Fatalf("PUT after the second upstream stopped: %d %s", got.status, got.body)
	}
	if _, err := one.Client().Get(t.Context(), "/conftool/back", nil); err != nil {
		t.Errorf("the write did not land on the first upstream: %v", err)
	}
}

// TestUpstreamDown: with no etcd reachable the gate answers 502 with an
// etcd-shaped body, /readyz says so, and it recovers when etcd is back.
func TestUpstreamDown(t *testing.T) {
	h := newHarness(t)
	h.etcd.Set(t, "/k", "v")
	h.etcd.Stop()
	got := h.do(req{method: "GET", path: "/v2/keys/k"})
	if got.status != http.StatusBadGateway || !strings.Contains(got.body, `"errorCode":300`) {
		t.Errorf("GET with etcd down: %d %s", got.status, got.body)
	}
	ready := httptest.NewRecorder()
	h.srv.MetricsHandler().ServeHTTP(ready, httpRequest("GET", "/readyz"))
	if ready.Code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with etcd down: %d %s", ready.Code, ready.Body)
	}
	if err := h.etcd.Restart(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "reads to work again after etcd restarted", func() bool {
		v, status := h.value("/k")
		return status == 200 && v == "v"
	})
	ready = httptest.NewRecorder()
	h.srv.MetricsHandler().ServeHTTP(ready, httpRequest("GET", "/readyz"))
	if ready.Code != http.StatusOK {
		t.Errorf("/readyz with etcd up: %d %s", ready.Code, ready.Body)
	}
}

// TestHTTPSUpstreamWithClientCertificate: etcd serving https and requiring
// client certificates, the gate verifying it with the CA.
func TestHTTPSUpstreamWithClientCertificate(t *testing.T) {
	h := newHarness(t, func(h *harness) {
		h.etcd = etcdtest.New(t, etcdtest.Options{TLS: &etcdtest.TLSFiles{
			CertFile: h.pki.ServerCert, KeyFile: h.pki.ServerKey, ClientCAFile: h.pki.CAFile,
		}})
		h.cfg.Upstreams = []string{h.etcd.URL()}
		h.cfg.UpstreamCAFile = h.pki.CAFile
		h.cfg.UpstreamCertFile = h.pki.ClientCert
		h.cfg.UpstreamKeyFile = h.pki.ClientKey
	})
	if !strings.HasPrefix(h.etcd.URL(), "https://") {
		t.Fatalf("etcd is not https: %s", h.etcd.URL())
	}
	if got := h.do(req{method: "PUT", path: "/v2/keys/conftool/tls", body: form("value", "over tls"), user: "conftool"}); got.status != 201 {
		t.Fatalf("PUT through to https etcd: %d %s", got.status, got.body)
	}
	if v, status := h.value("/conftool/tls"); v != "over tls" {
		t.Errorf("GET through to https etcd: %d %q", status, v)
	}

	// The same etcd without a client certificate: refused at the handshake.
	noCert := newHarness(t, withEtcd(h.etcd), withConfig(func(c *gate.Config) {
		c.Upstreams = []string{h.etcd.URL()}
		c.UpstreamCAFile = h.pki.CAFile
	}))
	if got := noCert.do(req{method: "GET", path: "/v2/keys/conftool/tls"}); got.status != http.StatusBadGateway {
		t.Errorf("without a client certificate: %d %s, want 502", got.status, got.body)
	}
	if noCert.metric("confsync_gate_upstream_errors_total") < 1 {
		t.Error("upstream TLS failure not counted")
	}
}

// TestHeadersPassThrough: etcd's headers reach the client unchanged, and
// etcd gets X-Forwarded-For and X-Real-IP.
func TestHeadersPassThrough(t *testing.T) {
	h := newHarness(t)
	h.etcd.Set(t, "/conftool/h", "v")
	through := h.do(req{method: "GET", path: "/v2/keys/conftool/h"})
	resp, err := http.Get(h.etcd.URL() + "/v2/keys/conftool/h")
	if err != nil {
		t.Fatal(err)
	}
	direct, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"X-Etcd-Index", "X-Etcd-Cluster-Id", "Content-Type"} {
		if through.header.Get(name) != resp.Header.Get(name) {
			t.Errorf("%s: through the gate %q, direct %q", name, through.header.Get(name), resp.Header.Get(name))
		}
	}
	for _, name := range []string{"X-Raft-Index", "X-Raft-Term"} {
		if through.header.Get(name) == "" {
			t.Errorf("%s missing through the gate", name)
		}
	}
	if through.body != string(direct) {
		t.Errorf("body through the gate %q, direct %q", through.body, direct)
	}

	// What the upstream receives, seen by a recording HTTP server in
	// etcd's place (only request headers are checked here).
	seen := make(chan http.Header, 1)
	rec := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/probe" {
			seen <- r.Header.Clone()
		}
	}))
	defer rec.Close()
	hr := newHarness(t, withEtcd(h.etcd), withConfig(func(c *gate.Config) { c.Upstreams = []string{rec.URL} }))
	hr.do(req{method: "GET", path: "/probe", header: map[string]string{"X-Forwarded-For": "192.0.2.1"}})
	got := <-seen
	if xff := got.Get("X-Forwarded-For"); xff != "192.0.2.1, 127.0.0.1" {
		t.Errorf("upstream X-Forwarded-For = %q, want the chain with the client appended", xff)
	}
	if ip := got.Get("X-Real-Ip"); ip != "127.0.0.1" {
		t.Errorf("upstream X-Real-IP = %q", ip)
	}
}

// TestMemberURLsPointAtTheGate: clients that sync the member list must
// come back through the gate.
func TestMemberURLsPointAtTheGate(t *testing.T) {
	h := newHarness(t)
	var members struct {
		Members []struct {
			ID         string   `json:"id"`
			PeerURLs   []string `json:"peerURLs"`
			ClientURLs []string `json:"clientURLs"`
		} `json:"members"`
	}
	got := h.do(req{method: "GET", path: "/v2/members"})
	if err := json.Unmarshal([]byte(got.body), &members); err != nil || len(members.Members) != 1 {
		t.Fatalf("/v2/members: %s (%v)", got.body, err)
	}
	m := members.Members[0]
	if len(m.ClientURLs) != 1 || m.ClientURLs[0] != h.base {
		t.Errorf("clientURLs = %v, want [%s]", m.ClientURLs, h.base)
	}
	if m.ID == "" || len(m.PeerURLs) == 0 {
		t.Errorf("other member fields lost: %+v", m)
	}
	if got.header.Get("Content-Length") != "" && got.header.Get("Content-Length") != strconv.Itoa(len(got.body)) {
		t.Errorf("Content-Length %s for a %d-byte body", got.header.Get("Content-Length"), len(got.body))
	}
	if got := h.do(req{method: "GET", path: "/v2/machines"}); got.body != h.base {
		t.Errorf("/v2/machines = %q, want %q", got.body, h.base)
	}
	if got := h.do(req{method: "GET", path: "/v2/members/leader"}); !strings.Contains(got.body, `"clientURLs":["`+h.base+`"]`) {
		t.Errorf("/v2/members/leader = %s", got.body)
	}

	adv := newHarness(t, withEtcd(h.etcd), withConfig(func(c *gate.Config) { c.AdvertiseURL = "https://conf1001.eqiad.wmnet:4001" }))
	if got := adv.do(req{method: "GET", path: "/v2/machines"}); got.body != "https://conf1001.eqiad.wmnet:4001" {
		t.Errorf("/v2/machines with AdvertiseURL = %q", got.body)
	}
}

// TestBodyLimit: 20 MiB is the most a client may send (the site's
// client_max_body_size), whether it declares the length or streams it.
func TestBodyLimit(t *testing.T) {
	h := newHarness(t)
	big := bytes.Repeat([]byte("v"), 20<<20+1)
	hr, _ := http.NewRequest("PUT", h.base+"/v2/keys/conftool/big", bytes.NewReader(big))
	hr.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	hr.SetBasicAuth("conftool", passwords["conftool"])
	status, body := send(t, h.client, hr)
	if status != http.StatusRequestEntityTooLarge || !strings.Contains(body, "larger than 20971520 bytes") {
		t.Errorf("declared 20 MiB + 1: %d %s, want 413", status, body)
	}
	if _, exists := h.etcdValue("/conftool/big"); exists {
		t.Error("an oversized body reached etcd")
	}
	// A body under the limit passes (etcd applies its own, smaller, limit).
	ok := h.do(req{method: "PUT", path: "/v2/keys/conftool/medium", body: form("value", strings.Repeat("x", 512<<10)), user: "conftool"})
	if ok.status != 201 {
		t.Errorf("512 KiB PUT: %d %s", ok.status, ok.body[:min(len(ok.body), 200)])
	}

	// A streamed body is cut at the limit, and since bodies are read whole
	// before anything is forwarded, the upstream sees none of it. (etcd stops
	// reading form bodies at 10 MB, so an upstream that reads everything
	// would show a partial body here.)
	var puts atomic.Int64
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			puts.Add(1)
			io.Copy(io.Discard, r.Body)
		}
	}))
	defer sink.Close()
	hs := newHarness(t, withEtcd(h.etcd), withConfig(func(c *gate.Config) { c.Upstreams = []string{sink.URL} }))
	hr, _ = http.NewRequest("PUT", hs.base+"/v2/keys/conftool/big", io.MultiReader(bytes.NewReader(big)))
	hr.SetBasicAuth("conftool", passwords["conftool"])
	status, body = send(t, hs.client, hr)
	if status != http.StatusRequestEntityTooLarge {
		t.Errorf("streamed 20 MiB + 1: %d %s, want 413", status, body)
	}
	// A request after it, on a new connection, is forwarded: had the
	// oversized one been, the sink would have counted it first.
	hr, _ = http.NewRequest("PUT", hs.base+"/v2/keys/conftool/small", strings.NewReader("value=x"))
	hr.SetBasicAuth("conftool", passwords["conftool"])
	if status, body := send(t, hs.client, hr); status != http.StatusOK {
		t.Errorf("PUT after the oversized one: %d %s", status, body)
	}
	if n := puts.Load(); n != 1 {
		t.Errorf("the upstream received %d PUTs, want only the small one", n)
	}
}

func send(t *testing.T, c *http.Client, r *http.Request) (int, string) {
	t.Helper()
	resp, err := c.Do(r)
	if err != nil {
		t.Fatalf("%s %s: %v", r.Method, r.URL, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestUpstreamConnectionsAreReused: the site's nginx opened a connection to
// etcd per request; the gate keeps them alive. Counted by a recording HTTP
// server in etcd's place.
func TestUpstreamConnectionsAreReused(t *testing.T) {
	var opened atomic.Int64
	rec := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write([]byte(`{"action":"get"}`))
	}))
	rec.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	rec.Start()
	defer rec.Close()
	h := newHarness(t, withConfig(func(c *gate.Config) { c.Upstreams = []string{rec.URL} }))
	before := opened.Load()
	for i := range 50 {
		if got := h.do(req{method: "GET", path: "/v2/keys/x"}); got.status != 200 {
			t.Fatalf("GET %d: %d", i, got.status)
		}
		if got := h.do(req{method: "PUT", path: "/v2/keys/conftool/x", body: form("value", "x"), user: "conftool"}); got.status != 200 {
			t.Fatalf("PUT %d: %d", i, got.status)
		}
	}
	if n := opened.Load() - before; n > 1 {
		t.Errorf("100 sequential requests opened %d upstream connections, want 1", n)
	}
}
