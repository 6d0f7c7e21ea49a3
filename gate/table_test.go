package gate_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// outcome is what a row of the behaviour table expects.
type outcome int

const (
	proxied      outcome = iota // etcd's own 2xx answer
	unauthorized                // the gate's 401, errorCode 110
	readOnly                    // the gate's 403, errorCode 107
)

func (o outcome) String() string {
	return [...]string{"proxied", "401", "403"}[o]
}

type tableRow struct {
	name   string
	req    req
	rw, ro outcome
	// key, when set, is a key the request writes (or deletes, for DELETE):
	// checked directly in etcd after the request.
	key string
}

// behaviourTable is wikimedia-usage.md §6.4, one row per request kind, with
// the gate's answers where the site's nginx was wrong (marked FIXED). %s in
// paths and keys is replaced by the mode, so both runs use fresh keys.
func behaviourTable(etcdIndex uint64) []tableRow {
	const pool = "/v2/keys/conftool/v1/pools/eqiad/appserver/apache2"
	rows := []tableRow{
		// Reads: never authenticated, never refused.
		{name: "GET key", req: req{method: "GET", path: pool + "/mw1"}},
		{name: "HEAD key", req: req{method: "HEAD", path: pool + "/mw1"}},
		{name: "GET recursive", req: req{method: "GET", path: pool + "/?recursive=true"}},
		{name: "GET quorum", req: req{method: "GET", path: pool + "/mw1?quorum=true"}},
		{name: "GET wait=true on a past index", req: req{method: "GET", path: fmt.Sprintf("%s/mw1?wait=true&waitIndex=%d", pool, etcdIndex)}},
		{name: "OPTIONS key", req: req{method: "OPTIONS", path: pool + "/mw1"}},
		{name: "GET with wrong password", req: req{method: "GET", path: pool + "/mw1", user: "conftool", password: "nope"}},

		// Writes to a pool.
		{name: "PUT pool, no credentials", req: req{method: "PUT", path: pool + "/anon-%s", body: form("value", "x")}, rw: unauthorized, ro: readOnly, key: "/conftool/v1/pools/eqiad/appserver/apache2/anon-%s"},
		{name: "POST pool, no credentials", req: req{method: "POST", path: pool, body: form("value", "x")}, rw: unauthorized, ro: readOnly},
		{name: "DELETE pool key, no credentials", req: req{method: "DELETE", path: pool + "/mw1"}, rw: unauthorized, ro: readOnly},
		{name: "PUT pool as conftool", req: req{method: "PUT", path: pool + "/conftool-%s", body: form("value", `{"pooled":"yes","weight":10}`), user: "conftool"}, key: "/conftool/v1/pools/eqiad/appserver/apache2/conftool-%s", ro: readOnly},
		{name: "PUT pool as root", req: req{method: "PUT", path: pool + "/root-%s", body: form("value", "x"), user: "root"}, key: "/conftool/v1/pools/eqiad/appserver/apache2/root-%s", ro: readOnly},
		{name: "PUT pool as pool-eqiad-appserver (bcrypt)", req: req{method: "PUT", path: pool + "/pool-%s", body: form("value", "x"), user: "pool-eqiad-appserver"}, key: "/conftool/v1/pools/eqiad/appserver/apache2/pool-%s", ro: readOnly},
		{name: "POST pool as pool-eqiad-appserver", req: req{method: "POST", path: pool, body: form("value", "x"), user: "pool-eqiad-appserver"}, ro: readOnly},
		{name: "DELETE pool key as pool-eqiad-appserver", req: req{method: "DELETE", path: pool + "/del-%s", user: "pool-eqiad-appserver"}, key: "/conftool/v1/pools/eqiad/appserver/apache2/del-%s", ro: readOnly},
		{name: "PUT other pool as pool-eqiad-appserver", req: req{method: "PUT", path: "/v2/keys/conftool/v1/pools/eqiad/jobrunner/jobrunner/mw9-%s", body: form("value", "x"), user: "pool-eqiad-appserver"}, rw: unauthorized, ro: readOnly, key: "/conftool/v1/pools/eqiad/jobrunner/jobrunner/mw9-%s"},
		{name: "PUT pool, wrong password", req: req{method: "PUT", path: pool + "/wrongpw-%s", body: form("value", "x"), user: "conftool", password: "nope"}, rw: unauthorized, ro: readOnly, key: "/conftool/v1/pools/eqiad/appserver/apache2/wrongpw-%s"},
		{name: "PUT pool, unknown user", req: req{method: "PUT", path: pool + "/unknown-%s", body: form("value", "x"), user: "mallory", password: "x"}, rw: unauthorized, ro: readOnly, key: "/conftool/v1/pools/eqiad/appserver/apache2/unknown-%s"},

		// Outside conftool.
		{name: "PUT spicerack as conftool", req: req{method: "PUT", path: "/v2/keys/spicerack/locks/c-%s", body: form("value", "x"), user: "conftool"}, rw: unauthorized, ro: readOnly, key: "/spicerack/locks/c-%s"},
		{name: "PUT spicerack as root", req: req{method: "PUT", path: "/v2/keys/spicerack/locks/r-%s", body: form("value", "x"), user: "root"}, ro: readOnly, key: "/spicerack/locks/r-%s"},
		{name: "POST eventlogging anonymously", req: req{method: "POST", path: "/v2/keys/eventlogging/streams-%s", body: form("value", "x")}, ro: readOnly},
		// FIXED: nginx's prefix /conftool matched /conftoolfoo.
		{name: "FIXED PUT conftoolfoo as conftool", req: req{method: "PUT", path: "/v2/keys/conftoolfoo/x-%s", body: form("value", "x"), user: "conftool"}, rw: unauthorized, ro: readOnly, key: "/conftoolfoo/x-%s"},

		// etcd's own endpoints: reads pass.
		{name: "GET /version", req: req{method: "GET", path: "/version"}},
		{name: "GET /health", req: req{method: "GET", path: "/health"}},
		{name: "GET /v2/members", req: req{method: "GET", path: "/v2/members"}},
		{name: "GET /v2/stats/self", req: req{method: "GET", path: "/v2/stats/self"}},
		{name: "GET /v2/stats/leader", req: req{method: "GET", path: "/v2/stats/leader"}},
		// GET /v2/stats/store passes too; it is read in TestAbandonedWatchIsCancelledUpstream,
		// from an etcd process (in-process etcd 3.5 races on it).
		{name: "GET /v2/auth/enable", req: req{method: "GET", path: "/v2/auth/enable"}},
		{name: "GET /metrics", req: req{method: "GET", path: "/metrics"}},
		// Any method on /metrics, as through nginx: etcd's handler is read-only.
		{name: "POST /metrics", req: req{method: "POST", path: "/metrics"}},
		{name: "DELETE /metrics", req: req{method: "DELETE", path: "/metrics"}},

		// FIXED: nginx passed writes to /v2/auth and /v2/members anonymously.
		{name: "FIXED PUT /v2/auth/enable anonymously", req: req{method: "PUT", path: "/v2/auth/enable"}, rw: unauthorized, ro: readOnly},
		{name: "FIXED DELETE /v2/auth/enable anonymously", req: req{method: "DELETE", path: "/v2/auth/enable"}, rw: unauthorized, ro: readOnly},
		{name: "FIXED PUT /v2/auth/users anonymously", req: req{method: "PUT", path: "/v2/auth/users/evil-%s", body: `{"user":"evil","password":"x"}`}, rw: unauthorized, ro: readOnly},
		{name: "FIXED PUT /v2/auth/roles anonymously", req: req{method: "PUT", path: "/v2/auth/roles/evil-%s", body: `{"role":"evil"}`}, rw: unauthorized, ro: readOnly},
		{name: "FIXED POST /v2/members anonymously", req: req{method: "POST", path: "/v2/members", body: `{"peerURLs":["http://127.0.0.1:1"]}`}, rw: unauthorized, ro: readOnly},
		{name: "FIXED DELETE /v2/members/id anonymously", req: req{method: "DELETE", path: "/v2/members/1234"}, rw: unauthorized, ro: readOnly},
		{name: "PUT /v2/auth/users as conftool (not an admin)", req: req{method: "PUT", path: "/v2/auth/users/evil-%s", body: `{"user":"evil","password":"x"}`, user: "conftool"}, rw: unauthorized, ro: readOnly},
		{name: "PUT /v2/auth/users as root (admin)", req: req{method: "PUT", path: "/v2/auth/users/ops-%s", body: `{"user":"ops-%s","password":"x"}`, user: "root"}, ro: readOnly},

		// FIXED: the v3 gateway behind the catch-all location.
		{name: "FIXED POST /v3/kv/put anonymously", req: req{method: "POST", path: "/v3/kv/put", body: `{"key":"djMtYW5vbg==","value":"eA=="}`}, rw: unauthorized, ro: readOnly},
		{name: "FIXED POST /v3beta/kv/put anonymously", req: req{method: "POST", path: "/v3beta/kv/put", body: `{"key":"djMtYW5vbg==","value":"eA=="}`}, rw: unauthorized, ro: readOnly},
		{name: "POST /v3/kv/put as conftool", req: req{method: "POST", path: "/v3/kv/put", body: `{"key":"djMtYW5vbg==","value":"eA=="}`, user: "conftool"}, rw: unauthorized, ro: readOnly},
		{name: "POST /v3/kv/put as root (admin)", req: req{method: "POST", path: "/v3/kv/put", body: `{"key":"djMtcm9vdA==","value":"eA=="}`, user: "root"}, ro: readOnly},
	}
	return rows
}

