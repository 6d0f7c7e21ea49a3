package watch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/file"
	"github.com/confsync/confsync/backends/keyspace"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
)

// recorder collects what a watcher reports.
type recorder struct {
	mu      sync.Mutex
	updates []Update
	resyncs map[string]int
	changed chan struct{}
}

func newRecorder() *recorder {
	return &recorder{resyncs: map[string]int{}, changed: make(chan struct{}, 1)}
}

func (r *recorder) OnUpdate(u Update) {
	r.mu.Lock()
	r.updates = append(r.updates, u)
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) poke() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *recorder) Resync(root, reason string) {
	r.mu.Lock()
	r.resyncs[reason]++
	r.mu.Unlock()
	r.poke()
}
func (r *recorder) WatchRestart(string, error) {}
func (r *recorder) FetchError(string, error)   {}

func (r *recorder) resyncCount(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.resyncs[reason]
}

type harness struct {
	t   *testing.T
	srv *etcdtest.Server
	rec *recorder
	w   *Watcher
}

func start(t *testing.T, srv *etcdtest.Server, url string, roots []string, tweak func(*Config)) *harness {
	t.Helper()
	c, err := etcd.New(context.Background(), etcd.Config{Endpoints: []string{url}})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	cfg := Config{Source: c, OnUpdate: rec.OnUpdate, Observer: rec, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	if tweak != nil {
		tweak(&cfg)
	}
	w := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); w.Wait(); c.Close() })
	w.Start(ctx, roots, nil)
	return &harness{t: t, srv: srv, rec: rec, w: w}
}

// leaves is what the watcher holds for root.
func (h *harness) leaves(root string) map[string]string {
	s := h.w.Snapshots()[root]
	if s == nil {
		return nil
	}
	return s.Tree.Leaves(root)
}

// etcdLeaves is what etcd holds under root.
func (h *harness) etcdLeaves(root string) map[string]string {
	c, _ := etcd.New(context.Background(), etcd.Config{Endpoints: []string{h.srv.URL()}})
	defer c.Close()
	snap, err := c.Fetch(context.Background(), root)
	if err != nil {
		h.t.Fatal(err)
	}
	return snap.Tree.Leaves(root)
}

func (h *harness) converges(root string) {
	h.t.Helper()
	testutil.Eventually(h.t, "watcher to match etcd under "+root, func() bool {
		return reflect.DeepEqual(h.leaves(root), h.etcdLeaves(root))
	})
}

func TestEventsReachTheTreeWithChangedKeys(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/app/a", "1")
	h := start(t, srv, srv.URL(), []string{"/app"}, nil)
	testutil.Eventually(t, "initial snapshot", func() bool { return h.leaves("/app")["/app/a"] == "1" })

	srv.Set(t, "/apple/x", "not mine")
	srv.Set(t, "/app/b/c", "2")
	srv.Delete(t, "/app/a")
	h.converges("/app")
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	var changed []string
	for _, u := range h.rec.updates {
		if u.Reason == "event" {
			changed = append(changed, u.Changed...)
		}
	}
	if strings.Join(changed, " ") != "/app/b/c /app/a" {
		t.Fatalf("changed keys %v: /apple must not count, and each change once", changed)
	}
}

func TestNoUpdateMissedUnderABurst(t *testing.T) {
	srv := etcdtest.New(t)
	h := start(t, srv, srv.URL(), []string{"/pool"}, nil)
	testutil.Eventually(t, "initial snapshot", func() bool { return h.leaves("/pool") != nil })
	for i := 0; i < 1500; i++ {
		srv.Set(t, fmt.Sprintf("/pool/host%02d", i%40), fmt.Sprint(i))
		if i%7 == 0 {
			srv.Set(t, "/noise/x", fmt.Sprint(i))
		}
	}
	h.converges("/pool")
}

// A watcher cut off while more than 1000 events happen elsewhere meets
// error 401 on its next poll, re-reads the root and picks up the change it
// would otherwise have lost.
func TestHistoryClearedTriggersResync(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/conftool/k", "before")
	proxy := etcdtest.NewProxy(t, srv.URL())
	h := start(t, srv, proxy.URL(), []string{"/conftool"}, nil)
	testutil.Eventually(t, "initial snapshot", func() bool { return h.leaves("/conftool")["/conftool/k"] == "before" })

	proxy.SetDown(true)
	proxy.CloseClientConnections()
	srv.Set(t, "/conftool/k", "during outage")
	for i := 0; i < 1100; i++ {
		srv.Set(t, "/spicerack/locks/x", fmt.Sprint(i))
	}
	proxy.SetDown(false)
	testutil.Eventually(t, "the lost change", func() bool { return h.leaves("/conftool")["/conftool/k"] == "during outage" })
	if h.rec.resyncCount("history-cleared") == 0 {
		t.Fatal("no resync after error 401")
	}
}

