package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/internal/etcdtest"
	client "go.etcd.io/etcd/client/v2"
)

// testLogger sends a mirror's logs to the test log, and stops when the test
// ends so that a late line never reaches a finished test.
func testLogger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// baseConfig replicates /src on src into /replica/src on dst (no --strip),
// with timeouts short enough for tests.
func baseConfig(t testing.TB, src, dst *etcdtest.Server) Config {
	return Config{
		Source:            etcd.Config{Endpoints: []string{src.URL()}},
		Destination:       etcd.Config{Endpoints: []string{dst.URL()}},
		SourcePrefix:      "/src",
		DestinationPrefix: "/replica",
		PollTimeout:       2 * time.Second,
		MaxBackoff:        500 * time.Millisecond,
		Logger:            testLogger(t),
	}
}

// running is a mirror started in the background.
type running struct {
	*Mirror
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func startMirror(t testing.TB, cfg Config) *running {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Mirror: m, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = m.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		r.stop(t)
		m.Close()
	})
	return r
}

// stop cancels the mirror and returns what Run returned.
func (r *running) stop(t testing.TB) error {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Fatal("mirror did not stop within 30s of cancellation")
	}
	return r.err
}

// wait returns Run's result once it ends by itself.
func (r *running) wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(timeout):
		t.Fatalf("mirror still running after %s; status %+v", timeout, r.Status())
		return nil
	}
}

func (r *running) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitApplied waits until the mirror has applied every event up to idx.
func (r *running) waitApplied(t testing.TB, idx uint64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for r.Status().AppliedIndex < idx {
		if r.exited() {
			t.Fatalf("mirror stopped before reaching index %d: %v", idx, r.err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("mirror did not reach index %d within 60s; status %+v", idx, r.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// snapshotTree renders a subtree as key → description, keys relative to
// root: "dir", or "file=<value>", with " ttl" when the node expires.
// Keys matching skip (on the full key) are left out.
func snapshotTree(t testing.TB, keys client.KeysAPI, root string, skip *regexp.Regexp) map[string]string {
	t.Helper()
	resp, err := keys.Get(context.Background(), root, &client.GetOptions{Recursive: true, Quorum: true})
	out := map[string]string{}
	if etcd.IsKeyNotFound(err) {
		return out
	}
	if err != nil {
		t.Fatalf("read %s: %v", root, err)
	}
	var walk func(n *client.Node)
	walk = func(n *client.Node) {
		key := n.Key
		if key == "" {
			key = "/"
		}
		if skip == nil || !skip.MatchString(key) {
			rel := strings.TrimPrefix(key, strings.TrimSuffix(root, "/"))
			if rel == "" {
				rel = "/"
			}
			desc := "dir"
			if !n.Dir {
				desc = "file=" + n.Value
			}
			if n.Expiration != nil {
				desc += " ttl"
			}
			if !(key == "/" || rel == "/" && n.Dir) {
				out[rel] = desc
			}
		}
		for _, c := range n.Nodes {
			walk(c)
		}
	}
	walk(resp.Node)
	return out
}

// treeDiff describes how two snapshots differ, "" when they are equal.
func treeDiff(want, got map[string]string) string {
	var lines []string
	for k, w := range want {
		if g, ok := got[k]; !ok {
			lines = append(lines, fmt.Sprintf("  missing %s (%s)", k, w))
		} else if g != w {
			lines = append(lines, fmt.Sprintf("  %s: want %s, got %s", k, w, g))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			lines = append(lines, fmt.Sprintf("  extra %s (%s)", k, g))
		}
	}
	sort.Strings(lines)
	if len(lines) > 30 {
		lines = append(lines[:30], fmt.Sprintf("  ... and %d more", len(lines)-30))
	}
	return strings.Join(lines, "\n")
}

// waitTreesEqual waits until the destination subtree mirrors the source
// subtree (TTL'd keys may expire meanwhile, hence the retry).
func waitTreesEqual(t testing.TB, src, dst *etcdtest.Server, srcRoot, dstRoot string, skip *regexp.Regexp) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		want := snapshotTree(t, src.Client(), srcRoot, skip)
		got := snapshotTree(t, dst.Client(), dstRoot, nil)
		d := treeDiff(want, got)
		if d == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("destination %s does not mirror source %s:\n%s", dstRoot, srcRoot, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sentinel writes a key under the source prefix and returns its index, so
// a test can wait for the mirror to pass everything written before it.
func sentinel(t testing.TB, src *etcdtest.Server, prefix string) uint64 {
	t.Helper()
	return src.Set(t, strings.TrimSuffix(prefix, "/")+"/sentinel", time.Now().String()).Index
}

func mustGet(t testing.TB, keys client.KeysAPI, key string) *client.Node {
	t.Helper()
	resp, err := keys.Get(context.Background(), key, &client.GetOptions{Quorum: true})
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return resp.Node
}

func isAbsent(t testing.TB, keys client.KeysAPI, key string) bool {
	t.Helper()
	_, err := keys.Get(context.Background(), key, &client.GetOptions{Quorum: true})
	if err != nil && !etcd.IsKeyNotFound(err) {
		t.Fatalf("get %s: %v", key, err)
	}
	return err != nil
}

func asDivergence(err error) *DivergenceError {
	var d *DivergenceError
	if errors.As(err, &d) {
		return d
	}
	return nil
}

func asRefusal(err error) *RefusalError {
	var r *RefusalError
	if errors.As(err, &r) {
		return r
	}
	return nil
}

func (c Config) ignoreRegexp(t testing.TB) *regexp.Regexp {
	re, err := compileIgnore(c.IgnoreKeys)
	if err != nil {
		t.Fatal(err)
	}
	return re
}

func itoa(i uint64) string { return fmt.Sprint(i) }

// newPair starts a source and a destination cluster.
func newPair(t testing.TB) (src, dst *etcdtest.Server) {
	return etcdtest.New(t), etcdtest.New(t)
}

func mustRegexp(t testing.TB, expr string) *regexp.Regexp {
	re, err := compileIgnore(expr)
	if err != nil {
		t.Fatal(err)
	}
	return re
}

// counter reads one series from the mirror's registry: the first metric
// named name whose labels, rendered as k="v" pairs, contain labels.
func counter(t testing.TB, m *Mirror, name, labels string) float64 {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, metric := range f.GetMetric() {
			var pairs []string
			for _, l := range metric.GetLabel() {
				pairs = append(pairs, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			if !strings.Contains(strings.Join(pairs, ","), labels) {
				continue
			}
			switch {
			case metric.Counter != nil:
				return metric.Counter.GetValue()
			case metric.Gauge != nil:
				return metric.Gauge.GetValue()
			}
		}
	}
	return 0
}
