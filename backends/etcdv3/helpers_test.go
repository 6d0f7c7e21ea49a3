package etcdv3_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/etcdv3"
	"github.com/confsync/confsync/backends/keyspace"
	"github.com/confsync/confsync/internal/testutil"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// writer is a v3 client for a test's writes.
type writer struct {
	t   testing.TB
	cli *clientv3.Client
}

func newWriter(t testing.TB, tlsCfg *tls.Config, user, password string, endpoints ...string) *writer {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tlsCfg, Username: user, Password: password,
		DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return &writer{t: t, cli: cli}
}

func (w *writer) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// put writes a key, retrying while the cluster elects a leader, and
// returns the revision of the write.
func (w *writer) put(key, value string) int64 {
	w.t.Helper()
	return w.retry("put "+key, func(ctx context.Context) (*etcdserverpb.ResponseHeader, error) {
		resp, err := w.cli.Put(ctx, key, value)
		if err != nil {
			return nil, err
		}
		return resp.Header, nil
	})
}

func (w *writer) del(key string) int64 {
	w.t.Helper()
	return w.retry("delete "+key, func(ctx context.Context) (*etcdserverpb.ResponseHeader, error) {
		resp, err := w.cli.Delete(ctx, key)
		if err != nil {
			return nil, err
		}
		return resp.Header, nil
	})
}

func (w *writer) retry(what string, op func(context.Context) (*etcdserverpb.ResponseHeader, error)) int64 {
	w.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		h, err := op(ctx)
		cancel()
		if err == nil {
			return h.Revision
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (w *writer) compact(rev int64) {
	w.t.Helper()
	ctx, cancel := w.ctx()
	defer cancel()
	if _, err := w.cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		w.t.Fatalf("compact at %d: %v", rev, err)
	}
}

// values is what etcd holds at or below prefix, as a v2 tree shows it:
// whole segments, no hidden keys.
func (w *writer) values(prefix string) map[string]string {
	w.t.Helper()
	ctx, cancel := w.ctx()
	defer cancel()
	resp, err := w.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		w.t.Fatalf("read %s: %v", prefix, err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		if backends.Covers(prefix, k) && backends.CleanKey(k) == k && !strings.Contains(k[len(prefix):], "/_") {
			out[k] = string(kv.Value)
		}
	}
	return out
}

// recorder is a FeedHandler keeping the copy an agent keeps: a keyspace.
type recorder struct {
	mu      sync.Mutex
	prefix  string
	space   *keyspace.Space
	resets  []string
	indexes []uint64            // every index handed over: resets, events and progress
	actions map[string][]string // key -> the actions of its events
}

func (r *recorder) Reset(l *etcd.Listing, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.space = keyspace.FromWire(r.prefix, l.Node, l.Index)
	r.resets = append(r.resets, reason)
	r.indexes = append(r.indexes, l.Index)
}

func (r *recorder) Apply(ev *etcd.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !ev.Flat {
		panic("a v3 event that is not flat")
	}
	r.space = r.space.Apply(ev)
	r.indexes = append(r.indexes, ev.Index())
	if r.actions == nil {
		r.actions = map[string][]string{}
	}
	r.actions[ev.Node.Key] = append(r.actions[ev.Node.Key], ev.Action)
}

func (r *recorder) Progress(index uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.space = r.space.WithIndex(index)
	r.indexes = append(r.indexes, index)
}

func (r *recorder) values() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]string{}
	if r.space != nil {
		r.space.WalkLeaves(r.prefix, func(k, v string) bool { out[k] = v; return true })
	}
	return out
}

func (r *recorder) index() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.space == nil {
		return 0
	}
	return r.space.Index()
}

// reads are the reasons of every full read so far.
func (r *recorder) reads() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.resets...)
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

// inOrder checks that the index handed over never went back.
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

// matches waits until the copy holds exactly what etcd holds under prefix.
func (r *recorder) matches(t *testing.T, w *writer, what string) {
	t.Helper()
	var got, want map[string]string
	testutil.Eventually(t, what, func() bool {
		got, want = r.values(), w.values(r.prefix)
		return reflect.DeepEqual(got, want)
	})
}

func newClient(t testing.TB, cfg etcd.Config) *etcdv3.Client {
	t.Helper()
	c, err := etcdv3.New(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// runFeed follows prefix until the test ends and waits for the first read.
func runFeed(t *testing.T, cfg etcd.Config, fc etcd.FeedConfig) (*etcdv3.Feed, *recorder) {
	t.Helper()
	c := newClient(t, cfg)
	if fc.MinBackoff == 0 {
		fc.MinBackoff, fc.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	}
	if fc.WatchHeaderTimeout == 0 {
		fc.WatchHeaderTimeout = 2 * time.Second
	}
	f := c.NewFeed(fc)
	r := &recorder{prefix: backends.CleanKey(fc.Prefix)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx, r) }()
	t.Cleanup(func() { cancel(); <-done })
	testutil.Eventually(t, "the first read", func() bool { return r.resetCount("initial") == 1 })
	return f, r
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func describeValues(m map[string]string) string {
	var b strings.Builder
	for _, k := range sortedKeys(m) {
		fmt.Fprintf(&b, "%s=%s ", k, m[k])
	}
	return b.String()
}
