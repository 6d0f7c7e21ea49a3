package etcd_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
)

// recorder is a FeedHandler that remembers everything, in order.
type recorder struct {
	mu      sync.Mutex
	resets  []string
	events  []*etcd.Event
	indexes []uint64 // every index handed over, events and progress
	values  map[string]string
}

func (r *recorder) Reset(l *etcd.Listing, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resets = append(r.resets, reason)
	r.values = map[string]string{}
	var walk func(n *etcd.Node)
	walk = func(n *etcd.Node) {
		if n == nil {
			return
		}
		if !n.Dir && n.Value != nil {
			r.values[n.Key] = *n.Value
		}
		for _, c := range n.Nodes {
			walk(c)
		}
	}
	walk(l.Node)
	r.indexes = append(r.indexes, l.Index)
}

func (r *recorder) Apply(ev *etcd.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	r.indexes = append(r.indexes, ev.Index())
	if ev.IsDelete() {
		delete(r.values, ev.Node.Key)
	} else if ev.Node.Value != nil {
		r.values[ev.Node.Key] = *ev.Node.Value
	}
}

func (r *recorder) Progress(index uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.indexes = append(r.indexes, index)
}

func (r *recorder) value(key string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.values[key]
}

func (r *recorder) resetCount(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, x := range r.resets {
		if x == reason {
			n++
		}
	}
	return n
}

// inOrder checks that indexes never went back.
func (r *recorder) inOrder(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := 1; i < len(r.indexes); i++ {
		if r.indexes[i] < r.indexes[i-1] {
			t.Fatalf("index went back from %d to %d", r.indexes[i-1], r.indexes[i])
		}
	}
}

func runFeed(t *testing.T, endpoints []string, cfg etcd.FeedConfig) (*etcd.Feed, *recorder) {
	t.Helper()
	c := newClient(t, etcd.Config{Endpoints: endpoints})
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	}
	f := c.NewFeed(cfg)
	r := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx, r) }()
	t.Cleanup(func() { cancel(); <-done })
	testutil.Eventually(t, "the first read", func() bool { return r.resetCount("initial") == 1 })
	return f, r
}

// Once the path to etcd is proven, events arrive on one streamed answer:
// a burst costs no request per event.
func TestFeedStreamsOnceProven(t *testing.T) {
	srv := etcdtest.New(t)
	proxy := etcdtest.NewProxy(t, srv.URL())
	f, r := runFeed(t, []string{proxy.URL()}, etcd.FeedConfig{Prefix: "/app"})
	srv.Set(t, "/app/k", "first")
	testutil.Eventually(t, "streaming", func() bool { return f.Status().Mode == "stream" && r.value("/app/k") == "first" })
	testutil.Eventually(t, "the stream to be open", func() bool { return proxy.OpenWatches() == 1 })
	proxy.Reset()
	for i := 0; i < 50; i++ {
		srv.Set(t, "/app/k", fmt.Sprint(i))
	}
	testutil.Eventually(t, "the last event", func() bool { return r.value("/app/k") == "49" })
	if n := proxy.Count(nil); n > 2 {
		t.Errorf("%d requests for 50 events on a stream", n)
	}
	r.inOrder(t)
}

