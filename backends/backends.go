package backends

import (
	"context"
	"sort"
	"time"
)

// Snapshot is everything a source held under one root at one moment.
type Snapshot struct {
	Root string
	Tree *Tree
	// Index is the etcd index the tree was read at (X-Etcd-Index), 0 for
	// sources without one.
	Index uint64
	// ClusterID identifies the etcd cluster that answered, "" otherwise.
	ClusterID string
	// FetchedAt is when the source answered.
	FetchedAt time.Time
}

// Source reads whole subtrees. A root that does not exist yields an empty
// tree, not an error: a resource listing a missing key renders with nothing
// under it, and its template decides whether that is a problem.
type Source interface {
	Fetch(ctx context.Context, root string) (*Snapshot, error)
}

// MinimalRoots reduces keys to the smallest set of subtrees that covers all
// of them, on whole path segments: /a and /a/b give /a; /app and /apple stay
// apart. The result is sorted and cleaned.
func MinimalRoots(keys []string) []string {
	cleaned := make([]string, 0, len(keys))
	for _, k := range keys {
		cleaned = append(cleaned, CleanKey(k))
	}
	sort.Strings(cleaned)
	var roots []string
	for _, k := range cleaned {
		covered := false
		for _, r := range roots {
			if Covers(r, k) {
				covered = true
				break
			}
		}
		if !covered {
			roots = append(roots, k)
		}
	}
	return roots
}
