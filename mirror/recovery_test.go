package mirror

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	client "go.etcd.io/etcd/client/v2"
)

// The mirror is down while more than 1000 events happen: its index leaves
// etcd's history (error 401) and it resynchronises by itself, writing only
// the differences, then streams on.
func TestHistoryClearedResyncsAutomatically(t *testing.T) {
	src, dst := newPair(t)
	cfg := baseConfig(t, src, dst)
	cfg.Reload = true
	for i := range 50 {
		src.Set(t, fmt.Sprintf("/src/k%d", i), "v0")
	}
	m := startMirror(t, cfg)
	m.waitApplied(t, sentinel(t, src, "/src"))
	if err := m.stop(t); err != nil {
		t.Fatal(err)
	}

	for i := range 1100 {
		src.Set(t, fmt.Sprintf("/src/k%d", i%60), fmt.Sprintf("v%d", i))
	}
	src.Delete(t, "/src/k1")
	src.Set(t, "/src/k2", "last")

	cfg.Reload = false
	m2 := startMirror(t, cfg)
	waitTreesEqual(t, src, dst, "/src", "/replica/src", nil)
	// The trees match once the resync has written its last change; it
	// counts itself done just after.
	testutil.Eventually(t, "the resync to end", func() bool { return m2.Status().Resyncs > 0 })
	st := m2.Status()
	if st.Resyncs != 1 {
		t.Fatalf("%d resyncs, want 1 (status %+v)", st.Resyncs, st)
	}
	// It keeps streaming afterwards.
	r := src.Set(t, "/src/after", "resync")
	m2.waitApplied(t, r.Index)
	if n := mustGet(t, dst.Client(), "/replica/src/after"); n.Value != "resync" {
		t.Fatalf("after the resync: %+v", n)
	}
	if got := counter(t, m2.Mirror, "confsync_mirror_resyncs_total", `reason="history_cleared"`); got != 1 {
		t.Errorf("confsync_mirror_resyncs_total{reason=history_cleared} = %v", got)
	}
}

// A quiet source prefix in a busy cluster: the mirror records the index
// etcd proves quiet, so more than 1000 events elsewhere never push it out
// of the history window, and no resync is needed.
func TestQuietPrefixKeepsUpWithBusyCluster(t *testing.T) {
	src, dst := newPair(t)
	cfg := baseConfig(t, src, dst)
	cfg.SourcePrefix, cfg.DestinationPrefix, cfg.Strip = "/conftool", "/conftool", true
	cfg.Reload = true
	src.Set(t, "/conftool/v1/pools/a", "pooled")
	m := startMirror(t, cfg)
	m.waitApplied(t, sentinel(t, src, "/conftool"))

	busy := src.Client()
	var last uint64
	for chunk := range 4 {
		for i := range 300 {
			r, err := busy.Set(context.Background(), fmt.Sprintf("/spicerack/locks/l%d", i%7), fmt.Sprint(chunk, i), nil)
			if err != nil {
				t.Fatal(err)
			}
			last = r.Index
		}
		// The recorded index follows the cluster although nothing
		// happened under /conftool.
		waitFor(t, 30*time.Second, fmt.Sprintf("chunk %d: the index key to pass %d", chunk, last), func() bool {
			return m.Status().PersistedIndex >= last && indexKey(t, dst, "/__replication/conftool") >= last
		})
	}
	if st := m.Status(); st.Resyncs != 1 || m.exited() { // the --reload only
		t.Fatalf("status %+v, exited %t (%v)", st, m.exited(), m.err)
	}

	// Restarting now resumes inside the history window: no resync.
	if err := m.stop(t); err != nil {
		t.Fatal(err)
	}
	cfg.Reload = false
	m2 := startMirror(t, cfg)
	r := src.Set(t, "/conftool/v1/pools/a", "depooled")
	m2.waitApplied(t, r.Index)
	if n := mustGet(t, dst.Client(), "/conftool/v1/pools/a"); n.Value != "depooled" {
		t.Fatalf("after the quiet period: %+v", n)
	}
	if st := m2.Status(); st.Resyncs != 0 {
		t.Fatalf("restart after a quiet period resynchronised: %+v", st)
	}
}

