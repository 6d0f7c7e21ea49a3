// Package backends holds what every key-value source shares: an immutable
// tree of leaf keys, the snapshot a fetch produces, and the Source interface
// the etcd, file and env backends implement.
package backends

import (
	"path"
	"sort"
	"strings"
)

// Tree is an immutable set of leaf keys and their values, organised by path
// segment. Updates return a new Tree that shares every untouched directory
// with the old one, so a reader can hold a Tree for as long as it likes while
// a writer moves on: there is no lock, and an update costs the length of the
// path, not the size of the tree.
//
// A key may be a leaf and a directory at once (the env backend produces such
// keys); etcd itself never does that.
type Tree struct {
	root *dirNode
	size int
}

type dirNode struct {
	entries []entry // sorted by name
}

type entry struct {
	name     string
	value    string
	hasValue bool
	dir      *dirNode // nil when the entry has no children
}

// Len is the number of leaves.
func (t *Tree) Len() int {
	if t == nil {
		return 0
	}
	return t.size
}

// Get returns the value of a leaf.
func (t *Tree) Get(key string) (string, bool) {
	if t == nil {
		return "", false
	}
	segs := Segments(key)
	if len(segs) == 0 {
		return "", false
	}
	d := t.root
	for i, s := range segs {
		if d == nil {
			return "", false
		}
		j, ok := d.find(s)
		if !ok {
			return "", false
		}
		e := d.entries[j]
		if i == len(segs)-1 {
			return e.value, e.hasValue
		}
		d = e.dir
	}
	return "", false
}

// Set returns a tree in which key holds value.
func (t *Tree) Set(key, value string) *Tree {
	segs := Segments(key)
	if len(segs) == 0 {
		return t
	}
	var root *dirNode
	size := 0
	if t != nil {
		root, size = t.root, t.size
	}
	newRoot, added := setIn(root, segs, value)
	if added {
		size++
	}
	return &Tree{root: newRoot, size: size}
}

func setIn(d *dirNode, segs []string, value string) (*dirNode, bool) {
	n := d.clone()
	i, ok := n.find(segs[0])
	if !ok {
		n.entries = append(n.entries, entry{})
		copy(n.entries[i+1:], n.entries[i:])
		n.entries[i] = entry{name: segs[0]}
	}
	e := &n.entries[i]
	if len(segs) == 1 {
		added := !e.hasValue
		e.value, e.hasValue = value, true
		return n, added
	}
	child, added := setIn(e.dir, segs[1:], value)
	e.dir = child
	return n, added
}

// Delete returns a tree without key and without everything below it, as an
// etcd delete of a leaf or a directory does. Directories left empty vanish.
func (t *Tree) Delete(key string) *Tree {
	if t == nil {
		return t
	}
	segs := Segments(key)
	if len(segs) == 0 {
		return &Tree{}
	}
	newRoot, removed := deleteIn(t.root, segs)
	if removed == 0 {
		return t
	}
	return &Tree{root: newRoot, size: t.size - removed}
}

func deleteIn(d *dirNode, segs []string) (*dirNode, int) {
	if d == nil {
		return nil, 0
	}
	i, ok := d.find(segs[0])
	if !ok {
		return d, 0
	}
	old := d.entries[i]
	var removed int
	updated := old
	if len(segs) == 1 {
		removed = old.dir.count()
		if old.hasValue {
			removed++
		}
		updated = entry{name: old.name}
	} else {
		updated.dir, removed = deleteIn(old.dir, segs[1:])
		if removed == 0 {
			return d, 0
		}
	}
	n := d.clone()
	if !updated.hasValue && updated.dir == nil {
		n.entries = append(n.entries[:i], n.entries[i+1:]...)
	} else {
		n.entries[i] = updated
	}
	if len(n.entries) == 0 {
		return nil, removed
	}
	return n, removed
}

// Walk calls fn for every leaf at or below prefix, in path order (children
// of a directory sorted by name). It stops early when fn returns false.
func (t *Tree) Walk(prefix string, fn func(key, value string) bool) {
	if t == nil || t.root == nil {
		return
	}
	segs := Segments(prefix)
	if len(segs) == 0 {
		t.root.walk("", fn)
		return
	}
	d := t.root
	for i, s := range segs {
		j, ok := d.find(s)
		if !ok {
			return
		}
		e := d.entries[j]
		if i == len(segs)-1 {
			key := "/" + strings.Join(segs, "/")
			if e.hasValue && !fn(key, e.value) {
				return
			}
			if e.dir != nil {
				e.dir.walk(key, fn)
			}
			return
		}
		if d = e.dir; d == nil {
			return
		}
	}
}

func (d *dirNode) walk(base string, fn func(key, value string) bool) bool {
	if d == nil {
		return true
	}
	for _, e := range d.entries {
		key := base + "/" + e.name
		if e.hasValue && !fn(key, e.value) {
			return false
		}
		if !e.dir.walk(key, fn) {
			return false
		}
	}
	return true
}

// Leaves returns every leaf at or below prefix as a map.
func (t *Tree) Leaves(prefix string) map[string]string {
	m := make(map[string]string)
	t.Walk(prefix, func(k, v string) bool { m[k] = v; return true })
	return m
}

