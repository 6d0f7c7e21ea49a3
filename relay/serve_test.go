package relay_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/watch"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	"github.com/confsync/confsync/relay"
)

// TestManyWaitersOneEtcdWatcher: hundreds of clients waiting on a relay,
// long polls and streams, on the same and on different keys, cost etcd
// one watcher; every one of them gets the event.
func TestManyWaitersOneEtcdWatcher(t *testing.T) {
	cluster := etcdtest.NewProcessCluster(t, 1)
	e := cluster.URL(0)
	set(t, e, "/site/pool/a", "1")
	r := startRelay(t, []string{e}, "/site")
	var waits []*pending
	for i := 0; i < 300; i++ {
		u := r.URL + "/v2/keys/site/pool?wait=true&recursive=true"
		switch i % 3 {
		case 1:
			u = r.URL + "/v2/keys/site/pool/b?wait=true"
		case 2:
			u = r.URL + "/v2/keys/site?wait=true&recursive=true&stream=true"
		}
		waits = append(waits, startWatch(t, u, 5*time.Second))
	}
	testutil.Eventually(t, "etcd holding one watcher", func() bool { return cluster.WatcherCount(t, 0) == 1 })
	ev := set(t, e, "/site/pool/b", "2")
	for i, w := range waits {
		a := w.result()
		if !strings.Contains(string(a.body), fmt.Sprintf(`"modifiedIndex":%d`, ev.Index())) {
			t.Fatalf("waiter %d got %v", i, a)
		}
	}
	if n := cluster.WatcherCount(t, 0); n != 1 {
		t.Errorf("etcd holds %d watchers", n)
	}
}

// TestStreams: a streamed watch from a past index gets every matching
// event from the relay's history and then the live ones on the same
// answer (etcd would send the first and then nothing).
func TestStreams(t *testing.T) {
	srv := etcdtest.New(t)
	e := srv.URL()
	r := startRelay(t, []string{e}, "/site")
	first := set(t, e, "/site/s/a", "1").Index()
	set(t, e, "/site/other", "x")
	set(t, e, "/site/s/b", "2")
	waitSynced(t, e, r.URL, "/site")

	w := startWatch(t, fmt.Sprintf("%s/v2/keys/site/s?wait=true&recursive=true&stream=true&waitIndex=%d", r.URL, first), 3*time.Second)
	set(t, e, "/site/s/c", "3")
	a := w.result()
	var keys []string
	dec := json.NewDecoder(strings.NewReader(string(a.body)))
	for dec.More() {
		var ev etcd.Event
		if err := dec.Decode(&ev); err != nil {
			t.Fatalf("stream body %q: %v", a.body, err)
		}
		keys = append(keys, ev.Node.Key)
	}
	if fmt.Sprint(keys) != "[/site/s/a /site/s/b /site/s/c]" {
		t.Errorf("stream from history then live: %v", keys)
	}

}

// TestHistoryKeptWhenAReReadMatches: the relay loses etcd while more than
// 1000 events happen outside its prefix. etcd's history no longer covers
// its index, so it re-reads; the copy matches, so its history goes on
// and waiting clients keep waiting (no 401), then get the next change.
func TestHistoryKeptWhenAReReadMatches(t *testing.T) {
	cluster := etcdtest.NewProcessCluster(t, 1)
	e := cluster.URL(0)
	proxy := etcdtest.NewFaultProxy(t, e)
	set(t, e, "/site/pool/a", "1")
	r := startRelay(t, []string{proxy.URL()}, "/site")
	past := set(t, e, "/site/pool/b", "2")
	waitSynced(t, e, r.URL, "/site")
	w := startWatch(t, r.URL+"/v2/keys/site/pool?wait=true&recursive=true", time.Minute)

	proxy.Drop()
	proxy.ResetConnections()
	for i := 0; i < 1005; i++ {
		set(t, e, "/elsewhere/k", strconv.Itoa(i))
	}
	proxy.PassThrough()
	testutil.Eventually(t, "the re-read", func() bool {
		return metric(t, plainClient, r.URL, `confsync_relay_resets_total{history="kept",reason="history-cleared"}`) == 1
	})
	ev := set(t, e, "/site/pool/c", "3")
	if a := w.result(); !strings.Contains(string(a.body), fmt.Sprintf(`"modifiedIndex":%d`, ev.Index())) {
		t.Errorf("the waiting client got %v, want the next change", a)
	}
	// The events before the re-read are still in the relay's history.
	a := get(fmt.Sprintf("%s/v2/keys/site/pool/b?wait=true&waitIndex=%d", r.URL, past.Index()))
	if !strings.Contains(string(a.body), fmt.Sprintf(`"modifiedIndex":%d`, past.Index())) {
		t.Errorf("wait from before the re-read: %v", a)
	}
}

