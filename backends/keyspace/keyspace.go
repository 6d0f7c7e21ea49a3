// Package keyspace is an in-memory copy of the etcd v2 nodes under one
// prefix, with everything etcd shows about them: values, directories (empty
// ones too), created and modified indexes and expirations.
//
// A Space is immutable. Applying an event returns a new Space that shares
// every untouched directory with the old one, so readers (a relay answering
// thousands of GETs, a cache being saved) hold a Space as long as they like
// without locks while the single writer moves on.
//
// A Space is built from what a recursive GET and a recursive watch of the
// prefix deliver, which is also its limit: hidden nodes (a segment starting
// with "_") never appear in either, so a Space has none; and refreshing a
// TTL (refresh=true) is never notified, so a refreshed expiration is seen
// only at the next full read.
package keyspace

import (
	"sort"
	"strings"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcd"
)

// Node is one etcd node. Nodes are shared between Spaces and must not be
// modified.
type Node struct {
	key        string
	value      string
	dir        bool
	created    uint64
	modified   uint64
	expiration time.Time // zero when permanent
	children   []*Node   // directories only, sorted by key
}

// Key is the node's absolute key, "/" for the root.
func (n *Node) Key() string { return n.key }

// Value is a leaf's value, "" for a directory.
func (n *Node) Value() string { return n.value }

// IsDir reports whether the node is a directory.
func (n *Node) IsDir() bool { return n.dir }

// CreatedIndex and ModifiedIndex are etcd's indexes of the node.
func (n *Node) CreatedIndex() uint64  { return n.created }
func (n *Node) ModifiedIndex() uint64 { return n.modified }

// Expiration is when the node's TTL runs out; zero for a permanent node.
func (n *Node) Expiration() time.Time { return n.expiration }

// Children are a directory's children, sorted by key. The slice is shared:
// do not modify it.
func (n *Node) Children() []*Node { return n.children }

// Space is the copy of one prefix at one etcd index.
type Space struct {
	prefix string
	top    *Node // the node at prefix; nil when it does not exist
	index  uint64
	leaves int
}

// Empty is a Space in which the prefix does not exist yet.
func Empty(prefix string, index uint64) *Space {
	return &Space{prefix: backends.CleanKey(prefix), index: index}
}

// Prefix is the key the Space copies.
func (s *Space) Prefix() string { return s.prefix }

// Index is the etcd index the Space is current to.
func (s *Space) Index() uint64 { return s.index }

// Len is the number of leaves (values) in the Space.
func (s *Space) Len() int { return s.leaves }

// WithIndex returns the same nodes at a later index: nothing under the
// prefix changed up to it.
func (s *Space) WithIndex(index uint64) *Space {
	if index <= s.index {
		return s
	}
	c := *s
	c.index = index
	return &c
}

// Covers reports whether key lies in the Space's prefix.
func (s *Space) Covers(key string) bool { return backends.Covers(s.prefix, key) }

// Get returns the node at key, or nil when the Space has none there. Keys
// outside the prefix are never found.
func (s *Space) Get(key string) *Node {
	key = backends.CleanKey(key)
	if s.top == nil || !s.Covers(key) {
		return nil
	}
	n := s.top
	for _, seg := range backends.Segments(strings.TrimPrefix(key, s.prefix)) {
		i, ok := find(n.children, join(n.key, seg))
		if !ok {
			return nil
		}
		n = n.children[i]
	}
	return n
}

// WalkLeaves calls fn for every value at or below key, in key order, until
// fn returns false.
func (s *Space) WalkLeaves(key string, fn func(key, value string) bool) {
	if n := s.Get(key); n != nil {
		n.walkLeaves(fn)
	}
}

func (n *Node) walkLeaves(fn func(key, value string) bool) bool {
	if !n.dir && !fn(n.key, n.value) {
		return false
	}
	for _, c := range n.children {
		if !c.walkLeaves(fn) {
			return false
		}
	}
	return true
}

// FromWire builds a Space from the answer of a recursive GET of prefix
// (nil when etcd answered "key not found") at index.
func FromWire(prefix string, top *etcd.Node, index uint64) *Space {
	s := Empty(prefix, index)
	if top != nil {
		s.top = fromWire(top, s.prefix, &s.leaves)
	}
	return s
}

func fromWire(w *etcd.Node, key string, leaves *int) *Node {
	n := &Node{key: key, dir: w.Dir, created: w.CreatedIndex, modified: w.ModifiedIndex}
	if w.Expiration != nil {
		n.expiration = *w.Expiration
	}
	if !w.Dir {
		if w.Value != nil {
			n.value = *w.Value
		}
		*leaves++
	}
	for _, c := range w.Nodes {
		ck := backends.CleanKey(c.Key)
		if !backends.Covers(key, ck) || ck == key || hiddenBelow(key, ck) {
			continue
		}
		n.children = append(n.children, fromWire(c, ck, leaves))
	}
	sort.Slice(n.children, func(i, j int) bool { return n.children[i].key < n.children[j].key })
	return n
}

