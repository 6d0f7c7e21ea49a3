package gate_test

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	"golang.org/x/crypto/bcrypt"
)

// wantTooMany checks a 429 as a client sees it.
func wantTooMany(t *testing.T, what string, got response, who string) {
	t.Helper()
	if got.status != http.StatusTooManyRequests {
		t.Fatalf("%s: %d %s, want 429", what, got.status, got.body)
	}
	if s, err := strconv.Atoi(got.header.Get("Retry-After")); err != nil || s < 1 {
		t.Errorf("%s: Retry-After %q, want whole seconds", what, got.header.Get("Retry-After"))
	}
	if got.header.Get("Content-Type") != "application/json" ||
		!strings.HasPrefix(got.body, `{"errorCode":429,"message":"Too Many Requests","cause":"gate: `+who+` is over its rate limit`) {
		t.Errorf("%s: body %s (%s), want an etcd-shaped error naming %s", what, got.body, got.header.Get("Content-Type"), who)
	}
}

// TestClientRateLimits: each client address has a bucket, the default's
// or the ACL file's, and a refused request never reaches etcd.
func TestClientRateLimits(t *testing.T) {
	etcd := etcdtest.New(t)
	etcd.Set(t, "/conftool/k", "v")
	counter := etcdtest.NewProxy(t, etcd.URL())
	acl := gate.SiteACL + `
[[rate_limit]]
clients = ["127.0.0.2"]
rate = 0.001
burst = 5
[[rate_limit]]
clients = ["127.0.0.0/30"]   # 127.0.0.1 (the harness) to .3
rate = 0
`
	h := newHarness(t, withEtcd(etcd), withConfig(func(c *gate.Config) {
		c.Upstreams = []string{counter.URL()}
		c.ClientLimit = gate.RateLimit{Rate: 0.001, Burst: 3}
	}))
	write(t, h.cfg.ACLFile, acl)
	if err := h.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	get := req{method: "GET", path: "/v2/keys/conftool/k"}
	counter.Reset()

	// The default limit: three requests, then 429.
	def := h.clientFrom("127.0.0.4")
	for i := range 3 {
		if got := h.doVia(def, get); got.status != 200 {
			t.Fatalf("GET %d within the default burst: %d %s", i, got.status, got.body)
		}
	}
	wantTooMany(t, "4th GET from 127.0.0.4", h.doVia(def, get), "client 127.0.0.4")
	wantTooMany(t, "5th GET from 127.0.0.4", h.doVia(def, get), "client 127.0.0.4")
	// Writes count against the same bucket, before credentials are checked.
	wantTooMany(t, "PUT from 127.0.0.4", h.doVia(def, req{method: "PUT", path: "/v2/keys/conftool/k", body: form("value", "w"), user: "conftool"}), "client 127.0.0.4")

	// The ACL file's limit for one address (the longest prefix wins).
	five := h.clientFrom("127.0.0.2")
	for i := range 5 {
		if got := h.doVia(five, get); got.status != 200 {
			t.Fatalf("GET %d within 127.0.0.2's burst: %d %s", i, got.status, got.body)
		}
	}
	wantTooMany(t, "6th GET from 127.0.0.2", h.doVia(five, get), "client 127.0.0.2")

	// No limit for the rest of 127.0.0.0/30.
	free := h.clientFrom("127.0.0.3")
	for i := range 20 {
		if got := h.doVia(free, get); got.status != 200 {
			t.Fatalf("GET %d from an unlimited client: %d", i, got.status)
		}
	}

	if n := counter.Count(nil); n != 3+5+20 {
		t.Errorf("etcd saw %d requests, want the 28 that were let through", n)
	}
	if v, _ := h.etcdValue("/conftool/k"); !strings.Contains(v, `"value":"v"`) {
		t.Errorf("a refused write reached etcd: %s", v)
	}
	if got := h.metric(`confsync_gate_rate_limited_total{by="client"}`); got != 4 {
		t.Errorf("confsync_gate_rate_limited_total{by=client} = %v, want 4", got)
	}
	if got := h.metric(`confsync_gate_requests_total{code="429",method="GET"}`); got != 3 {
		t.Errorf(`confsync_gate_requests_total{code="429",method="GET"} = %v, want 3`, got)
	}
	// One log line per client and episode, not one per refusal.
	if n := strings.Count(h.logs.String(), "msg=\"rate limited\" by=client client=127.0.0.4"); n != 1 {
		t.Errorf("127.0.0.4's refusals logged %d times, want once:\n%s", n, h.logs.String())
	}
}