// A quiet root in a busy cluster keeps up without ever being pushed out of
// the history window.
func TestQuietRootNeverFallsOutOfHistory(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/quiet/k", "v")
	h := start(t, srv, srv.URL(), []string{"/quiet"}, func(c *Config) { c.PollTimeout = 1500 * time.Millisecond })
	testutil.Eventually(t, "initial snapshot", func() bool { return h.leaves("/quiet") != nil })
	for round := 0; round < 3; round++ {
		start := srv.Index(t)
		for i := 0; i < 700; i++ {
			srv.Set(t, "/busy/k", fmt.Sprint(i))
		}
		// Wait until a quiet poll has moved the index past this round.
		testutil.Eventually(t, "index to follow the cluster", func() bool {
			s := h.w.Snapshots()["/quiet"]
			return s != nil && s.Index > start+600
		})
	}
	srv.Set(t, "/quiet/k", "changed")
	testutil.Eventually(t, "the change", func() bool { return h.leaves("/quiet")["/quiet/k"] == "changed" })
	if n := h.rec.resyncCount("history-cleared"); n != 0 {
		t.Fatalf("%d resyncs: the quiet root fell out of the history", n)
	}
}

// When the endpoint the watch uses dies, the watch moves to the next one
// and misses nothing.
func TestWatchFailsOverToTheNextEndpoint(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/app/k", "1")
	a, b := etcdtest.NewProxy(t, srv.URL()), etcdtest.NewProxy(t, srv.URL())
	c, err := etcd.New(context.Background(), etcd.Config{Endpoints: []string{a.URL(), b.URL()}})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	w := New(Config{Source: c, OnUpdate: rec.OnUpdate, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); w.Wait(); c.Close() })
	w.Start(ctx, []string{"/app"}, nil)
	get := func() string {
		if s := w.Snapshots()["/app"]; s != nil {
			v, _ := s.Tree.Get("/app/k")
			return v
		}
		return ""
	}
	testutil.Eventually(t, "initial snapshot", func() bool { return get() == "1" })
	// The client picks its endpoint at random; cut the one in use.
	var used *etcdtest.Proxy
	testutil.Eventually(t, "a watch on an endpoint", func() bool {
		for _, p := range []*etcdtest.Proxy{a, b} {
			if p.OpenWatches() == 1 {
				used = p
			}
		}
		return used != nil
	})
	used.SetDown(true)
	used.CloseClientConnections()
	srv.Set(t, "/app/k", "2")
	testutil.Eventually(t, "the change through the second endpoint", func() bool { return get() == "2" })
}