// Relevant reports whether an event changes the Space: it is about the
// prefix or a non-hidden key below it, or it deletes an ancestor of the
// prefix. A recursive watch also delivers, from etcd's history, deletes of
// siblings whose name merely starts with the prefix's (/conf for
// /conftool), and hidden keys; those are not relevant.
func (s *Space) Relevant(ev *etcd.Event) bool {
	key := ev.Key()
	switch {
	case s.Covers(key):
		return !hiddenBelow(s.prefix, key)
	case backends.Covers(key, s.prefix):
		return ev.IsDelete() && !ev.Flat
	}
	return false
}

// Apply returns the Space after ev. An event that is not Relevant only
// moves the index.
func (s *Space) Apply(ev *etcd.Event) *Space {
	next := s.WithIndex(ev.Index())
	if !s.Relevant(ev) {
		return next
	}
	c := *next
	key := ev.Key()
	var delta int
	switch {
	case ev.Flat && ev.IsDelete():
		c.top, delta = removeFlat(s.top, key)
	case !s.Covers(key) || key == s.prefix && ev.IsDelete():
		c.top, delta = nil, -s.leaves
	case ev.IsDelete():
		c.top, delta = remove(s.top, key)
	default:
		c.top, delta = put(s.top, s.prefix, key, ev)
	}
	c.leaves += delta
	return &c
}

// put returns n (the node at key base, nil if absent) with the node of ev
// written at key, and the change in the number of leaves. Missing
// directories are created as etcd creates them: with the event's index.
func put(n *Node, base, key string, ev *etcd.Event) (*Node, int) {
	delta := 0
	if n != nil && !n.dir && base != key && !ev.Flat {
		// etcd refuses to write below a leaf (error 104); should such an
		// event come anyway, the leaf gives way and the count stays right.
		n, delta = nil, -1
	}
	if n == nil {
		n = &Node{key: base, dir: true, created: ev.Index(), modified: ev.Index()}
	}
	if base == key {
		updated, d := replaceNode(n, ev)
		return updated, delta + d
	}
	child := join(base, firstSegment(key, base))
	c := *n
	c.children = append([]*Node(nil), n.children...)
	i, ok := find(c.children, child)
	var old *Node
	if ok {
		old = c.children[i]
	} else {
		c.children = append(c.children, nil)
		copy(c.children[i+1:], c.children[i:])
	}
	updated, d := put(old, child, key, ev)
	c.children[i] = updated
	return &c, delta + d
}

// replaceNode is the node n becomes through ev.
func replaceNode(n *Node, ev *etcd.Event) (*Node, int) {
	w := ev.Node
	if ev.Flat {
		// A value in a flat keyspace keeps the keys below it.
		updated := *n
		updated.dir, updated.created, updated.modified = false, w.CreatedIndex, w.ModifiedIndex
		updated.value, updated.expiration = "", time.Time{}
		if w.Value != nil {
			updated.value = *w.Value
		}
		if w.Expiration != nil {
			updated.expiration = *w.Expiration
		}
		if n.dir {
			return &updated, 1
		}
		return &updated, 0
	}
	updated := &Node{key: n.key, dir: w.Dir, created: w.CreatedIndex, modified: w.ModifiedIndex}
	if w.Expiration != nil {
		updated.expiration = *w.Expiration
	}
	if w.Dir {
		// Setting a directory (mkdir, or a TTL update) keeps its children.
		// A TTL update also keeps its indexes: etcd 3.4's event carries a
		// new modifiedIndex, but the directory it stores keeps the old one
		// (etcd 3.5 refuses the update).
		if n.dir {
			updated.created, updated.modified, updated.children = n.created, n.modified, n.children
			return updated, 0
		}
		return updated, -1
	}
	if w.Value != nil {
		updated.value = *w.Value
	}
	return updated, 1 - leafCount(n)
}

// leafCount is the number of values at or below n.
func leafCount(n *Node) int {
	total := 0
	if !n.dir {
		total = 1
	}
	for _, c := range n.children {
		total += leafCount(c)
	}
	return total
}

// remove returns n without the node at key, and the change in leaves.
// Directories stay when their last child goes, as in etcd.
func remove(n *Node, key string) (*Node, int) {
	if n == nil || len(n.children) == 0 {
		return n, 0
	}
	child := join(n.key, firstSegment(key, n.key))
	i, ok := find(n.children, child)
	if !ok {
		return n, 0
	}
	c := *n
	c.children = append([]*Node(nil), n.children...)
	if child == key {
		delta := -leafCount(n.children[i])
		c.children = append(c.children[:i], c.children[i+1:]...)
		return &c, delta
	}
	updated, delta := remove(n.children[i], key)
	c.children[i] = updated
	return &c, delta
}