// TestUserRateLimits: authenticated writes count per user, whatever the
// address; the ACL file sets a user's limit and is reloaded at run time.
func TestUserRateLimits(t *testing.T) {
	h := newHarness(t, withConfig(func(c *gate.Config) {
		c.UserLimit = gate.RateLimit{Rate: 0.001, Burst: 3}
	}))
	write(t, h.cfg.ACLFile, gate.SiteACL+"[[rate_limit]]\nusers = [\"conftool\"]\nrate = 0.001\nburst = 2\n")
	if err := h.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	put := func(c *http.Client, user, key string) response {
		return h.doVia(c, req{method: "PUT", path: "/v2/keys" + key, body: form("value", "x"), user: user})
	}
	// conftool's own limit, from two addresses: the bucket is the user's.
	if got := put(h.client, "conftool", "/conftool/a"); got.status != 201 {
		t.Fatalf("conftool's first PUT: %d %s", got.status, got.body)
	}
	if got := put(h.clientFrom("127.0.0.2"), "conftool", "/conftool/b"); got.status != 201 {
		t.Fatalf("conftool's second PUT, another address: %d %s", got.status, got.body)
	}
	wantTooMany(t, "conftool's third PUT", put(h.client, "conftool", "/conftool/c"), `user conftool`)
	if _, exists := h.etcdValue("/conftool/c"); exists {
		t.Error("a write refused with 429 reached etcd")
	}
	// Other users have the default limit; reads and anonymous writes have none.
	for i := range 3 {
		if got := put(h.client, "root", fmt.Sprintf("/spicerack/%d", i)); got.status != 201 {
			t.Fatalf("root's PUT %d: %d %s", i, got.status, got.body)
		}
	}
	wantTooMany(t, "root's fourth PUT", put(h.client, "root", "/spicerack/3"), "user root")
	for i := range 5 {
		if got := h.do(req{method: "POST", path: "/v2/keys/eventlogging", body: form("value", "e")}); got.status != 201 {
			t.Fatalf("anonymous POST %d: %d %s", i, got.status, got.body)
		}
		if got := h.do(req{method: "GET", path: "/v2/keys/conftool/a"}); got.status != 200 {
			t.Fatalf("GET %d: %d", i, got.status)
		}
	}
	if got := h.metric(`confsync_gate_rate_limited_total{by="user"}`); got != 2 {
		t.Errorf("confsync_gate_rate_limited_total{by=user} = %v, want 2", got)
	}

	// Lift conftool's limit in the file: in force without a restart.
	write(t, h.cfg.ACLFile, gate.SiteACL+"[[rate_limit]]\nusers = [\"conftool\"]\nrate = 0\n")
	if err := h.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if got := put(h.client, "conftool", fmt.Sprintf("/conftool/d%d", i)); got.status != 201 {
			t.Fatalf("conftool's PUT %d after its limit was lifted: %d %s", i, got.status, got.body)
		}
	}
}

// TestWatchesAreNotChargedWhileTheyWait: long polls cost nothing, however
// many a client holds; a watch answered at once from etcd's history is a
// read like any other and is charged, so looping over them does not escape
// the limit.
func TestWatchesAreNotChargedWhileTheyWait(t *testing.T) {
	h := newHarness(t, withConfig(func(c *gate.Config) {
		c.ClientLimit = gate.RateLimit{Rate: 0.001, Burst: 3}
	}))
	waiter := h.clientFrom("127.0.0.2")
	var ws []*watch
	opened := time.Now()
	for i := range 5 { // more than the burst
		set := h.etcd.Set(t, fmt.Sprintf("/conftool/w%d", i), "0")
		ws = append(ws, h.openWatch(waiter, fmt.Sprintf("/conftool/w%d", i), set.Node.ModifiedIndex+1))
	}
	// Past quickWatch, the events come: these watches waited.
	testutil.Eventually(t, "the watches to have waited over a second", func() bool { return time.Since(opened) > 1500*time.Millisecond })
	for i, w := range ws {
		h.etcd.Set(t, w.key, fmt.Sprint("event", i))
		if v := w.event(t); v != fmt.Sprint("event", i) {
			t.Fatalf("watch %s delivered %q", w.key, v)
		}
	}
	testutil.Eventually(t, "the watches to end", func() bool { return h.metric("confsync_gate_open_watches") == 0 })
	for i := range 3 {
		if got := h.doVia(waiter, req{method: "GET", path: "/v2/keys/conftool/w0"}); got.status != 200 {
			t.Fatalf("GET %d after five long polls: %d %s (were the watches charged?)", i, got.status, got.body)
		}
	}
	wantTooMany(t, "4th GET", h.doVia(waiter, req{method: "GET", path: "/v2/keys/conftool/w0"}), "client 127.0.0.2")

	// Watches answered at once (the event is in etcd's history) are charged.
	looper := h.clientFrom("127.0.0.3")
	set := h.etcd.Set(t, "/conftool/hist", "old")
	for i := range 3 {
		w := h.openWatch(looper, "/conftool/hist", set.Node.ModifiedIndex)
		if v := w.event(t); v != "old" {
			t.Fatalf("quick watch %d delivered %q", i, v)
		}
		testutil.Eventually(t, "the quick watch to be accounted for", func() bool { return h.metric("confsync_gate_open_watches") == 0 })
	}
	path := fmt.Sprintf("/v2/keys/conftool/hist?wait=true&waitIndex=%d", set.Node.ModifiedIndex)
	wantTooMany(t, "4th quick watch", h.doVia(looper, req{method: "GET", path: path}), "client 127.0.0.3")
}