// TestWritesAndPassThrough: writes are refused as the gate's read-only
// mode refuses them, or passed to etcd with ForwardWrites; what is not
// the prefix's goes to etcd; /v2/members, /v2/machines and the leader
// point at the relay; /version is etcd's.
func TestWritesAndPassThrough(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/site/pool/a", "1")
	srv.Set(t, "/site/pool/_hidden", "h")
	srv.Set(t, "/outside", "o")
	ro := startRelay(t, []string{srv.URL()}, "/site")
	rw := startRelay(t, []string{srv.URL()}, "/site", func(c *relay.RunConfig) { c.ForwardWrites = true })

	for _, req := range []struct{ method, path string }{
		{http.MethodPut, "/v2/keys/site/pool/a"}, {http.MethodPost, "/v2/keys/site/pool"},
		{http.MethodDelete, "/v2/keys/site/pool/a"}, {http.MethodPut, "/v2/keys/outside"},
		{http.MethodPost, "/v2/members"}, {http.MethodPost, "/v3/kv/put"},
	} {
		a := do(plainClient, req.method, ro.URL+req.path, url.Values{"value": {"x"}}, 10*time.Second)
		want := `{"errorCode":107,"message":"This cluster is in read-only mode","cause":"Cluster configured to be read-only","index":0}`
		if a.status != http.StatusForbidden || strings.TrimSpace(string(a.body)) != want {
			t.Errorf("%s %s on a read-only relay: %v", req.method, req.path, a)
		}
	}
	if v := value(t, srv.URL(), "/site/pool/a"); v != "1" {
		t.Errorf("a refused write reached etcd: %q", v)
	}

	a := do(plainClient, http.MethodPut, rw.URL+"/v2/keys/site/pool/a", url.Values{"value": {"2"}}, 10*time.Second)
	ev, err := etcd.DecodeEvent(a.body)
	if a.status != http.StatusOK || err != nil || a.header.Get("X-Raft-Index") == "" || ev.Action != "set" {
		t.Fatalf("forwarded write: %v", a)
	}
	waitSynced(t, srv.URL(), rw.URL, "/site")
	if v := value(t, rw.URL, "/site/pool/a"); v != "2" {
		t.Errorf("after a forwarded write the relay serves %q", v)
	}
	a = do(plainClient, http.MethodPut, rw.URL+"/v2/keys/site/pool/a?prevValue=nope", url.Values{"value": {"3"}}, 10*time.Second)
	if a.status != http.StatusPreconditionFailed || !strings.Contains(string(a.body), `"errorCode":101`) {
		t.Errorf("forwarded failing CAS: %v", a)
	}

	// From etcd, unchanged: hidden keys, keys outside, quorum reads.
	for _, p := range []string{"/v2/keys/site/pool/_hidden", "/v2/keys/outside", "/v2/keys/site/pool/a?quorum=true"} {
		a := get(ro.URL + p)
		if a.status != http.StatusOK || a.header.Get("X-Raft-Index") == "" {
			t.Errorf("GET %s was not passed to etcd: %v %v", p, a, a.header)
		}
	}

	members := get(ro.URL + "/v2/members")
	var list struct {
		Members []struct {
			ID         string   `json:"id"`
			ClientURLs []string `json:"clientURLs"`
		} `json:"members"`
	}
	if err := json.Unmarshal(members.body, &list); err != nil || len(list.Members) != 1 || list.Members[0].ID == "" ||
		fmt.Sprint(list.Members[0].ClientURLs) != "["+ro.URL+"]" {
		t.Errorf("/v2/members: %v", members)
	}
	if a := get(ro.URL + "/v2/members/leader"); !strings.Contains(string(a.body), `"clientURLs":["`+ro.URL+`"]`) {
		t.Errorf("/v2/members/leader: %v", a)
	}
	if a := get(ro.URL + "/v2/machines"); string(a.body) != ro.URL {
		t.Errorf("/v2/machines: %v", a)
	}
	if a, want := get(ro.URL+"/version"), get(srv.URL()+"/version"); string(a.body) != string(want.body) {
		t.Errorf("/version %s, etcd's %s", a.body, want.body)
	}
}

