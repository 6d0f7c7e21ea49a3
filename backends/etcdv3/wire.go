package etcdv3

import (
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// eventOf is a v3 event as the v2 event a keyspace applies: a put is
// "create" for a key's first version and "set" after, with the key's
// create and mod revisions as indexes; a delete carries the revision of
// the delete. Events are flat: a put keeps the keys below, a delete
// removes the one key. There is no prevNode (the watch does not ask etcd
// for previous values) and no expiration (leases are not shown).
func eventOf(ev *clientv3.Event) *etcd.Event {
	kv := ev.Kv
	node := &etcd.Node{Key: string(kv.Key), ModifiedIndex: uint64(kv.ModRevision)}
	if ev.Type == mvccpb.DELETE {
		return &etcd.Event{Action: "delete", Node: node, Flat: true}
	}
	value := string(kv.Value)
	node.Value, node.CreatedIndex = &value, uint64(kv.CreateRevision)
	action := "set"
	if kv.CreateRevision == kv.ModRevision {
		action = "create"
	}
	return &etcd.Event{Action: action, Node: node, Flat: true}
}

// listing builds the v2 node tree of the visible keys of a read of prefix.
// Directories exist only as the shape of the keys below them; each gets
// the smallest create revision found below it as both its indexes (which
// is what a keyspace gives one created by an event). A key that holds a
// value and has keys below it is a node with a value and nodes. It
// returns the keys left out because they are not clean paths.
func listing(prefix string, r *rangeRead) (*etcd.Listing, []string) {
	l := &etcd.Listing{Prefix: prefix, Index: uint64(r.rev), ClusterID: clusterIDOf(r.header), At: time.Now()}
	nodes := map[string]*etcd.Node{}
	var unclean []string
	for _, kv := range r.kvs {
		key := string(kv.Key)
		switch {
		case !clean(key):
			unclean = append(unclean, key)
			continue
		case !visible(prefix, key):
			continue
		}
		n := nodeAt(nodes, prefix, key, uint64(kv.CreateRevision))
		value := string(kv.Value)
		n.Dir, n.Value = false, &value
		n.CreatedIndex, n.ModifiedIndex = uint64(kv.CreateRevision), uint64(kv.ModRevision)
	}
	l.Node = nodes[prefix]
	return l, unclean
}

// nodeAt returns the node at key, creating it and its missing ancestors
// down from prefix as directories. Every directory on the way records
// created as its indexes if it is smaller than what it has.
func nodeAt(nodes map[string]*etcd.Node, prefix, key string, created uint64) *etcd.Node {
	if n, ok := nodes[key]; ok {
		lowerDirIndexes(nodes, prefix, key, created)
		return n
	}
	n := &etcd.Node{Key: key, Dir: true, CreatedIndex: created, ModifiedIndex: created}
	nodes[key] = n
	if key != prefix {
		parent := nodeAt(nodes, prefix, parentOf(key), created)
		parent.Nodes = append(parent.Nodes, n)
	}
	return n
}

// lowerDirIndexes gives the directories from key up to prefix the index
// created where it is smaller than theirs.
func lowerDirIndexes(nodes map[string]*etcd.Node, prefix, key string, created uint64) {
	for {
		if n := nodes[key]; n.Dir && created < n.CreatedIndex {
			n.CreatedIndex, n.ModifiedIndex = created, created
		}
		if key == prefix {
			return
		}
		key = parentOf(key)
	}
}

// parentOf is the parent of a clean key other than "/".
func parentOf(key string) string {
	i := len(key) - 1
	for key[i] != '/' {
		i--
	}
	if i == 0 {
		return "/"
	}
	return key[:i]
}