// TestSlowBodyIsCutBeforeItReachesEtcd: a body trickled a byte at a time
// gets 408 after BodyTimeout; nothing of it reaches etcd, and a client
// that sends its body in time is not disturbed.
func TestSlowBodyIsCutBeforeItReachesEtcd(t *testing.T) {
	etcd := etcdtest.New(t)
	counter := etcdtest.NewProxy(t, etcd.URL())
	h := newHarness(t, withEtcd(etcd), withConfig(func(c *gate.Config) {
		c.Upstreams = []string{counter.URL()}
		c.BodyTimeout = 300 * time.Millisecond
		c.BodyMinRate = 1000
	}))
	auth := base64.StdEncoding.EncodeToString([]byte("conftool:conftool-pw"))
	conn, br := h.rawTLS("PUT /v2/keys/conftool/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + auth +
		"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nvalue=")
	began := time.Now()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // a byte every 50ms, until the gate hangs up
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := conn.Write([]byte("x")); err != nil {
				return
			}
		}
	}()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to a trickled body: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	t.Logf("trickled body refused after %v: %d %s", time.Since(began).Round(time.Millisecond), resp.StatusCode, body)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "request body not received in time") || !resp.Close {
		t.Errorf("trickled body: %d %s (close %v), want 408 naming the cause and closing", resp.StatusCode, body, resp.Close)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("the connection stayed open after the 408")
	}
	if n := counter.Count(func(r etcdtest.Request) bool { return r.Method == "PUT" }); n != 0 {
		t.Errorf("etcd saw %d PUTs of a body that never arrived", n)
	}
	if _, exists := h.etcdValue("/conftool/slow"); exists {
		t.Error("the trickled write reached etcd")
	}
	if got := h.metric("confsync_gate_slow_bodies_total"); got != 1 {
		t.Errorf("confsync_gate_slow_bodies_total = %v", got)
	}

	// A body sent in pieces, each well within the deadline, gets through.
	conn, br = h.rawTLS("PUT /v2/keys/conftool/pieces HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + auth +
		"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\n\r\nval")
	conn.Write([]byte("ue=ok"))
	conn.Write([]byte("!"))
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("a body sent in pieces: %v %v", resp, err)
	}
	if v, _ := h.etcdValue("/conftool/pieces"); !strings.Contains(v, `"value":"ok!"`) {
		t.Errorf("etcd has %s", v)
	}
}

// TestUnknownUserTakesAsLongAsAWrongPassword: refusing a user the file does
// not have costs a hash computation of the file's kind, like refusing a
// known user's wrong password, so that names cannot be probed by timing.
// The hashes are bcrypt at cost 6 (a few milliseconds), far above the
// noise of a request; medians of interleaved runs are compared loosely.
func TestUnknownUserTakesAsLongAsAWrongPassword(t *testing.T) {
	var htpasswd strings.Builder
	for user, pw := range passwords {
		hash, err := bcrypt.GenerateFromPassword([]byte(pw), 6)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&htpasswd, "%s:%s\n", user, hash)
	}
	h := newHarness(t)
	write(t, filepath.Join(h.dir, "htpasswd"), htpasswd.String())
	h.srv.Reload()
	timed := func(user string) time.Duration {
		began := time.Now()
		got := h.do(req{method: "PUT", path: "/v2/keys/conftool/probe", body: form("value", "x"), user: user, password: "wrong-pw"})
		if got.status != http.StatusUnauthorized || got.body != wantUnauthorized {
			t.Fatalf("PUT as %s with a wrong password: %d %s", user, got.status, got.body)
		}
		return time.Since(began)
	}
	timed("conftool") // warm the connection
	var known, unknown []time.Duration
	for range 15 {
		known = append(known, timed("conftool"))
		unknown = append(unknown, timed("no-such-user"))
	}
	median := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)/2] }
	k, u := median(known), median(unknown)
	t.Logf("median time to refuse: known user with a wrong password %v, unknown user %v", k, u)
	if u < k/2 {
		t.Errorf("an unknown user is refused in %v, a known one's wrong password in %v: user names can be probed", u, k)
	}
	if got := h.metric(`confsync_gate_credential_checks_total{result="rejected"}`); got != 31 {
		t.Errorf("rejected credential checks = %v, want 31", got)
	}
}
