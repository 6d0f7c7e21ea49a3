package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	"github.com/confsync/confsync/relay"
)

// TestOutage: etcd killed, the relay keeps answering with the data's age
// and says stale; a relay restarted while etcd is down answers from its
// cache; and when etcd is back, every waiting client sees every change
// made meanwhile: from the relay's history when it has them, through a
// 401 and a re-read when it does not. Never a silent gap.
func TestOutage(t *testing.T) {
	cluster := etcdtest.NewProcessCluster(t, 1)
	e := cluster.URL(0)
	proxy := etcdtest.NewFaultProxy(t, e) // the relay's way to etcd
	set(t, e, "/site/pool/a", "1")
	set(t, e, "/site/pool/b", "2")
	cache := filepath.Join(t.TempDir(), "relay-cache.json")
	withCache := func(c *relay.RunConfig) { c.CacheFile = cache }
	first := startRelay(t, []string{proxy.URL()}, "/site", withCache)
	last := set(t, e, "/site/pool/c", "3")
	waitSynced(t, e, first.URL, "/site")
	testutil.Eventually(t, "the cache saved", func() bool { return cachedIndex(t, cache) >= last.Index() })

	t.Logf("%s: etcd killed", time.Now().Format("15:04:05.000"))
	// etcd dies: the relay answers from memory, and says how old that is.
	cluster.Kill(0)
	testutil.Eventually(t, "the relay to notice", func() bool {
		a := get(first.URL + "/v2/keys/site/pool/a")
		age, _ := strconv.Atoi(a.header.Get(relay.DataAgeHeader))
		return a.status == http.StatusOK && age >= 1
	})
	if v := value(t, first.URL, "/site/pool/c"); v != "3" {
		t.Errorf("while etcd is down: %q", v)
	}
	if a := get(first.URL + "/health"); a.status != http.StatusServiceUnavailable || !strings.Contains(string(a.body), "stale") {
		t.Errorf("/health while etcd is down: %v", a)
	}
	if up := metric(t, plainClient, first.URL, "confsync_relay_upstream_up"); up != 0 {
		t.Errorf("confsync_relay_upstream_up %v while etcd is down", up)
	}

	t.Logf("%s: relay restarting from its cache", time.Now().Format("15:04:05.000"))
	// The relay restarts while etcd is still down: it answers from its
	// cache, at the cached index.
	addr := first.Addr
	first.stop()
	second := startRelayOn(t, addr, []string{proxy.URL()}, "/site", false, withCache)
	testutil.Eventually(t, "the restarted relay answering from its cache", func() bool {
		return get(second.URL+"/v2/keys/site/pool/c").status == http.StatusOK
	})
	a := get(second.URL + "/v2/keys/site/pool?recursive=true")
	if age, _ := strconv.Atoi(a.header.Get(relay.DataAgeHeader)); age < 1 || a.header.Get("X-Etcd-Index") != strconvU(last.Index()) {
		t.Errorf("from the cache: age %s, index %s (want >= 1 and %d)", a.header.Get(relay.DataAgeHeader), a.header.Get("X-Etcd-Index"), last.Index())
	}

	t.Logf("%s: clients waiting", time.Now().Format("15:04:05.000"))
	// Clients wait on it, pybal-style, from the index it gave them.
	clients := startCollectors(t, second.URL, "/site/pool", 5)

	t.Logf("%s: etcd back, changes made before the relay reaches it", time.Now().Format("15:04:05.000"))
	// etcd comes back, but changes are made before the relay reaches it:
	// the relay's copy from the cache differs from etcd's, so the waiting
	// clients get a 401 on asking again, and re-read.
	proxy.Drop()
	proxy.ResetConnections()
	cluster.Start(t, 0)
	cluster.WaitHealthy(t)
	set(t, e, "/site/pool/a", "depooled")
	write(t, e, http.MethodDelete, "/site/pool/b", nil)
	proxy.PassThrough()
	clients.waitFor(t, etcdState(t, e, "/site/pool"))
	for _, c := range clients.all {
		if c.rereads() < 2 {
			t.Errorf("client %s re-read %d times: the change made while the relay was away reached it without a 401", c.id, c.rereads())
		}
	}
	waitSynced(t, e, second.URL, "/site")
	if a := get(second.URL + "/health"); a.status != http.StatusOK || a.header.Get(relay.DataAgeHeader) != "0" {
		t.Errorf("/health once etcd is back: %v (age %s)", a, a.header.Get(relay.DataAgeHeader))
	}

	t.Logf("%s: changes while the relay is cut off: replayed", time.Now().Format("15:04:05.000"))
	// The relay loses etcd for a while, during which three changes are
	// made: etcd's history still has them, so the relay replays them and
	// every client sees every one, in order, with no re-read.
	before := clients.snapshot()
	proxy.Drop()
	proxy.ResetConnections()
	var want []*etcd.Event
	want = append(want, set(t, e, "/site/pool/d", "4"))
	want = append(want, set(t, e, "/site/pool/a", "pooled"))
	want = append(want, write(t, e, http.MethodDelete, "/site/pool/d", nil))
	time.Sleep(time.Second) // the relay's retries meet the dropped path
	proxy.PassThrough()
	clients.waitFor(t, etcdState(t, e, "/site/pool"))
	for _, c := range clients.all {
		got := c.since(before[c.id])
		if c.rereads() != before[c.id].rereads {
			t.Errorf("client %s re-read though the relay had every event", c.id)
		}
		if fmt.Sprint(eventIDs(got)) != fmt.Sprint(eventIDs(want)) {
			t.Errorf("client %s saw %v, want %v", c.id, eventIDs(got), eventIDs(want))
		}
	}

	t.Logf("%s: more changes than etcd's history while cut off", time.Now().Format("15:04:05.000"))
	// More changes while it is away than etcd's history holds: the relay
	// re-reads, and every client is told to (401) rather than left behind.
	before = clients.snapshot()
	proxy.Drop()
	proxy.ResetConnections()
	for i := 0; i < 1005; i++ {
		set(t, e, "/site/pool/busy", strconv.Itoa(i))
	}
	proxy.PassThrough()
	clients.waitFor(t, etcdState(t, e, "/site/pool"))
	for _, c := range clients.all {
		if c.rereads() == before[c.id].rereads {
			t.Errorf("client %s was not told to re-read after the relay missed events", c.id)
		}
	}
}

