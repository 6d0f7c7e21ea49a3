package mirror

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	client "go.etcd.io/etcd/client/v2"
)

// flatTree is a recursive GET flattened to one entry per node (files and
// directories), keyed by key. The root itself is included unless it is "/".
type flatTree struct {
	nodes     map[string]nodeState
	children  map[string]int // number of listed children per directory
	index     uint64         // X-Etcd-Index of the read
	clusterID string
}

func readTree(ctx context.Context, keys client.KeysAPI, root string) (*flatTree, error) {
	t := &flatTree{nodes: map[string]nodeState{}, children: map[string]int{}}
	resp, err := keys.Get(ctx, root, &client.GetOptions{Recursive: true, Quorum: true})
	var etcdErr client.Error
	switch {
	case err == nil:
		t.index, t.clusterID = resp.Index, resp.ClusterID
		t.add(root, resp.Node)
	case errors.As(err, &etcdErr) && (etcdErr.Code == client.ErrorCodeKeyNotFound || etcdErr.Code == client.ErrorCodeNotDir):
		t.index = etcdErr.Index
	default:
		return nil, fmt.Errorf("read %s recursively: %w", root, err)
	}
	return t, nil
}

func (t *flatTree) add(root string, n *client.Node) {
	key := n.Key
	if key == "" {
		key = "/" // etcd omits the key of the root
	}
	if key != "/" {
		t.nodes[key] = stateOf(n)
		if key != root {
			t.children[parentKey(key)]++
		}
	}
	for _, c := range n.Nodes {
		t.add(root, c)
	}
}

func parentKey(key string) string {
	i := strings.LastIndexByte(key, '/')
	if i <= 0 {
		return "/"
	}
	return key[:i]
}

func (t *flatTree) sortedKeys() []string {
	keys := make([]string, 0, len(t.nodes))
	for k := range t.nodes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// diffKind names one way the destination can differ from the source.
type diffKind string

const (
	diffMissing diffKind = "missing" // on the source, not on the destination
	diffExtra   diffKind = "extra"   // on the destination only (listed once per removed subtree)
	diffValue   diffKind = "value"   // both files, values differ
	diffType    diffKind = "type"    // a file on one side, a directory on the other
	diffTTL     diffKind = "ttl"     // expiry differs by more than ttlTolerance
)

// ttlTolerance absorbs the rounding of recomputed TTLs (whole seconds) and
// the time between writing a key and etcd computing its expiration.
const ttlTolerance = 3 * time.Second

type difference struct {
	kind     diffKind
	dstKey   string
	srcKey   string
	src, dst nodeState
}

func (d difference) String() string {
	switch d.kind {
	case diffMissing:
		return fmt.Sprintf("missing on destination: %s (source %s holds %s)", d.dstKey, d.srcKey, d.src)
	case diffExtra:
		return fmt.Sprintf("only on destination: %s holds %s (source %s does not exist)", d.dstKey, d.dst, d.srcKey)
	case diffTTL:
		return fmt.Sprintf("expiry differs: %s expires %s on the source, %s on the destination", d.dstKey, expiry(d.src), expiry(d.dst))
	default:
		return fmt.Sprintf("differs: %s holds %s on the destination, source %s holds %s", d.dstKey, d.dst, d.srcKey, d.src)
	}
}

func expiry(s nodeState) string {
	if s.expires == nil {
		return "never"
	}
	return s.expires.UTC().Format(time.RFC3339)
}

// wantedTree maps the source tree onto destination keys, leaving out keys
// the mirror ignores (hidden keys are already absent from etcd's listing).
func wantedTree(src *flatTree, km keyMap, ignore *regexp.Regexp) *flatTree {
	w := &flatTree{nodes: map[string]nodeState{}, children: map[string]int{}, index: src.index, clusterID: src.clusterID}
	for k, n := range src.nodes {
		if !under(km.srcRoot, k) || km.hidden(k) || (ignore != nil && ignore.MatchString(k)) {
			continue
		}
		w.nodes[km.toDst(k)] = n
	}
	for k := range w.nodes {
		if k != km.dstBase {
			if _, ok := w.nodes[parentKey(k)]; ok {
				w.children[parentKey(k)]++
			}
		}
	}
	return w
}

// diff lists what must change for have (the destination) to equal want.
// Directories that files imply are not listed; a directory only on the
// destination is listed once, not with everything below it. Destination
// keys whose source keys are ignored are left out: they are not the
// mirror's.
func diff(want, have *flatTree, km keyMap, ignore *regexp.Regexp) []difference {
	var out []difference
	removed := map[string]bool{} // destination subtrees deleted as a whole
	for _, k := range want.sortedKeys() {
		w := want.nodes[k]
		h, ok := have.nodes[k]
		d := difference{dstKey: k, srcKey: km.toSrc(k), src: w, dst: h}
		switch {
		case !ok:
			if w.dir && want.children[k] > 0 && w.expires == nil {
				continue // created by the files below it
			}
			d.kind = diffMissing
		case w.dir != h.dir:
			d.kind = diffType
			if h.dir {
				removed[k] = true
			}
		case !w.dir && w.value != h.value:
			d.kind = diffValue
		case !sameExpiry(w.expires, h.expires):
			d.kind = diffTTL
		default:
			continue
		}
		out = append(out, d)
	}
	ignoredBelow := map[string]bool{} // directories holding ignored keys
	if ignore != nil {
		for k := range have.nodes {
			if ignore.MatchString(km.toSrc(k)) {
				for p := parentKey(k); p != "/" && under(km.dstBase, p); p = parentKey(p) {
					ignoredBelow[p] = true
				}
			}
		}
	}
	for _, k := range have.sortedKeys() {
		if _, ok := want.nodes[k]; ok {
			continue
		}
		if ignore != nil && ignore.MatchString(km.toSrc(k)) {
			continue
		}
		if ancestorIn(k, removed) {
			continue
		}
		h := have.nodes[k]
		if h.dir && ignoredBelow[k] {
			continue // delete what is not ignored inside it, one by one
		}
		if h.dir {
			removed[k] = true
		}
		out = append(out, difference{kind: diffExtra, dstKey: k, srcKey: km.toSrc(k), dst: h})
	}
	return out
}

func ancestorIn(key string, set map[string]bool) bool {
	for p := parentKey(key); ; p = parentKey(p) {
		if set[p] {
			return true
		}
		if p == "/" {
			return false
		}
	}
}

func sameExpiry(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	d := a.Sub(*b)
	return d < ttlTolerance && d > -ttlTolerance
}

// deletions is the list of destination nodes to remove so that nothing of
// tree that the mirror owns remains.
func deletions(tree *flatTree, want *flatTree, km keyMap, ignore *regexp.Regexp) []difference {
	if want == nil {
		want = &flatTree{nodes: map[string]nodeState{}, children: map[string]int{}}
	}
	var out []difference
	for _, d := range diff(want, tree, km, ignore) {
		if d.kind == diffExtra {
			out = append(out, d)
		}
	}
	return out
}

func deleteNode(ctx context.Context, keys client.KeysAPI, d difference) error {
	opts := &client.DeleteOptions{}
	if d.dst.dir {
		opts = &client.DeleteOptions{Dir: true, Recursive: true}
	}
	_, err := keys.Delete(ctx, d.dstKey, opts)
	if err != nil && !etcd.IsKeyNotFound(err) {
		return fmt.Errorf("delete %s: %w", d.dstKey, err)
	}
	return nil
}