func TestBehaviourTable(t *testing.T) {
	h := newHarness(t)
	set := h.etcd.Set(t, "/conftool/v1/pools/eqiad/appserver/apache2/mw1", `{"pooled":"yes","weight":10}`)
	for _, mode := range []string{"rw", "ro"} {
		t.Run(mode, func(t *testing.T) {
			h.srv.SetReadOnly(mode == "ro")
			for _, row := range behaviourTable(set.Node.ModifiedIndex) {
				want := row.rw
				if mode == "ro" {
					want = row.ro
				}
				r := row.req
				r.path = strings.ReplaceAll(r.path, "%s", mode)
				r.body = strings.ReplaceAll(r.body, "%s", mode)
				key := strings.ReplaceAll(row.key, "%s", mode)
				if r.method == "DELETE" && key != "" {
					h.etcd.Set(t, key, "to delete")
				}
				t.Run(row.name, func(t *testing.T) {
					got := h.do(r)
					checkOutcome(t, r, got, want)
					if key == "" {
						return
					}
					_, exists := h.etcdValue(key)
					wantExists := want == proxied
					if r.method == "DELETE" {
						wantExists = !wantExists
					}
					if exists != wantExists {
						t.Errorf("after %s %s: key %s exists = %v, want %v", r.method, r.path, key, exists, wantExists)
					}
				})
			}
		})
	}
	// Nothing the table refused reached etcd's v3 keyspace or auth store.
	h.srv.SetReadOnly(false)
	got := h.do(req{method: "POST", path: "/v3/kv/range", body: `{"key":"djMtYW5vbg=="}`, user: "root"})
	if got.status != 200 || strings.Contains(got.body, `"kvs"`) {
		t.Errorf("anonymous v3 write reached etcd: %d %s", got.status, got.body)
	}
	for _, reason := range []string{"no_credentials", "bad_credentials", "not_allowed"} {
		if h.metric(`confsync_gate_auth_failures_total{reason="`+reason+`"}`) == 0 {
			t.Errorf("no %s auth failure counted", reason)
		}
	}
	got = h.do(req{method: "GET", path: "/v2/auth/users"})
	if strings.Contains(got.body, "evil") || !strings.Contains(got.body, "ops-rw") {
		t.Errorf("v2 auth users after the table: %s (want ops-rw only, no evil)", got.body)
	}
}