// bufferingProxy holds every answer's body back until 64 KiB have gathered
// or the answer ends, as nginx does with proxy_buffering on: a long poll
// goes through, a streamed watch is held.
func bufferingProxy(t *testing.T, target string) *httptest.Server {
	u, _ := url.Parse(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		out := r.Clone(r.Context())
		out.URL.Scheme, out.URL.Host, out.RequestURI = u.Scheme, u.Host, ""
		resp, err := http.DefaultTransport.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		w.(http.Flusher).Flush()
		var held []byte
		buf := make([]byte, 4096)
		for {
			n, err := resp.Body.Read(buf)
			held = append(held, buf[:n]...)
			if len(held) >= 64<<10 || err != nil {
				w.Write(held)
				w.(http.Flusher).Flush()
				held = held[:0]
			}
			if err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// Behind a proxy that buffers answers, a stream would hold events back:
// the feed finds out, says so once, keeps to long polls, and misses
// nothing.
func TestFeedKeepsToLongPollsBehindABufferingProxy(t *testing.T) {
	srv := etcdtest.New(t)
	proxy := bufferingProxy(t, srv.URL())
	f, r := runFeed(t, []string{proxy.URL}, etcd.FeedConfig{Prefix: "/app", ProofTimeout: time.Second})
	for i := 0; i < 20; i++ {
		srv.Set(t, "/app/k", fmt.Sprint(i))
		want := fmt.Sprint(i)
		testutil.Eventually(t, "event "+want, func() bool { return r.value("/app/k") == want })
	}
	st := f.Status()
	if st.Mode != "long-poll" || len(st.Buffering) != 1 || st.Buffering[0] != proxy.URL {
		t.Fatalf("status %+v: want long polls and %s named as holding streams back", st, proxy.URL)
	}
	r.inOrder(t)
}

// A stream cut in the middle of a burst resumes from the last index: every
// event arrives once, in order.
func TestFeedResumesACutStreamWithoutAGap(t *testing.T) {
	srv := etcdtest.New(t)
	proxy := etcdtest.NewProxy(t, srv.URL())
	f, r := runFeed(t, []string{proxy.URL()}, etcd.FeedConfig{Prefix: "/app"})
	srv.Set(t, "/app/k", "start")
	testutil.Eventually(t, "streaming", func() bool { return f.Status().Mode == "stream" })
	for i := 0; i < 300; i++ {
		srv.Set(t, fmt.Sprintf("/app/k%d", i%7), fmt.Sprint(i))
		if i%60 == 30 {
			proxy.CloseClientConnections()
		}
	}
	last := srv.Set(t, "/app/done", "yes")
	testutil.Eventually(t, "the last event", func() bool { return r.value("/app/done") == "yes" })
	r.mu.Lock()
	seen := map[uint64]int{}
	for _, ev := range r.events {
		seen[ev.Index()]++
	}
	r.mu.Unlock()
	for idx, n := range seen {
		if n > 1 {
			t.Errorf("event %d applied %d times", idx, n)
		}
	}
	if len(seen) < 301 || r.resetCount("history-cleared") != 0 {
		t.Errorf("%d events seen up to %d, %d re-reads", len(seen), last.Index, len(r.resets)-1)
	}
	r.inOrder(t)
}

// A member that accepts connections but never answers (hung) is left for
// the next endpoint after the watch header timeout.
func TestFeedLeavesAHungMember(t *testing.T) {
	srv := etcdtest.New(t)
	hung, ok := etcdtest.NewProxy(t, srv.URL()), etcdtest.NewProxy(t, srv.URL())
	srv.Set(t, "/app/k", "0")
	f, r := runFeed(t, []string{hung.URL(), ok.URL()}, etcd.FeedConfig{Prefix: "/app", PollTimeout: 500 * time.Millisecond,
		WatchHeaderTimeout: 500 * time.Millisecond})
	hung.SetDelay(time.Hour)
	srv.Set(t, "/app/k", "1")
	testutil.Eventually(t, "the event through the other member", func() bool { return r.value("/app/k") == "1" })
	testutil.Eventually(t, "the feed connected to the other member", func() bool {
		st := f.Status()
		return st.Endpoint == ok.URL() && st.Connected
	})
}

// etcd ends a poll with an empty 200 when it shuts a watch down; the feed
// asks again and gets the event.
func TestFeedRetriesEmptyAnswers(t *testing.T) {
	srv := etcdtest.New(t)
	proxy := etcdtest.NewProxy(t, srv.URL())
	_, r := runFeed(t, []string{proxy.URL()}, etcd.FeedConfig{Prefix: "/app", NoStream: true})
	proxy.EmptyWatches(2)
	srv.Set(t, "/app/k", "after empties")
	testutil.Eventually(t, "the event", func() bool { return r.value("/app/k") == "after empties" })
}

// An error answer that is not etcd's (a proxy's page) is reported with its
// status, naming the endpoint.
func TestFeedReportsForeignErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		io.WriteString(w, "<html>bad gateway</html>")
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, etcd.Config{Endpoints: []string{srv.URL}})
	f := c.NewFeed(etcd.FeedConfig{Prefix: "/app", MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx, &recorder{}) }()
	t.Cleanup(func() { cancel(); <-done })
	testutil.Eventually(t, "the error in the status", func() bool {
		st := f.Status()
		return !st.Connected && strings.Contains(st.LastError, "502") && strings.Contains(st.LastError, srv.URL)
	})
}
