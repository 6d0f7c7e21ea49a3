package watch

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/backends"
)

// Fuzz targets for what decides the one watch and what a restart trusts
// from disk. Seeds: f.Add below and testdata/fuzz/<name>. Run one for
// longer with
//
//	go test -run '^$' -fuzz '^FuzzCacheLoad$' -fuzztime 1m ./backends/watch
//
// or all of them with scripts/fuzz.sh.

// hiddenUnder reports, the slow way, whether a clean key has a segment
// starting with "_" below the clean prefix.
func hiddenUnder(prefix, key string) bool {
	segs := backends.Segments(key)[len(backends.Segments(prefix)):]
	for _, s := range segs {
		if strings.HasPrefix(s, "_") {
			return true
		}
	}
	return false
}

// FuzzPrefixFor: the prefix one watch follows covers every root, none of
// them hidden below it, or PrefixFor says why not; without a configured
// prefix that is the longest common ancestor, which always covers every
// root.
func FuzzPrefixFor(f *testing.F) {
	f.Add("", "/conftool/v1/pools/eqiad/a\n/conftool/v1/pools/codfw/b")
	f.Add("/conftool", "/conftool/v1/pools\n/conftool/v1/mediawiki-config")
	f.Add("/conf", "/conftool/v1")
	f.Add("", "/app\n/apple")
	f.Add("/", "/_hidden/x")
	f.Add("/_c", "/_c/x")
	f.Add("", "/a/_b/../c\n/a/d")
	f.Add("", "/a/../b\n/a/c")
	f.Add("", "//_c/x")
	f.Add("/x/", "")
	f.Fuzz(func(t *testing.T, configured, list string) {
		var roots []string
		if list != "" {
			roots = strings.Split(list, "\n")
		}
		if len(roots) > 100 {
			roots = roots[:100]
		}
		ancestor := CommonAncestor(roots)
		if ancestor != backends.CleanKey(ancestor) {
			t.Fatalf("CommonAncestor(%q) = %q, not clean", roots, ancestor)
		}
		for _, r := range roots {
			if !backends.Covers(ancestor, r) {
				t.Fatalf("CommonAncestor(%q) = %q does not cover %q", roots, ancestor, r)
			}
		}
		// Longest: one segment more, taken from any root, leaves a root out.
		if len(roots) > 0 {
			longer := backends.Segments(backends.CleanKey(roots[0]))
			if n := len(backends.Segments(ancestor)); n < len(longer) {
				next := "/" + strings.Join(longer[:n+1], "/")
				all := true
				for _, r := range roots {
					all = all && backends.Covers(next, r)
				}
				if all {
					t.Fatalf("CommonAncestor(%q) = %q, but %q covers every root too", roots, ancestor, next)
				}
			}
		}

		prefix, err := PrefixFor(configured, roots)
		want := backends.CleanKey(configured)
		if configured == "" {
			want = ancestor
		}
		bad, isBad := "", false
		for _, r := range roots {
			if !backends.Covers(want, r) || hiddenUnder(want, backends.CleanKey(r)) {
				bad, isBad = r, true
				break
			}
		}
		switch {
		case err != nil && !isBad:
			t.Fatalf("PrefixFor(%q, %q): %v; but %s covers every root, none hidden", configured, roots, err, want)
		case err == nil && isBad:
			t.Fatalf("PrefixFor(%q, %q) = %q, which cannot follow %q", configured, roots, prefix, bad)
		case err == nil && prefix != want:
			t.Fatalf("PrefixFor(%q, %q) = %q, want %q", configured, roots, prefix, want)
		case err != nil && !strings.Contains(err.Error(), bad):
			t.Fatalf("PrefixFor(%q, %q): %v does not name %q", configured, roots, err, bad)
		}
	})
}

// fuzzSource is the source the fuzzed caches are loaded for.
const fuzzSource = "etcd:http://127.0.0.1:2379"

