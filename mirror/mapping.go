package mirror

import (
	"strings"

	"github.com/confsync/confsync/backends"
)

// keyMap translates source keys into destination keys. It is computed once
// from the flags, before anything else runs, so that every mode (streaming,
// resync, verify, set-index) maps keys the same way.
//
// The source root maps onto the destination base: with --strip the base is
// the destination prefix itself, without it the source root is appended to
// the destination prefix (etcdmirror's two modes). Everything below the
// source root keeps its relative path. The cut is anchored at a path
// boundary: /conftool never matches /conftool2 or /x/conftool.
type keyMap struct {
	srcRoot string // cleaned source prefix, "/" for the whole keyspace
	dstRoot string // cleaned destination prefix
	dstBase string // where srcRoot lands on the destination
}

func newKeyMap(srcPrefix, dstPrefix string, strip bool) keyMap {
	m := keyMap{srcRoot: backends.CleanKey(srcPrefix), dstRoot: backends.CleanKey(dstPrefix)}
	if strip {
		m.dstBase = m.dstRoot
	} else {
		m.dstBase = joinKey(m.dstRoot, m.srcRoot)
	}
	return m
}

// joinKey appends rel (an absolute key) below base.
func joinKey(base, rel string) string {
	switch {
	case base == "/":
		return rel
	case rel == "/":
		return base
	default:
		return base + rel
	}
}

// under reports whether key is root or lies below it on whole segments.
// Both must be clean.
func under(root, key string) bool {
	if root == "/" || root == key {
		return true
	}
	return len(key) > len(root) && key[len(root)] == '/' && strings.HasPrefix(key, root)
}

// related reports whether one key is the other or lies below it: two
// operations on related keys must happen in source order.
func related(a, b string) bool { return under(a, b) || under(b, a) }

// relative is key below the source root, as an absolute path ("/" for the
// root itself). key must be under srcRoot.
func (m keyMap) relative(key string) string {
	if m.srcRoot == "/" {
		return key
	}
	if key == m.srcRoot {
		return "/"
	}
	return key[len(m.srcRoot):]
}

// toDst maps a source key at or below the source root.
func (m keyMap) toDst(srcKey string) string {
	return joinKey(m.dstBase, m.relative(srcKey))
}

// toSrc maps a destination key at or below the destination base back to
// the source key it mirrors.
func (m keyMap) toSrc(dstKey string) string {
	rel := dstKey
	if m.dstBase != "/" {
		rel = "/"
		if dstKey != m.dstBase {
			rel = dstKey[len(m.dstBase):]
		}
	}
	return joinKey(m.srcRoot, rel)
}

// hidden reports whether a source key has a segment starting with "_" below
// the source root. etcd's v2 GET never lists such nodes and its live watches
// never deliver them, but replays from its event history do; the mirror
// skips them everywhere so that all three agree.
func (m keyMap) hidden(srcKey string) bool {
	rel := m.relative(srcKey)
	return strings.Contains(rel, "/_")
}

// indexKey is where etcdmirror keeps the replication index on the
// destination: /__replication followed by the destination prefix, or
// /__replication/__ROOT__ when the destination prefix is the root.
func (m keyMap) indexKey() string {
	if m.dstRoot == "/" {
		return "/__replication/__ROOT__"
	}
	return "/__replication" + m.dstRoot
}

// stateKey is the sibling of the index key holding what etcdmirror did not
// record: the source's identity and how far events may already have been
// applied (see replicationState).
func (m keyMap) stateKey() string { return m.indexKey() + ".source" }

// lockKey is the other sibling: the lock naming the mirror that writes the
// destination.
func (m keyMap) lockKey() string { return m.indexKey() + ".lock" }