func checkOutcome(t *testing.T, r req, got response, want outcome) {
	t.Helper()
	switch want {
	case proxied:
		if got.status < 200 || got.status > 299 {
			t.Fatalf("%s %s as %q: status %d %s, want etcd's 2xx", r.method, r.path, r.user, got.status, got.body)
		}
		// etcd answers OPTIONS itself, before its v2 handlers add headers.
		keys := strings.HasPrefix(r.path, "/v2/keys") && r.method != "OPTIONS"
		if keys && got.header.Get("X-Etcd-Index") == "" {
			t.Errorf("%s %s: X-Etcd-Index missing from proxied response", r.method, r.path)
		}
		if (keys || strings.HasPrefix(r.path, "/v2/members")) && got.header.Get("X-Etcd-Cluster-Id") == "" {
			t.Errorf("%s %s: X-Etcd-Cluster-Id missing from proxied response", r.method, r.path)
		}
	case unauthorized:
		if got.status != http.StatusUnauthorized {
			t.Fatalf("%s %s as %q: status %d %s, want 401", r.method, r.path, r.user, got.status, got.body)
		}
		if got.body != wantUnauthorized {
			t.Errorf("401 body = %s", got.body)
		}
		if a := got.header.Get("WWW-Authenticate"); a != `Basic realm="etcd"` {
			t.Errorf("WWW-Authenticate = %q", a)
		}
		if ct := got.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q", ct)
		}
		if got.header.Get("X-Etcd-Index") != "" {
			t.Errorf("401 came from etcd, not the gate")
		}
	case readOnly:
		if got.status != http.StatusForbidden || got.body != wantReadOnly {
			t.Fatalf("%s %s as %q: %d %s, want 403 read-only", r.method, r.path, r.user, got.status, got.body)
		}
		if ct := got.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q", ct)
		}
	}
}