func TestRidesOutAnEtcdRestart(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/app/k", "1")
	h := start(t, srv, srv.URL(), []string{"/app"}, nil)
	testutil.Eventually(t, "initial snapshot", func() bool { return h.leaves("/app")["/app/k"] == "1" })

	srv.Stop()
	testutil.Eventually(t, "disconnection to show", func() bool {
		st := h.w.Roots()
		return len(st) == 1 && !st[0].Connected && st[0].LastError != ""
	})
	if got := h.leaves("/app")["/app/k"]; got != "1" {
		t.Fatalf("data lost while etcd is down: %q", got)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	srv.Set(t, "/app/k", "2")
	testutil.Eventually(t, "the change after restart", func() bool { return h.leaves("/app")["/app/k"] == "2" })
	testutil.Eventually(t, "reconnection", func() bool { return h.w.Roots()[0].Connected })
}

// When the endpoint starts answering for a different cluster (a rebuilt
// cluster, a DNS change), the watcher notices and takes the new cluster's
// state, even though the new cluster's index is far behind.
func TestClusterChangeForcesResync(t *testing.T) {
	a := etcdtest.New(t)
	b := etcdtest.New(t)
	for i := 0; i < 50; i++ {
		a.Set(t, "/app/k", fmt.Sprint("a", i))
	}
	b.Set(t, "/app/k", "b0")
	proxy := etcdtest.NewProxy(t, a.URL())
	h := start(t, a, proxy.URL(), []string{"/app"}, func(c *Config) { c.PollTimeout = 1500 * time.Millisecond })
	testutil.Eventually(t, "initial snapshot", func() bool { return h.leaves("/app")["/app/k"] == "a49" })

	proxy.SetTarget(b.URL())
	proxy.CloseClientConnections()
	b.Set(t, "/app/other", "from b")
	testutil.Eventually(t, "the other cluster's state", func() bool {
		l := h.leaves("/app")
		return l["/app/k"] == "b0" && l["/app/other"] == "from b"
	})
}

func TestPeriodicResync(t *testing.T) {
	srv := etcdtest.New(t)
	h := start(t, srv, srv.URL(), []string{"/app"}, func(c *Config) { c.ResyncInterval = 300 * time.Millisecond })
	testutil.Eventually(t, "periodic resyncs", func() bool { return h.rec.resyncCount("periodic") >= 2 })
}

func TestAncestorDeleteEmptiesRoot(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/a/b/c", "1")
	srv.Set(t, "/a/x", "2")
	h := start(t, srv, srv.URL(), []string{"/a/b"}, nil)
	testutil.Eventually(t, "initial snapshot", func() bool { return h.leaves("/a/b")["/a/b/c"] == "1" })
	srv.Delete(t, "/a")
	testutil.Eventually(t, "the root to empty", func() bool { return len(h.leaves("/a/b")) == 0 })
}

func TestHiddenKeysAreIgnored(t *testing.T) {
	srv := etcdtest.New(t)
	h := start(t, srv, srv.URL(), []string{"/app"}, nil)
	testutil.Eventually(t, "initial snapshot", func() bool { return h.leaves("/app") != nil })
	srv.Set(t, "/app/_lock/x", "held")
	srv.Set(t, "/app/visible", "v")
	testutil.Eventually(t, "the visible key", func() bool { return h.leaves("/app")["/app/visible"] == "v" })
	if _, ok := h.leaves("/app")["/app/_lock/x"]; ok {
		t.Fatal("hidden key reached the tree (a GET would never list it)")
	}
}

func TestIntervalModeWithFileBackend(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "data.yaml")
	os.WriteFile(f, []byte("app:\n  k: one\n"), 0o644)
	rec := newRecorder()
	w := New(Config{Source: &file.Source{Paths: []string{f}}, Interval: 100 * time.Millisecond, OnUpdate: rec.OnUpdate})
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); w.Wait() }()
	w.Start(ctx, []string{"/app"}, nil)
	get := func() string {
		s := w.Snapshots()["/app"]
		if s == nil {
			return ""
		}
		v, _ := s.Tree.Get("/app/k")
		return v
	}
	testutil.Eventually(t, "first read", func() bool { return get() == "one" })
	os.WriteFile(f, []byte("app:\n  k: two\n"), 0o644)
	testutil.Eventually(t, "the edit", func() bool { return get() == "two" })
}

// A root added inside the watched prefix is cut from the copy at once,
// without a read; one outside it moves the watch to a wider prefix.
func TestSetRootsMovesTheWatchOnlyWhenThePrefixChanges(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/x/a/k", "1")
	srv.Set(t, "/x/b/k", "2")
	srv.Set(t, "/y/k", "3")
	proxy := etcdtest.NewProxy(t, srv.URL())
	h := start(t, srv, proxy.URL(), []string{"/x/a", "/x/b"}, nil)
	testutil.Eventually(t, "roots /x/a and /x/b", func() bool { return h.leaves("/x/b") != nil && h.leaves("/x/a") != nil })
	reads := func() int { return proxy.Count(func(r etcdtest.Request) bool { return !r.Watch() }) }
	if n := reads(); n != 1 {
		t.Fatalf("%d reads for two roots, want one of their common ancestor", n)
	}
	if err := h.w.SetRoots([]string{"/x/a", "/x/b/k"}, nil); err != nil {
		t.Fatal(err)
	}
	if got := h.leaves("/x/b/k")["/x/b/k"]; got != "2" || reads() != 1 {
		t.Fatalf("a root inside the prefix: value %q after %d reads, want 2 after 1", got, reads())
	}
	if err := h.w.SetRoots([]string{"/x/a", "/y"}, nil); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "root /y", func() bool { return h.leaves("/y")["/y/k"] == "3" })
	if st := h.w.Status(); st.Prefix != "/" {
		t.Fatalf("watch on %s, want /", st.Prefix)
	}
	if len(h.w.Roots()) != 2 {
		t.Fatalf("roots %v", h.w.Roots())
	}
}