// cachedIndex is the etcd index in a relay's cache file, 0 without one.
func cachedIndex(t *testing.T, path string) uint64 {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	var f struct {
		Index uint64 `json:"etcd_index"`
	}
	json.Unmarshal(raw, &f)
	return f.Index
}

// etcdState is the values under key in etcd, by key.
func etcdState(t *testing.T, base, key string) map[string]string {
	t.Helper()
	out := map[string]string{}
	a := get(base + "/v2/keys" + key + "?recursive=true")
	if a.status == http.StatusNotFound {
		return out
	}
	collect(decodeNode(t, a), out)
	return out
}

func collect(n *etcd.Node, out map[string]string) {
	if !n.Dir && n.Value != nil {
		out[n.Key] = *n.Value
	}
	for _, c := range n.Nodes {
		collect(c, out)
	}
}

func eventIDs(evs []*etcd.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, fmt.Sprintf("%s %s @%d", ev.Action, ev.Key(), ev.Index()))
	}
	return out
}

// collectors are clients waiting on a key the way pybal does: read, wait
// from the index after, apply each event, re-read on 401.
type collectors struct {
	all []*collector
}

type collector struct {
	id, base, key string
	mu            sync.Mutex
	state         map[string]string
	events        []*etcd.Event
	rereadCount   int
}

// mark is where a collector was, to compare with later.
type mark struct {
	events, rereads int
}

func startCollectors(t *testing.T, base, key string, n int) *collectors {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	cs := &collectors{}
	for i := 0; i < n; i++ {
		c := &collector{id: strconv.Itoa(i), base: base, key: key}
		cs.all = append(cs.all, c)
		wg.Add(1)
		go func() { defer wg.Done(); c.run(ctx) }()
	}
	return cs
}

func (c *collector) run(ctx context.Context) {
	client := &http.Client{}
	next := uint64(0)
	for ctx.Err() == nil {
		if next == 0 {
			if idx, ok := c.reread(ctx, client); ok {
				next = idx + 1
			} else {
				time.Sleep(50 * time.Millisecond)
			}
			continue
		}
		a := doCtx(ctx, client, http.MethodGet, fmt.Sprintf("%s/v2/keys%s?wait=true&recursive=true&waitIndex=%d", c.base, c.key, next), nil, 2*time.Minute)
		switch {
		case a.err != nil:
			time.Sleep(50 * time.Millisecond) // the relay restarting: ask again
		case a.status == http.StatusBadRequest && strings.Contains(string(a.body), `"errorCode":401`):
			next = 0 // re-read
		case a.status == http.StatusOK && len(a.body) == 0:
			// An empty answer (the relay ended the wait): ask again.
		case a.status == http.StatusOK:
			ev, err := etcd.DecodeEvent(a.body)
			if err != nil {
				panic(fmt.Sprintf("collector: %q: %v", a.body, err))
			}
			c.apply(ev)
			next = ev.Index() + 1
		default:
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// reread reads the whole key and returns the index to wait after.
func (c *collector) reread(ctx context.Context, client *http.Client) (uint64, bool) {
	a := doCtx(ctx, client, http.MethodGet, c.base+"/v2/keys"+c.key+"?recursive=true", nil, 10*time.Second)
	if a.err != nil || a.status != http.StatusOK {
		return 0, false
	}
	var body struct {
		Node *etcd.Node `json:"node"`
	}
	if json.Unmarshal(a.body, &body) != nil {
		return 0, false
	}
	idx, err := strconv.ParseUint(a.header.Get("X-Etcd-Index"), 10, 64)
	if err != nil {
		return 0, false
	}
	state := map[string]string{}
	collect(body.Node, state)
	c.mu.Lock()
	c.state = state
	c.rereadCount++
	c.mu.Unlock()
	return idx, true
}

func (c *collector) apply(ev *etcd.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, ev)
	switch {
	case ev.IsDelete():
		for k := range c.state {
			if k == ev.Key() || strings.HasPrefix(k, ev.Key()+"/") {
				delete(c.state, k)
			}
		}
	case ev.Node.Value != nil:
		c.state[ev.Key()] = *ev.Node.Value
	}
}

func (c *collector) rereads() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rereadCount
}

// since is the events seen after m.
func (c *collector) since(m mark) []*etcd.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*etcd.Event(nil), c.events[m.events:]...)
}

func (cs *collectors) snapshot() map[string]mark {
	out := map[string]mark{}
	for _, c := range cs.all {
		c.mu.Lock()
		out[c.id] = mark{events: len(c.events), rereads: c.rereadCount}
		c.mu.Unlock()
	}
	return out
}

// waitFor waits until every collector holds want.
func (cs *collectors) waitFor(t *testing.T, want map[string]string) {
	t.Helper()
	for _, c := range cs.all {
		testutil.Eventually(t, "client "+c.id+" to hold "+fmt.Sprint(want), func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return fmt.Sprint(c.state) == fmt.Sprint(want)
		})
	}
}