// Both clusters go away and come back while the source keeps changing; the
// mirror retries, reports the error, and converges. It never exits.
func TestRidesOutSourceAndDestinationOutages(t *testing.T) {
	src, dst := newPair(t)
	cfg := baseConfig(t, src, dst)
	cfg.Reload = true
	cfg.IgnoreKeys = `/src/locks(/.*)?`
	cfg.StallTimeout = 3 * time.Second
	m := startMirror(t, cfg)
	m.waitApplied(t, sentinel(t, src, "/src"))
	w := newWorkload(src.Client(), "/src", 3)

	// Destination down: events queue up behind it.
	dst.Stop()
	w.run(context.Background(), 100)
	waitFor(t, 30*time.Second, "the destination error to be reported", func() bool {
		return strings.Contains(m.Status().LastError, "destination")
	})
	waitFor(t, 30*time.Second, "/healthz to report the stall", func() bool { return !m.Status().Healthy })
	if err := dst.Restart(); err != nil {
		t.Fatal(err)
	}
	m.waitApplied(t, sentinel(t, src, "/src"))
	waitTreesEqual(t, src, dst, "/src", "/replica/src", mustRegexp(t, "/src/locks(/.*)?"))
	waitFor(t, 30*time.Second, "health to come back", func() bool { return m.Status().Healthy })

	// Source down: the long poll fails and is retried.
	src.Stop()
	waitFor(t, 30*time.Second, "the source error to be reported", func() bool {
		s := m.Status()
		return strings.Contains(s.LastError, "source") && !s.Healthy
	})
	if err := src.Restart(); err != nil {
		t.Fatal(err)
	}
	w.run(context.Background(), 100)
	m.waitApplied(t, sentinel(t, src, "/src"))
	waitTreesEqual(t, src, dst, "/src", "/replica/src", mustRegexp(t, "/src/locks(/.*)?"))
	if m.exited() {
		t.Fatalf("mirror exited: %v", m.err)
	}
	if got := counter(t, m.Mirror, "confsync_mirror_errors_total", `side="destination"`); got == 0 {
		t.Error("no destination error counted")
	}
}

// A key changed on the replica behind the mirror's back: the next source
// event on it stops replication, naming the key, both values and the
// index, and the recorded index stays below that event.
func TestDivergenceStops(t *testing.T) {
	src, dst := newPair(t)
	cfg := baseConfig(t, src, dst)
	cfg.Reload = true
	src.Set(t, "/src/pool/mw1", `{"pooled":"yes"}`)
	m := startMirror(t, cfg)
	m.waitApplied(t, sentinel(t, src, "/src"))

	dst.Set(t, "/replica/src/pool/mw1", `{"pooled":"tampered"}`)
	r, err := src.Client().Set(context.Background(), "/src/pool/mw1", `{"pooled":"no"}`, &client.SetOptions{PrevValue: `{"pooled":"yes"}`})
	if err != nil {
		t.Fatal(err)
	}
	err = m.wait(t, 30*time.Second)
	div := asDivergence(err)
	if div == nil {
		t.Fatalf("Run returned %v, want a divergence", err)
	}
	if div.Index != r.Node.ModifiedIndex || div.SourceKey != "/src/pool/mw1" || div.DestKey != "/replica/src/pool/mw1" ||
		div.Expected != `"{\"pooled\":\"yes\"}"` || div.Found != `"{\"pooled\":\"tampered\"}"` {
		t.Fatalf("divergence %+v", div)
	}
	for _, want := range []string{"/src/pool/mw1", "tampered", fmt.Sprint(r.Node.ModifiedIndex), "--reload"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
	}
	if idx := indexKey(t, dst, "/__replication/replica"); idx >= r.Node.ModifiedIndex {
		t.Fatalf("index key %d passed the event %d that was not applied", idx, r.Node.ModifiedIndex)
	}
	if n := mustGet(t, dst.Client(), "/replica/src/pool/mw1"); !strings.Contains(n.Value, "tampered") {
		t.Fatalf("the diverged key was overwritten: %+v", n)
	}
}

