package relay

import (
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/keyspace"
)

// state is what reads are answered from: the copy of the prefix at one
// index. The watch's goroutine replaces it whole; readers load it without
// a lock and may keep it as long as they like.
type state struct {
	space     *keyspace.Space
	clusterID string
	fromCache bool
	// Header values, built once per state rather than once per answer.
	indexHeader, clusterHeader []string
	answers                    *answerCache
}

func newState(space *keyspace.Space, clusterID string, fromCache bool) *state {
	st := &state{space: space, clusterID: clusterID, fromCache: fromCache, answers: &answerCache{}}
	st.indexHeader = []string{strconv.FormatUint(space.Index(), 10)}
	if clusterID != "" {
		st.clusterHeader = []string{clusterID}
	}
	return st
}

// withSpace is the state after a change under the prefix.
func (st *state) withSpace(space *keyspace.Space) *state {
	return newState(space, st.clusterID, false)
}

// withIndex is the state at a later index with the same nodes: answers
// already encoded stay valid.
func (st *state) withIndex(space *keyspace.Space) *state {
	next := newState(space, st.clusterID, st.fromCache)
	next.answers = st.answers
	return next
}

func (st *state) index() uint64 { return st.space.Index() }

// serves reports whether key is answered from memory: it lies at or below
// the prefix, with no hidden segment below the prefix (etcd leaves hidden
// nodes out of the recursive watch the copy is made from).
func (st *state) serves(key string) bool {
	if st == nil || !st.space.Covers(key) {
		return false
	}
	for _, seg := range backends.Segments(strings.TrimPrefix(key, st.space.Prefix())) {
		if strings.HasPrefix(seg, "_") {
			return false
		}
	}
	return true
}

// missing is etcd's error for a key with no node: 104 when a value stands
// where a directory is needed, else 100 naming the first key on the way
// that does not exist. When the prefix itself is missing the relay cannot
// see above it, and names the prefix.
func (st *state) missing(key string) *etcdError {
	prefix := st.space.Prefix()
	n := st.space.Get(prefix)
	if n == nil {
		return newError(codeKeyNotFound, prefix, st.index())
	}
	for _, seg := range backends.Segments(strings.TrimPrefix(key, prefix)) {
		if !n.IsDir() {
			return newError(codeNotDir, n.Key(), st.index())
		}
		next := childKey(n.Key(), seg)
		child := st.space.Get(next)
		if child == nil {
			return newError(codeKeyNotFound, next, st.index())
		}
		n = child
	}
	return nil
}

func childKey(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}

// maxAnswers bounds the answers kept per state, so that clients asking
// for ever new keys cannot grow memory.
const maxAnswers = 4096

// answerCache keeps the encoded body of GETs for one set of nodes.
type answerCache struct {
	m sync.Map // answerKey -> []byte
	n atomic.Int64
}

type answerKey struct {
	key       string
	recursive bool
}

// getAnswer is the body of a GET of key, which must exist: {"action":"get",
// "node":...} and a newline. Bodies with a TTL in them change every second
// and are not kept.
func (st *state) getAnswer(key string, recursive bool, now time.Time) []byte {
	k := answerKey{key, recursive}
	if b, ok := st.answers.m.Load(k); ok {
		return b.([]byte)
	}
	node := st.space.ToWire(key, recursive, now)
	dirsOverValues(node)
	body, err := json.Marshal(getEvent{Action: "get", Node: node})
	if err != nil {
		panic("relay: encode node: " + err.Error()) // strings, numbers and times always encode
	}
	body = append(body, '\n')
	if !hasTTL(node) && st.answers.n.Add(1) <= maxAnswers {
		st.answers.m.Store(k, body)
	}
	return body
}

// dirsOverValues shows a node that holds a value and has nodes below it
// (a key of etcd's flat v3 keyspace with keys under it; v2 has no such
// node) as the directory of those nodes, as docs/relay.md says.
func dirsOverValues(n *etcd.Node) {
	if n == nil {
		return
	}
	if len(n.Nodes) > 0 && !n.Dir {
		n.Dir, n.Value, n.Expiration, n.TTL = true, nil, nil, 0
	}
	for _, c := range n.Nodes {
		dirsOverValues(c)
	}
}

type getEvent struct {
	Action string     `json:"action"`
	Node   *etcd.Node `json:"node"`
}

func hasTTL(n *etcd.Node) bool {
	if n.Expiration != nil {
		return true
	}
	for _, c := range n.Nodes {
		if hasTTL(c) {
			return true
		}
	}
	return false
}

// sameNodes reports whether two copies hold the same nodes: keys, values,
// directories, indexes and expirations.
func sameNodes(a, b *keyspace.Space) bool {
	if a.Prefix() != b.Prefix() {
		return false
	}
	return sameNode(a.Get(a.Prefix()), b.Get(b.Prefix()))
}

func sameNode(a, b *keyspace.Node) bool {
	if a == b {
		return true
	}
	if a == nil || b == nil || a.Key() != b.Key() || a.Value() != b.Value() || a.IsDir() != b.IsDir() ||
		a.CreatedIndex() != b.CreatedIndex() || a.ModifiedIndex() != b.ModifiedIndex() ||
		!a.Expiration().Equal(b.Expiration()) {
		return false
	}
	ac, bc := a.Children(), b.Children()
	if len(ac) != len(bc) {
		return false
	}
	for i := range ac {
		if !sameNode(ac[i], bc[i]) {
			return false
		}
	}
	return true
}