func TestCacheRoundTripAndRejections(t *testing.T) {
	dir := t.TempDir()
	c := &Cache{Path: filepath.Join(dir, "state", "cache.json"), Source: "http://127.0.0.1:2379"}
	if cp, err := c.Load(); err != nil || cp != nil {
		t.Fatalf("missing cache: %v %v", cp, err)
	}
	v := func(s string) *string { return &s }
	exp := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	space := keyspace.FromWire("/a", &etcd.Node{Key: "/a", Dir: true, CreatedIndex: 3, ModifiedIndex: 3, Nodes: []*etcd.Node{
		{Key: "/a/x", Value: v("1"), CreatedIndex: 4, ModifiedIndex: 9},
		{Key: "/a/empty", Dir: true, CreatedIndex: 5, ModifiedIndex: 5},
		{Key: "/a/y", Dir: true, CreatedIndex: 6, ModifiedIndex: 6, Nodes: []*etcd.Node{
			{Key: "/a/y/z", Value: v(""), CreatedIndex: 7, ModifiedIndex: 7, Expiration: &exp}}},
	}}, 42)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := c.Save(Copy{Space: space, ClusterID: "abc", FetchedAt: at}); err != nil {
		t.Fatal(err)
	}
	got, err := c.Load()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if got == nil || !got.FromCache || got.ClusterID != "abc" || !got.FetchedAt.Equal(at) || got.Space.Index() != 42 ||
		!reflect.DeepEqual(got.Space.ToWire("/a", true, now), space.ToWire("/a", true, now)) {
		t.Fatalf("round trip lost data: %+v", got)
	}
	other := &Cache{Path: c.Path, Source: "http://elsewhere:2379"}
	if _, err := other.Load(); err == nil || !strings.Contains(err.Error(), "elsewhere") {
		t.Fatalf("cache of another source accepted: %v", err)
	}
	for name, body := range map[string]string{
		"key outside its root": `{"format":1,"source":"http://127.0.0.1:2379","roots":{"/a":{"values":{"/b/x":"1"}}}}`,
		"node outside prefix":  `{"format":2,"source":"http://127.0.0.1:2379","prefix":"/a","node":{"key":"/b","dir":true}}`,
		"child outside parent": `{"format":2,"source":"http://127.0.0.1:2379","prefix":"/a","node":{"key":"/a","dir":true,"nodes":[{"key":"/a","value":"x"}]}}`,
		"unclean prefix":       `{"format":2,"source":"http://127.0.0.1:2379","prefix":"a/"}`,
		"null child":           `{"format":2,"source":"http://127.0.0.1:2379","prefix":"/a","node":{"key":"/a","dir":true,"nodes":[null]}}`,
		"child listed twice":   `{"format":2,"source":"http://127.0.0.1:2379","prefix":"/a","node":{"key":"/a","dir":true,"nodes":[{"key":"/a/x","value":"1"},{"key":"/a/x","value":"2"}]}}`,
		"grandchild as child":  `{"format":2,"source":"http://127.0.0.1:2379","prefix":"/a","node":{"key":"/a","dir":true,"nodes":[{"key":"/a/b/c","value":"1"}]}}`,
		"top node not prefix":  `{"format":2,"source":"http://127.0.0.1:2379","prefix":"/a","node":{"key":"/a/b","dir":true}}`,
		"key twice, format 1":  `{"format":1,"source":"http://127.0.0.1:2379","roots":{"/a":{"values":{"/a/x":"1","/a/./x":"2"}}}}`,
		"unknown format":       `{"format":7,"source":"http://127.0.0.1:2379"}`,
		"corrupt":              `{"format":1,"sou`,
	} {
		os.WriteFile(c.Path, []byte(body), 0o600)
		if cp, err := c.Load(); err == nil {
			t.Errorf("%s: accepted: %+v", name, cp)
		}
	}
}

// A format 1 cache (bare values per root, before the single watch) still
// starts an agent, and covers only the roots it held.
func TestCacheFormat1Migrates(t *testing.T) {
	c := &Cache{Path: filepath.Join(t.TempDir(), "cache.json"), Source: "etcd:http://127.0.0.1:2379"}
	os.WriteFile(c.Path, []byte(`{"format":1,"source":"etcd:http://127.0.0.1:2379","saved_at":"2026-01-01T00:00:00Z","roots":{
		"/p/a":{"etcd_index":10,"cluster_id":"cid","fetched_at":"2026-01-01T00:00:00Z","values":{"/p/a/k":"1"}},
		"/p/b":{"etcd_index":12,"cluster_id":"cid","fetched_at":"2026-01-01T00:00:00Z","values":{"/p/b/x/y":"2"}}}}`), 0o600)
	cp, err := c.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !cp.covers("/p/a") || !cp.covers("/p/b/x") || cp.covers("/p/c") || cp.covers("/p") {
		t.Fatalf("format 1 cache covers the wrong roots")
	}
	rec := newRecorder()
	w := New(Config{Source: &file.Source{Paths: []string{filepath.Join(t.TempDir(), "missing.yaml")}}, OnUpdate: rec.OnUpdate})
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); w.Wait() }()
	if err := w.Start(ctx, []string{"/p/a", "/p/b", "/p/c"}, cp); err != nil {
		t.Fatal(err)
	}
	snaps := w.Snapshots()
	if v, _ := snaps["/p/b"].Tree.Get("/p/b/x/y"); v != "2" || snaps["/p/a"] == nil || snaps["/p/c"] != nil {
		t.Fatalf("started from the format 1 cache with %v", snaps)
	}
}