// --reload on a destination that differs from the source: a reader polling
// the destination throughout never finds a key missing that exists on both
// sides before and after, and sees the changes arrive piecemeal rather than
// after an empty prefix.
func TestReloadNeverEmptiesTheDestination(t *testing.T) {
	src, dst := newPair(t)
	const n = 600
	s, d := src.Client(), dst.Client()
	ctx := context.Background()
	var stable []string
	for i := range n {
		k := fmt.Sprintf("/src/k%04d", i)
		s.Set(ctx, k, "new", nil)
		switch {
		case i%3 == 0:
			d.Set(ctx, "/replica"+k, "old", nil) // differs: rewritten
			stable = append(stable, "/replica"+k)
		case i%3 == 1:
			d.Set(ctx, "/replica"+k, "new", nil) // equal: must not be touched
			stable = append(stable, "/replica"+k)
		}
		// i%3 == 2: missing on the destination
	}
	for i := range n / 3 {
		d.Set(ctx, fmt.Sprintf("/replica/src/gone%04d", i), "extra", nil)
	}
	equalBefore := mustGet(t, d, "/replica/src/k0001").ModifiedIndex

	var reads, mixed atomic.Int64
	var missing sync.Map
	stop := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := d.Get(ctx, "/replica/src", &client.GetOptions{Recursive: true, Quorum: true})
			if err != nil {
				missing.Store("whole prefix", err.Error())
				continue
			}
			seen := map[string]string{}
			for _, c := range resp.Node.Nodes {
				seen[c.Key] = c.Value
			}
			old, fresh := 0, 0
			for _, k := range stable {
				switch v, ok := seen[k]; {
				case !ok:
					missing.Store(k, "absent")
				case v == "old":
					old++
				default:
					fresh++
				}
			}
			reads.Add(1)
			if old > 0 && fresh > n/3 {
				mixed.Add(1)
			}
		}
	}()

	cfg := baseConfig(t, src, dst)
	cfg.Reload = true
	cfg.Concurrency = 1 // a slow reload gives the reader time to look
	m := startMirror(t, cfg)
	waitTreesEqual(t, src, dst, "/src", "/replica/src", nil)
	close(stop)
	<-readerDone

	missing.Range(func(k, v any) bool {
		t.Errorf("reader found %v %v during the reload", k, v)
		return true
	})
	if mixed.Load() == 0 {
		t.Errorf("none of %d reads happened while the reload was writing; the test proves nothing", reads.Load())
	}
	if mustGet(t, d, "/replica/src/k0001").ModifiedIndex != equalBefore {
		t.Error("a key equal on both sides was rewritten")
	}
	t.Logf("%d reads, %d during the reload; status %+v", reads.Load(), mixed.Load(), m.Status())
}

// After an unclean stop the index key can lag behind what was applied, by
// several events per key. The replay window recorded beside it lets the
// restart accept a destination that is already past those events.
func TestReplayAfterUncleanStopIsNotDivergence(t *testing.T) {
	src, dst := newPair(t)
	cfg := baseConfig(t, src, dst)
	cfg.Reload = true
	m := startMirror(t, cfg)
	start := sentinel(t, src, "/src")
	m.waitApplied(t, start)
	for i := range 30 {
		src.Set(t, fmt.Sprintf("/src/k%d", i%3), fmt.Sprint(i))
	}
	src.Delete(t, "/src/k0")
	last := sentinel(t, src, "/src")
	m.waitApplied(t, last)
	if err := m.stop(t); err != nil {
		t.Fatal(err)
	}
	// Pretend the process died right after applying everything but before
	// recording it: the index is back at the start, the window covers all.
	dst.Set(t, "/__replication/replica", fmt.Sprint(start))
	setWindow(t, dst, "/__replication/replica.source", last)

	cfg.Reload = false
	m2 := startMirror(t, cfg)
	m2.waitApplied(t, last)
	waitTreesEqual(t, src, dst, "/src", "/replica/src", nil)
	st := m2.Status()
	if st.Replayed == 0 || st.Resyncs != 0 || m2.exited() {
		t.Fatalf("status %+v (exited %t: %v)", st, m2.exited(), m2.err)
	}
}

// setWindow edits the replay window in the state key, as a crash would
// leave it.
func setWindow(t *testing.T, s *etcdtest.Server, key string, through uint64) {
	t.Helper()
	n := mustGet(t, s.Client(), key)
	v := n.Value
	i := strings.Index(v, `"may_have_applied_through":`)
	j := i + strings.IndexAny(v[i:], ",}")
	s.Set(t, key, v[:i]+fmt.Sprintf(`"may_have_applied_through":%d`, through)+v[j:])
}