// removeFlat returns n without the value at key, and the change in
// values. A key with keys below it stays as their directory; a directory
// left with nothing below it vanishes, as it only ever was their shape.
func removeFlat(n *Node, key string) (*Node, int) {
	if n == nil {
		return nil, 0
	}
	if n.key == key {
		switch {
		case n.dir:
			return n, 0
		case len(n.children) == 0:
			return nil, -1
		}
		c := *n
		c.dir, c.value, c.expiration = true, "", time.Time{}
		return &c, -1
	}
	if !backends.Covers(n.key, key) {
		return n, 0
	}
	i, ok := find(n.children, join(n.key, firstSegment(key, n.key)))
	if !ok {
		return n, 0
	}
	updated, delta := removeFlat(n.children[i], key)
	if delta == 0 {
		return n, 0
	}
	c := *n
	c.children = append([]*Node(nil), n.children...)
	if updated == nil {
		c.children = append(c.children[:i], c.children[i+1:]...)
	} else {
		c.children[i] = updated
	}
	if c.dir && len(c.children) == 0 {
		return nil, delta
	}
	return &c, delta
}

// ToWire encodes the node at key as etcd answers a GET: with its children
// when it is a directory (their children too when recursive), each child's
// TTL counted down to now. It returns nil when there is no node at key.
func (s *Space) ToWire(key string, recursive bool, now time.Time) *etcd.Node {
	n := s.Get(key)
	if n == nil {
		return nil
	}
	return n.toWire(true, recursive, now)
}

func (n *Node) toWire(list, recursive bool, now time.Time) *etcd.Node {
	dir := n.shownAsDir(list)
	w := &etcd.Node{Key: n.key, Dir: dir, CreatedIndex: n.created, ModifiedIndex: n.modified}
	if n.key == "/" {
		w.Key = "" // etcd never names its root
	}
	if !dir {
		v := n.value
		w.Value = &v
	}
	if !n.expiration.IsZero() {
		exp := n.expiration.UTC()
		w.Expiration, w.TTL = &exp, TTL(n.expiration, now)
	}
	if list {
		for _, c := range n.children {
			w.Nodes = append(w.Nodes, c.toWire(recursive, recursive, now))
		}
	}
	return w
}

// shownAsDir reports whether n is written as a directory: it is one, or
// it holds a value and has nodes below it (a key of a flat keyspace, which
// v2 has no node for) and they are not listed with it. Listed, both its
// value and its nodes are written, so that a copy saved and loaded again
// keeps both.
func (n *Node) shownAsDir(list bool) bool {
	return n.dir || !list && len(n.children) > 0
}

// TTL is the seconds etcd reports for a node expiring at exp: the remaining
// time rounded up, so a node shows 1 in its last second.
func TTL(exp, now time.Time) int64 {
	left := exp.Sub(now)
	ttl := left / time.Second
	if left%time.Second > 0 {
		ttl++
	}
	return int64(ttl)
}

// find locates key among children sorted by key.
func find(children []*Node, key string) (int, bool) {
	i := sort.Search(len(children), func(i int) bool { return children[i].key >= key })
	return i, i < len(children) && children[i].key == key
}

// firstSegment is the segment of key right below base, for a clean key
// strictly below base.
func firstSegment(key, base string) string {
	rest := strings.TrimPrefix(strings.TrimPrefix(key, base), "/")
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return rest[:i]
	}
	return rest
}

func join(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}

// hiddenBelow reports whether key has a hidden segment below base: etcd
// leaves such nodes out of listings and recursive watches of base.
func hiddenBelow(base, key string) bool {
	for _, seg := range backends.Segments(strings.TrimPrefix(key, base)) {
		if strings.HasPrefix(seg, "_") {
			return true
		}
	}
	return false
}

// FromLeaves builds a Space from bare values, for sources that have no
// indexes (files, the environment): every node gets index.
func FromLeaves(prefix string, tree *backends.Tree, index uint64) *Space {
	s := Empty(prefix, index)
	type dir struct {
		node     *Node
		children map[string]*dir
	}
	var top *dir
	tree.Walk(s.prefix, func(key, value string) bool {
		if hiddenBelow(s.prefix, key) {
			return true
		}
		if top == nil {
			top = &dir{node: &Node{key: s.prefix, dir: true, created: index, modified: index}, children: map[string]*dir{}}
		}
		d := top
		segs := backends.Segments(strings.TrimPrefix(key, s.prefix))
		for i, seg := range segs {
			child := d.children[seg]
			if child == nil {
				child = &dir{node: &Node{key: join(d.node.key, seg), dir: true, created: index, modified: index},
					children: map[string]*dir{}}
				d.children[seg] = child
			}
			if i == len(segs)-1 {
				// A key may be a value and a directory at once (the env
				// backend makes such keys); etcd never does.
				child.node.dir, child.node.value = false, value
				s.leaves++
			}
			d = child
		}
		if len(segs) == 0 { // the prefix itself is a leaf
			top.node.dir, top.node.value = false, value
			s.leaves++
		}
		return true
	})
	var freeze func(d *dir) *Node
	freeze = func(d *dir) *Node {
		n := d.node
		for _, c := range d.children {
			n.children = append(n.children, freeze(c))
		}
		sort.Slice(n.children, func(i, j int) bool { return n.children[i].key < n.children[j].key })
		return n
	}
	if top != nil {
		s.top = freeze(top)
	}
	return s
}
