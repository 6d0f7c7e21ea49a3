package watch

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/keyspace"
	"github.com/confsync/confsync/internal/fixture"
)

// benchWatcher is a watcher holding a 10k-key conftool tree, with a root
// per pool for the first 100 pools, fed directly (no etcd): what an event
// costs the watch itself.
func benchWatcher(b *testing.B) (*Watcher, *handler, []string) {
	site := fixture.Generate(fixture.Options{Seed: 1, Keys: 10000})
	var tb backends.Builder
	pools := map[string]bool{}
	var keys []string
	for _, k := range site.Keys() {
		tb.Set(k, site.Values[k])
		keys = append(keys, k)
		if strings.HasPrefix(k, fixture.Prefix+"/pools/") {
			pools[k[:strings.LastIndex(k, "/")]] = true
		}
	}
	var roots []string
	for p := range pools {
		if len(roots) < 100 {
			roots = append(roots, p)
		}
	}
	w := New(Config{})
	w.roots = backends.MinimalRoots(roots)
	h := &handler{w: w, prefix: fixture.Prefix}
	h.install(keyspace.FromLeaves(fixture.Prefix, tb.Tree(), 1), "c", "initial")
	return w, h, keys
}

// BenchmarkEventNoRootReads is an event under the watched prefix that no
// root reads: a tree update in memory, no render.
func BenchmarkEventNoRootReads(b *testing.B) {
	w, h, keys := benchWatcher(b)
	var unread string
	for _, k := range keys {
		if strings.Contains(k, "/discovery/") {
			unread = k
			break
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v := fmt.Sprint(i)
		h.Apply(&etcd.Event{Action: "set", Node: &etcd.Node{Key: unread, Value: &v, ModifiedIndex: uint64(i + 2), CreatedIndex: 2}})
	}
	_ = w
}

// BenchmarkEventInAPool is an event a root reads.
func BenchmarkEventInAPool(b *testing.B) {
	w, h, _ := benchWatcher(b)
	var key string
	for r := range w.trees {
		w.trees[r].Walk(r, func(k, _ string) bool { key = k; return false })
		break
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v := fmt.Sprint(i)
		h.Apply(&etcd.Event{Action: "set", Node: &etcd.Node{Key: key, Value: &v, ModifiedIndex: uint64(i + 2), CreatedIndex: 2}})
	}
}

// BenchmarkCacheSave10k saves the 10k-key copy.
func BenchmarkCacheSave10k(b *testing.B) {
	w, _, _ := benchWatcher(b)
	c := &Cache{Path: filepath.Join(b.TempDir(), "cache.json"), Source: "bench"}
	cp := w.Copy()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cp.Space = cp.Space.WithIndex(uint64(i + 10))
		cp.FetchedAt = time.Now()
		if err := c.Save(cp); err != nil {
			b.Fatal(err)
		}
	}
}