// Diff calls fn for every key whose value differs between a and b (present
// in only one of them, or with different values). Directories the two trees
// share are skipped without being visited, so diffing a tree against its
// own recent update is cheap.
func Diff(a, b *Tree, fn func(key string)) {
	var ra, rb *dirNode
	if a != nil {
		ra = a.root
	}
	if b != nil {
		rb = b.root
	}
	diffDirs("", ra, rb, fn)
}

func diffDirs(base string, a, b *dirNode, fn func(string)) {
	if a == b {
		return
	}
	var ea, eb []entry
	if a != nil {
		ea = a.entries
	}
	if b != nil {
		eb = b.entries
	}
	i, j := 0, 0
	for i < len(ea) || j < len(eb) {
		switch {
		case j >= len(eb) || (i < len(ea) && ea[i].name < eb[j].name):
			reportEntry(base, ea[i], fn)
			i++
		case i >= len(ea) || eb[j].name < ea[i].name:
			reportEntry(base, eb[j], fn)
			j++
		default:
			key := base + "/" + ea[i].name
			if ea[i].hasValue != eb[j].hasValue || ea[i].value != eb[j].value {
				fn(key)
			}
			diffDirs(key, ea[i].dir, eb[j].dir, fn)
			i++
			j++
		}
	}
}

func reportEntry(base string, e entry, fn func(string)) {
	key := base + "/" + e.name
	if e.hasValue {
		fn(key)
	}
	e.dir.walk(key, func(k, _ string) bool { fn(k); return true })
}

func (d *dirNode) find(name string) (int, bool) {
	if d == nil {
		return 0, false
	}
	i := sort.Search(len(d.entries), func(i int) bool { return d.entries[i].name >= name })
	return i, i < len(d.entries) && d.entries[i].name == name
}

func (d *dirNode) clone() *dirNode {
	if d == nil {
		return &dirNode{}
	}
	return &dirNode{entries: append(make([]entry, 0, len(d.entries)+1), d.entries...)}
}

func (d *dirNode) count() int {
	if d == nil {
		return 0
	}
	n := 0
	for _, e := range d.entries {
		if e.hasValue {
			n++
		}
		n += e.dir.count()
	}
	return n
}

// Segments splits a key into its path segments, ignoring empty ones, so
// "/a//b/" and "a/b" both give [a b]. The root has no segments.
func Segments(key string) []string {
	parts := strings.Split(key, "/")
	segs := parts[:0]
	for _, p := range parts {
		if p != "" {
			segs = append(segs, p)
		}
	}
	return segs
}

// CleanKey normalises a key to the absolute, slash-separated form etcd uses:
// "/a/b", or "/" for the root.
func CleanKey(key string) string {
	if isClean(key) {
		return key // the common case, and on every event's path: no allocation
	}
	return path.Clean("/" + key)
}

// isClean reports whether key is already in CleanKey's form: absolute, no
// empty, "." or ".." segment, no trailing slash.
func isClean(key string) bool {
	if key == "/" {
		return true
	}
	if len(key) < 2 || key[0] != '/' || key[len(key)-1] == '/' {
		return false
	}
	start := 1
	for i := 1; i <= len(key); i++ {
		if i == len(key) || key[i] == '/' {
			if seg := key[start:i]; seg == "" || seg == "." || seg == ".." {
				return false
			}
			start = i + 1
		}
	}
	return true
}

// Covers reports whether key lies at or below root on whole path segments:
// /app covers /app and /app/x, never /apple.
func Covers(root, key string) bool {
	root, key = CleanKey(root), CleanKey(key)
	if root == "/" || root == key {
		return true
	}
	return len(key) > len(root) && key[len(root)] == '/' && key[:len(root)] == root
}

// Builder assembles a Tree from many keys at once. Unlike Set, which copies
// the path it changes so that older Trees stay valid, a Builder mutates its
// own private nodes, so loading n keys costs O(n log n) rather than
// copying every directory once per key below it.
type Builder struct {
	root *buildDir
	size int
}

type buildDir struct {
	children map[string]*buildEntry
}

type buildEntry struct {
	value    string
	hasValue bool
	dir      *buildDir
}

// Set records key = value; a later Set of the same key wins.
func (b *Builder) Set(key, value string) {
	segs := Segments(key)
	if len(segs) == 0 {
		return
	}
	if b.root == nil {
		b.root = &buildDir{children: map[string]*buildEntry{}}
	}
	d := b.root
	for i, s := range segs {
		e := d.children[s]
		if e == nil {
			e = &buildEntry{}
			d.children[s] = e
		}
		if i == len(segs)-1 {
			if !e.hasValue {
				b.size++
			}
			e.value, e.hasValue = value, true
			return
		}
		if e.dir == nil {
			e.dir = &buildDir{children: map[string]*buildEntry{}}
		}
		d = e.dir
	}
}

// Tree returns the immutable tree built so far. The Builder must not be
// used afterwards.
func (b *Builder) Tree() *Tree {
	return &Tree{root: b.root.freeze(), size: b.size}
}

func (d *buildDir) freeze() *dirNode {
	if d == nil || len(d.children) == 0 {
		return nil
	}
	n := &dirNode{entries: make([]entry, 0, len(d.children))}
	for name, e := range d.children {
		n.entries = append(n.entries, entry{name: name, value: e.value, hasValue: e.hasValue, dir: e.dir.freeze()})
	}
	sort.Slice(n.entries, func(i, j int) bool { return n.entries[i].name < n.entries[j].name })
	return n
}
