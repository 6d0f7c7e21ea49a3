package watch

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/confsync/confsync/agent/fileout"
	"github.com/confsync/confsync/backends"
)

// Cache persists the last-known-good snapshot of every root, so that a
// process started while etcd is down still has data to serve.
type Cache struct {
	// Path is the cache file, e.g. /var/lib/confsync/cache.json.
	Path string
	// Source identifies where the data comes from (the etcd endpoints or
	// SRV name); a cache written for another source is ignored.
	Source string
}

const cacheFormat = 1

type cacheFile struct {
	Format  int                   `json:"format"`
	Source  string                `json:"source"`
	SavedAt time.Time             `json:"saved_at"`
	Roots   map[string]cachedRoot `json:"roots"`
}

type cachedRoot struct {
	Index     uint64            `json:"etcd_index"`
	ClusterID string            `json:"cluster_id,omitempty"`
	FetchedAt time.Time         `json:"fetched_at"`
	Values    map[string]string `json:"values"`
}

// Load returns the cached snapshots of the wanted roots. Roots the cache
// does not hold are simply absent. A missing cache is not an error; a
// corrupt one, or one written for another source, is an error the caller
// should log and then carry on without a cache. Entries whose keys do not
// lie under their root are rejected the same way.
func (c *Cache) Load(roots []string) (map[string]*backends.Snapshot, error) {
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
	if f.Format != cacheFormat {
		return nil, fmt.Errorf("cache %s has format %d, want %d; ignoring it", c.Path, f.Format, cacheFormat)
	}
	if f.Source != c.Source {
		return nil, fmt.Errorf("cache %s was written for %q, not %q; ignoring it", c.Path, f.Source, c.Source)
	}
	out := map[string]*backends.Snapshot{}
	for _, root := range roots {
		entry, ok := f.Roots[root]
		if !ok {
			continue
		}
		var b backends.Builder
		for k, v := range entry.Values {
			if !backends.Covers(root, k) {
				return nil, fmt.Errorf("cache %s: key %s lies outside its root %s; ignoring the cache", c.Path, k, root)
			}
			b.Set(k, v)
		}
		out[root] = &backends.Snapshot{Root: root, Tree: b.Tree(), Index: entry.Index,
			ClusterID: entry.ClusterID, FetchedAt: entry.FetchedAt}
	}
	return out, nil
}

// Roots lists the roots a cache file holds, for status and messages.
func (c *Cache) Roots() []string {
	raw, err := os.ReadFile(c.Path)
	if err != nil {
		return nil
	}
	var f cacheFile
	if json.Unmarshal(raw, &f) != nil {
		return nil
	}
	roots := make([]string, 0, len(f.Roots))
	for r := range f.Roots {
		roots = append(roots, r)
	}
	sort.Strings(roots)
	return roots
}

// Save writes snapshots atomically: a reader (or a crash) sees the old
// cache or the new one, never a mix.
func (c *Cache) Save(snaps map[string]*backends.Snapshot) error {
	f := cacheFile{Format: cacheFormat, Source: c.Source, SavedAt: time.Now().UTC(), Roots: map[string]cachedRoot{}}
	for root, s := range snaps {
		f.Roots[root] = cachedRoot{Index: s.Index, ClusterID: s.ClusterID, FetchedAt: s.FetchedAt.UTC(), Values: s.Tree.Leaves(root)}
	}
	raw, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(c.Path), 0o750); err != nil {
		return fmt.Errorf("cache directory: %w", err)
	}
	fileout.RemoveStale(c.Path)
	plan, err := fileout.Inspect(fileout.Spec{Dest: c.Path, Content: raw, Mode: 0o600, UID: -1, GID: -1})
	if err != nil {
		return fmt.Errorf("save cache: %w", err)
	}
	if !plan.Changed() {
		return nil
	}
	staged, err := fileout.Stage(plan)
	if err != nil {
		return fmt.Errorf("save cache: %w", err)
	}
	if err := staged.Commit(); err != nil {
		return fmt.Errorf("save cache: %w", err)
	}
	return nil
}