// TestNoUpstream: a relay without a v2 API behind it (as one fed from
// etcd's v3 API will be) serves its prefix and answers the rest with
// etcd's error 300, naming why.
func TestNoUpstream(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/site/a", "1")
	c, err := etcd.New(context.Background(), etcd.Config{Endpoints: []string{srv.URL()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rs := relay.New(relay.Config{})
	w := watch.New(watch.Config{Source: c, Prefix: "/site", Listener: rs.Listener()})
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); w.Wait() }()
	w.Start(ctx, nil, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go rs.Serve(ln)
	defer rs.Shutdown(context.Background())
	base := "http://" + ln.Addr().String()
	testutil.Eventually(t, "the relay serving", func() bool { return get(base+"/health").status == http.StatusOK })
	if v := value(t, base, "/site/a"); v != "1" {
		t.Errorf("GET of the prefix: %q", v)
	}
	for _, p := range []string{"/v2/keys/other", "/v2/keys/site/a?quorum=true", "/v2/stats/self"} {
		a := get(base + p)
		if a.status != http.StatusInternalServerError || !strings.Contains(string(a.body), `"errorCode":300`) ||
			!strings.Contains(string(a.body), "no etcd v2 API") {
			t.Errorf("GET %s without an upstream: %v", p, a)
		}
	}
}

// TestFrontEnd covers the relay's own HTTP/1.x handling: keep-alive
// across reads and waits, HTTP/1.0, HEAD, and requests it leaves to
// net/http (bodies, large heads, bare newlines, unclean paths), which
// are still answered; a client that sends a request while its wait is
// pending loses the connection.
func TestFrontEnd(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/site/a", "1")
	r := startRelay(t, []string{srv.URL()}, "/site")
	raw := func(req string) (*bufio.Reader, net.Conn) {
		t.Helper()
		c, err := net.Dial("tcp", r.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(c, req)
		return bufio.NewReader(c), c
	}
	read := func(br *bufio.Reader, method string) (*http.Response, string) {
		t.Helper()
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(b)
	}

	// Keep-alive: a read, a wait answered by a write, a read.
	br, kept := raw("GET /v2/keys/site/a HTTP/1.1\r\nHost: r\r\n\r\nGET /v2/keys/site?wait=true&recursive=true HTTP/1.1\r\nHost: r\r\n\r\n")
	if resp, body := read(br, "GET"); resp.StatusCode != 200 || !strings.Contains(body, `"value":"1"`) {
		t.Fatalf("first GET: %d %s", resp.StatusCode, body)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.Header.Get("X-Etcd-Index") == "" {
		t.Fatalf("wait headers: %v %v", resp, err)
	}
	ev := srv.Set(t, "/site/b", "2")
	if b, _ := io.ReadAll(resp.Body); !strings.Contains(string(b), fmt.Sprintf(`"modifiedIndex":%d`, ev.Index)) {
		t.Fatalf("wait: %s", b)
	}
	io.WriteString(kept, "GET /v2/keys/site/b HTTP/1.1\r\nHost: r\r\n\r\n")
	if resp, body := read(br, "GET"); resp.StatusCode != 200 || !strings.Contains(body, `"value":"2"`) {
		t.Fatalf("a read after the answered wait, on the same connection: %d %s", resp.StatusCode, body)
	}

	// HTTP/1.0 and HEAD.
	br, _ = raw("GET /v2/keys/site/a HTTP/1.0\r\n\r\n")
	if resp, body := read(br, "GET"); resp.Proto != "HTTP/1.0" || resp.StatusCode != 200 || !strings.Contains(body, `"value":"1"`) {
		t.Errorf("HTTP/1.0 GET: %s %d %s", resp.Proto, resp.StatusCode, body)
	}
	br, _ = raw("HEAD /v2/keys/site/a HTTP/1.1\r\nHost: r\r\n\r\n")
	if resp, body := read(br, "HEAD"); resp.StatusCode != 200 || body != "" || resp.ContentLength <= 0 {
		t.Errorf("HEAD: %d %q length %d", resp.StatusCode, body, resp.ContentLength)
	}

	// Left to net/http, and still answered.
	for name, req := range map[string]string{
		"a body":       "GET /v2/keys/site/a HTTP/1.1\r\nHost: r\r\nContent-Length: 2\r\n\r\nxx",
		"a large head": "GET /v2/keys/site/a HTTP/1.1\r\nHost: r\r\nX-Padding: " + strings.Repeat("p", 4000) + "\r\n\r\n",
		"bare LFs":     "GET /v2/keys/site/a HTTP/1.1\nHost: r\n\n",
		"a proxy URL":  "GET http://r/v2/keys/site/a HTTP/1.1\r\nHost: r\r\n\r\n",
	} {
		br, _ := raw(req)
		if resp, body := read(br, "GET"); resp.StatusCode != 200 || !strings.Contains(body, `"value":"1"`) {
			t.Errorf("a request with %s: %d %s", name, resp.StatusCode, body)
		}
	}
	br, _ = raw("GET /v2/keys/site/../site/a HTTP/1.1\r\nHost: r\r\n\r\n")
	if resp, _ := read(br, "GET"); resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/v2/keys/site/a" {
		t.Errorf("unclean path: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	br, _ = raw("GET /v2/keys/site/a HTTP/1.1\r\n\r\n")
	if resp, _ := read(br, "GET"); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("HTTP/1.1 without Host: %d", resp.StatusCode)
	}

	// A request behind a pending wait: the connection closes.
	br, c := raw("GET /v2/keys/site?wait=true HTTP/1.1\r\nHost: r\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("wait: %v %v", resp, err)
	}
	io.WriteString(c, "GET /v2/keys/site/a HTTP/1.1\r\nHost: r\r\n\r\n")
	if _, err := io.ReadAll(br); err != nil {
		t.Errorf("after a request sent behind a pending wait: %v", err)
	}
	testutil.Eventually(t, "the abandoned wait to leave the relay", func() bool {
		return metric(t, plainClient, r.URL, `confsync_relay_watchers{mode="long-poll"}`) == 0
	})

	// A client that goes away while it waits: its wait leaves too, and
	// the others still get the next event.
	br, c = raw("GET /v2/keys/site?wait=true HTTP/1.1\r\nHost: r\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("wait: %v %v", resp, err)
	}
	staying := startWatch(t, r.URL+"/v2/keys/site?wait=true&recursive=true", time.Minute)
	waitForWatchers(t, r, 2)
	c.Close()
	testutil.Eventually(t, "the wait of the client that went away to leave the relay", func() bool {
		return metric(t, plainClient, r.URL, `confsync_relay_watchers{mode="long-poll"}`) == 1
	})
	ev = srv.Set(t, "/site/c", "3")
	if a := staying.result(); !strings.Contains(string(a.body), fmt.Sprintf(`"modifiedIndex":%d`, ev.Index)) {
		t.Errorf("the staying watcher: %+v", a)
	}
}

// TestMetrics: requests by kind, the fan-out latency, the watch's state
// and the data age are on /metrics.
func TestMetrics(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/site/a", "1")
	r := startRelay(t, []string{srv.URL()}, "/site")
	get(r.URL + "/v2/keys/site/a")
	w := startWatch(t, r.URL+"/v2/keys/site?wait=true&recursive=true", time.Minute)
	waitForWatchers(t, r, 1)
	srv.Set(t, "/site/b", "2")
	w.result()
	for name, want := range map[string]func(float64) bool{
		`confsync_relay_requests_total{kind="get"}`:   func(v float64) bool { return v >= 1 },
		`confsync_relay_requests_total{kind="watch"}`: func(v float64) bool { return v >= 1 },
		`confsync_relay_fanout_seconds_count`:         func(v float64) bool { return v >= 1 },
		`confsync_relay_events_total`:                 func(v float64) bool { return v >= 1 },
		`confsync_relay_upstream_up`:                  func(v float64) bool { return v == 1 },
		`confsync_relay_data_age_seconds`:             func(v float64) bool { return v == 0 },
		`confsync_relay_history_events`:               func(v float64) bool { return v >= 1 },
		`confsync_relay_index`:                        func(v float64) bool { return v >= 5 },
	} {
		if v := metric(t, plainClient, r.URL, name); !want(v) {
			t.Errorf("%s = %v", name, v)
		}
	}
}
