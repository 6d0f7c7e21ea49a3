package watch

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/keyspace"
	"github.com/confsync/confsync/internal/fileout"
)

// Cache persists the last-known-good copy of the watched prefix, so that a
// process started while etcd is down still has data to serve. The file
// holds the prefix's nodes as etcd's recursive GET shows them (indexes and
// expirations included), which is what a relay needs to answer as etcd
// would.
type Cache struct {
	// Path is the cache file, e.g. /var/lib/confsync/cache.json.
	Path string
	// Source identifies where the data comes from (the etcd endpoints or
	// SRV name); a cache written for another source is ignored.
	Source string
}

// cacheFormat 2 holds one prefix with etcd's node metadata. Format 1 (one
// map of bare values per root, written by confsync before the single
// watch) is still read, and replaced by format 2 at the next save.
const cacheFormat = 2

type cacheFile struct {
	Format    int        `json:"format"`
	Source    string     `json:"source"`
	SavedAt   time.Time  `json:"saved_at"`
	Prefix    string     `json:"prefix,omitempty"`
	Index     uint64     `json:"etcd_index,omitempty"`
	ClusterID string     `json:"cluster_id,omitempty"`
	FetchedAt time.Time  `json:"fetched_at,omitzero"`
	Node      *etcd.Node `json:"node,omitempty"`
	// Roots is format 1.
	Roots map[string]cachedRoot `json:"roots,omitempty"`
}

type cachedRoot struct {
	Index     uint64            `json:"etcd_index"`
	ClusterID string            `json:"cluster_id,omitempty"`
	FetchedAt time.Time         `json:"fetched_at"`
	Values    map[string]string `json:"values"`
}

// Load returns the cached copy. A missing cache is (nil, nil); a corrupt
// one, or one written for another source, is an error the caller should
// log and then carry on without a cache.
func (c *Cache) Load() (*Copy, error) {
	raw, err := os.ReadFile(c.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", c.Path, err)
	}
	var f cacheFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("cache %s is corrupt (%v); ignoring it", c.Path, err)
	}
	if f.Source != c.Source {
		return nil, fmt.Errorf("cache %s was written for %q, not %q; ignoring it", c.Path, f.Source, c.Source)
	}
	switch f.Format {
	case 1:
		return c.migrate(f.Roots)
	case cacheFormat:
		return c.load(&f)
	}
	return nil, fmt.Errorf("cache %s has format %d, this confsync reads 1 and %d; ignoring it", c.Path, f.Format, cacheFormat)
}

func (c *Cache) load(f *cacheFile) (*Copy, error) {
	if f.Prefix == "" || f.Prefix != backends.CleanKey(f.Prefix) {
		return nil, fmt.Errorf("cache %s: prefix %q is not a clean absolute key; ignoring the cache", c.Path, f.Prefix)
	}
	if err := checkNodes(f.Node, f.Prefix); err != nil {
		return nil, fmt.Errorf("cache %s: %v; ignoring the cache", c.Path, err)
	}
	return &Copy{Space: keyspace.FromWire(f.Prefix, f.Node, f.Index), ClusterID: f.ClusterID,
		FetchedAt: f.FetchedAt, FromCache: true}, nil
}

// checkNodes rejects a node tree that a recursive GET of prefix could not
// have given: a top node at another key, a null child, a child that is not
// directly below its parent, or one listed twice. Any of these would give
// a Space whose listing and lookups disagree, and a key that no event
// could ever delete.
func checkNodes(top *etcd.Node, prefix string) error {
	if top == nil {
		return nil
	}
	if backends.CleanKey(top.Key) != prefix {
		return fmt.Errorf("the top node is %q, not the prefix %s", top.Key, prefix)
	}
	return checkChildren(top, prefix)
}

func checkChildren(n *etcd.Node, key string) error {
	seen := make(map[string]bool, len(n.Nodes))
	for _, child := range n.Nodes {
		if child == nil {
			return fmt.Errorf("node %s lists a null child", key)
		}
		ck := backends.CleanKey(child.Key)
		if ck == key || path.Dir(ck) != key {
			return fmt.Errorf("node %q is listed as a child of %s", child.Key, key)
		}
		if seen[ck] {
			return fmt.Errorf("node %s is listed twice", ck)
		}
		seen[ck] = true
		if err := checkChildren(child, ck); err != nil {
			return err
		}
	}
	return nil
}

// migrate reads a format 1 cache: every root's values, without etcd's
// node metadata (indexes become the root's index). Only the cached roots
// are covered: a root that was not cached must wait for etcd rather than
// look empty.
func (c *Cache) migrate(roots map[string]cachedRoot) (*Copy, error) {
	if len(roots) == 0 {
		return nil, nil
	}
	names := make([]string, 0, len(roots))
	for r := range roots {
		names = append(names, r)
	}
	sort.Strings(names)
	if len(backends.MinimalRoots(names)) != len(names) {
		return nil, fmt.Errorf("cache %s: nested roots in a format 1 cache; ignoring it", c.Path)
	}
	var b backends.Builder
	out := Copy{FromCache: true, only: names}
	index := ^uint64(0)
	seen := map[string]bool{}
	for _, r := range names {
		entry := roots[r]
		for k, v := range entry.Values {
			if !backends.Covers(r, k) {
				return nil, fmt.Errorf("cache %s: key %s lies outside its root %s; ignoring the cache", c.Path, k, r)
			}
			// The Builder splits keys on "/" without cleaning them: an
			// unclean key would be listed where no lookup finds it.
			key := backends.CleanKey(k)
			if seen[key] {
				return nil, fmt.Errorf("cache %s: key %s appears twice; ignoring the cache", c.Path, key)
			}
			seen[key] = true
			b.Set(key, v)
		}
		index = min(index, entry.Index)
		out.ClusterID, out.FetchedAt = entry.ClusterID, entry.FetchedAt
	}
	out.Space = keyspace.FromLeaves(CommonAncestor(names), b.Tree(), index)
	return &out, nil
}

// Save writes the copy atomically: a reader (or a crash) sees the old cache
// or the new one, never a mix.
func (c *Cache) Save(cp Copy) error {
	if cp.Space == nil {
		return nil
	}
	f := cacheFile{Format: cacheFormat, Source: c.Source, SavedAt: time.Now().UTC(), Prefix: cp.Space.Prefix(),
		Index: cp.Space.Index(), ClusterID: cp.ClusterID, FetchedAt: cp.FetchedAt.UTC()}
	head, err := json.Marshal(f)
	if err != nil {
		return err
	}
	// The nodes are appended by hand: the whole prefix is saved every
	// second while it changes, and this is ten times cheaper than
	// marshalling a tree of etcd.Node.
	raw := append(head[:len(head)-1], `,"node":`...)
	raw = cp.Space.AppendJSON(raw, cp.Space.Prefix(), true, time.Now())
	raw = append(raw, '}')
	if err := os.MkdirAll(filepath.Dir(c.Path), 0o750); err != nil {
		return fmt.Errorf("cache directory: %w", err)
	}
	return fileout.WriteFile(c.Path, raw, 0o600)
}