// FuzzCacheLoad: Load on any file contents never panics and never accepts
// a cache written for another source (one file is never accepted by two
// caches of different sources); an accepted cache's Space is sound
// (clean prefix, only keys under it and none hidden, each leaf found where
// it is listed, Len counting them), and saving it and loading it again
// gives the same nodes.
func FuzzCacheLoad(f *testing.F) {
	for _, seed := range []string{
		`{"format":2,"source":"etcd:http://127.0.0.1:2379","saved_at":"2026-01-02T03:04:05Z","prefix":"/a","etcd_index":42,"cluster_id":"abc","fetched_at":"2026-01-02T03:04:05Z","node":{"key":"/a","dir":true,"nodes":[{"key":"/a/x","value":"1","modifiedIndex":9,"createdIndex":4},{"key":"/a/empty","dir":true,"modifiedIndex":5,"createdIndex":5},{"key":"/a/y","dir":true,"nodes":[{"key":"/a/y/z","value":"","expiration":"2030-01-01T00:00:00Z","ttl":100,"modifiedIndex":7,"createdIndex":7}],"modifiedIndex":6,"createdIndex":6}],"modifiedIndex":3,"createdIndex":3}}`,
		`{"format":2,"source":"etcd:http://127.0.0.1:2379","prefix":"/","node":{"dir":true,"nodes":[{"key":"/a","value":"1"},{"key":"/_h","value":"2"}]}}`,
		`{"format":2,"source":"etcd:http://127.0.0.1:2379","prefix":"/a","node":null}`,
		`{"format":2,"source":"etcd:http://127.0.0.1:2379","prefix":"/a","node":{"key":"/a","dir":true,"nodes":[null]}}`,
		`{"format":2,"source":"etcd:http://127.0.0.1:2379","prefix":"/a","node":{"key":"/a","dir":true,"nodes":[{"key":"/a/x","value":"1"},{"key":"/a/x","value":"2"}]}}`,
		`{"format":2,"source":"etcd:http://127.0.0.1:2379","prefix":"/a","node":{"key":"/a/b","dir":true,"nodes":[{"key":"/a/b/c","value":"1"}]}}`,
		`{"format":2,"source":"etcd:http://127.0.0.1:2379","prefix":"/a","node":{"key":"/a","dir":true,"nodes":[{"key":"/a/b/c","value":"1"}]}}`,
		`{"format":2,"source":"etcd:http://127.0.0.1:2379","prefix":"/a","node":{"key":"/a","value":"v","nodes":[{"key":"/a/b","value":"1"}]}}`,
		`{"format":2,"source":"http://elsewhere:2379","prefix":"/a","node":{"key":"/a","dir":true}}`,
		`{"format":2,"SOURCE":"etcd:http://127.0.0.1:2379","source":"x","prefix":"/a"}`,
		`{"format":1,"source":"etcd:http://127.0.0.1:2379","saved_at":"2026-01-01T00:00:00Z","roots":{"/p/a":{"etcd_index":10,"cluster_id":"cid","fetched_at":"2026-01-01T00:00:00Z","values":{"/p/a/k":"1"}},"/p/b":{"etcd_index":12,"values":{"/p/b/x/y":"2","/p/b/_h":"3"}}}}`,
		`{"format":1,"source":"etcd:http://127.0.0.1:2379","roots":{"/p":{"values":{"/p/a":"1","/p/a/b":"2"}}}}`,
		`{"format":1,"source":"etcd:http://127.0.0.1:2379","roots":{"/p":{},"/p/q":{}}}`,
		`{"format":1,"source":"etcd:http://127.0.0.1:2379","roots":{"p/":{"values":{"/p/../q":"1"}}}}`,
		`{"format":3,"source":"etcd:http://127.0.0.1:2379"}`,
		`{"format":2,"sou`,
		``,
	} {
		f.Add([]byte(seed))
	}
	dir := fastTempDir(f)
	c := &Cache{Path: filepath.Join(dir, "cache.json"), Source: fuzzSource}
	other := &Cache{Path: c.Path, Source: "etcd:http://elsewhere:2379"}
	resaved := &Cache{Path: filepath.Join(dir, "resaved.json"), Source: fuzzSource}
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(c.Path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cp, err := c.Load()
		if _, otherErr := other.Load(); err == nil && otherErr == nil {
			t.Fatalf("one cache file was accepted for %q and for %q", c.Source, other.Source)
		}
		var declared struct{ Source string }
		if err == nil && (json.Unmarshal(data, &declared) != nil || declared.Source != c.Source) {
			t.Fatalf("a cache written for %q was accepted for %q", declared.Source, c.Source)
		}
		if err != nil {
			if !strings.Contains(err.Error(), c.Path) {
				t.Fatalf("error %q does not name the cache file", err)
			}
			return
		}
		if cp == nil {
			return // an empty format 1 cache: no data, start without
		}
		checkSpace(t, cp)
		if err := resaved.Save(*cp); err != nil {
			t.Fatal(err)
		}
		again, err := resaved.Load()
		if err != nil || again == nil {
			t.Fatalf("the saved copy does not load again: %v", err)
		}
		now := time.Now()
		before := cp.Space.AppendJSON(nil, cp.Space.Prefix(), true, now)
		after := again.Space.AppendJSON(nil, again.Space.Prefix(), true, now)
		if !bytes.Equal(before, after) || again.Space.Index() != cp.Space.Index() || again.Space.Len() != cp.Space.Len() {
			t.Fatalf("save and load changed the copy:\n%s\n%s", before, after)
		}
	})
}

// checkSpace checks that a loaded copy's Space is sound.
func checkSpace(t *testing.T, cp *Copy) {
	t.Helper()
	s := cp.Space
	if s == nil || !cp.FromCache {
		t.Fatalf("accepted cache gives %+v", cp)
	}
	prefix := s.Prefix()
	if prefix != backends.CleanKey(prefix) {
		t.Fatalf("prefix %q is not clean", prefix)
	}
	leaves := 0
	seen := map[string]bool{}
	s.WalkLeaves(prefix, func(key, value string) bool {
		switch n := s.Get(key); {
		case !backends.Covers(prefix, key):
			t.Fatalf("key %q lies outside the prefix %q", key, prefix)
		case hiddenUnder(prefix, key):
			t.Fatalf("hidden key %q under %q", key, prefix)
		case seen[key]:
			t.Fatalf("key %q listed twice", key)
		case n == nil || n.Key() != key || n.Value() != value:
			t.Fatalf("leaf %q=%q is listed but Get finds %+v", key, value, n)
		}
		if cp.only != nil && !slices.ContainsFunc(cp.only, func(r string) bool { return backends.Covers(r, key) }) {
			t.Fatalf("key %q lies in none of the cached roots %q", key, cp.only)
		}
		seen[key], leaves = true, leaves+1
		return true
	})
	if leaves != s.Len() {
		t.Fatalf("Len() = %d, but %d leaves are listed", s.Len(), leaves)
	}
}

// fastTempDir is a temporary directory in memory when the system has one:
// Save syncs every file it writes, which on a disk would make fuzzing
// crawl.
func fastTempDir(f *testing.F) string {
	dir, err := os.MkdirTemp("/dev/shm", "confsync-fuzz-")
	if err != nil {
		return f.TempDir()
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
