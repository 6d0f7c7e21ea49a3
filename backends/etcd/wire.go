package etcd

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/confsync/confsync/backends"
)

// Node is a node as etcd's v2 API encodes it: the fields, their order and
// their omissions are etcd's, so a Node decoded from etcd and encoded again
// gives the same bytes. Value is a pointer because etcd tells an empty value
// ("value":"") from none (directories, and the node of a delete event).
type Node struct {
	Key           string     `json:"key,omitempty"`
	Value         *string    `json:"value,omitempty"`
	Dir           bool       `json:"dir,omitempty"`
	Expiration    *time.Time `json:"expiration,omitempty"`
	TTL           int64      `json:"ttl,omitempty"`
	Nodes         []*Node    `json:"nodes,omitempty"`
	ModifiedIndex uint64     `json:"modifiedIndex,omitempty"`
	CreatedIndex  uint64     `json:"createdIndex,omitempty"`
}

// Event is one change as a v2 watch delivers it.
type Event struct {
	Action   string `json:"action"`
	Node     *Node  `json:"node,omitempty"`
	PrevNode *Node  `json:"prevNode,omitempty"`
	// Flat marks an event of a flat keyspace (etcd v3), where a key is no
	// directory: setting a value keeps the keys below it, deleting one
	// deletes only that key, and a directory is only the shape of the keys
	// below it. It is never sent on the wire.
	Flat bool `json:"-"`
}

// Index is the event's place in etcd's history: its node's modifiedIndex.
func (e *Event) Index() uint64 { return e.Node.ModifiedIndex }

// Key is the cleaned key the event is about.
func (e *Event) Key() string { return backends.CleanKey(e.Node.Key) }

// IsDelete reports the actions that remove a node and everything below it.
func (e *Event) IsDelete() bool { return IsDeleteAction(e.Action) }

// IsDeleteAction reports the v2 actions that remove a node.
func IsDeleteAction(action string) bool {
	return action == "delete" || action == "compareAndDelete" || action == "expire"
}

// knownActions are the actions a v2 watch can deliver.
var knownActions = map[string]bool{
	"set": true, "create": true, "update": true, "compareAndSwap": true,
	"delete": true, "compareAndDelete": true, "expire": true,
}

// DecodeEvent parses one watch event and checks that it can be applied:
// a known action, a node with an absolute key below the root and a
// modifiedIndex. A
// malformed event must stop a watcher, not be half-applied.
func DecodeEvent(raw []byte) (*Event, error) {
	var ev Event
	if err := json.Unmarshal(raw, &ev); err != nil {
		return nil, fmt.Errorf("decode watch event: %w", err)
	}
	if err := ev.validate(); err != nil {
		return nil, err
	}
	return &ev, nil
}

func (e *Event) validate() error {
	switch {
	case !knownActions[e.Action]:
		return fmt.Errorf("watch event with unknown action %q", e.Action)
	case e.Node == nil:
		return fmt.Errorf("watch event %q without a node", e.Action)
	case len(e.Node.Key) == 0 || e.Node.Key[0] != '/':
		return fmt.Errorf("watch event %q with key %q: want an absolute key", e.Action, e.Node.Key)
	case e.Key() == "/":
		// etcd refuses every change of its root (error 107), so such an
		// event is forged or corrupt; a delete would empty every copy.
		return fmt.Errorf("watch event %q on the root (key %q): etcd never changes its root", e.Action, e.Node.Key)
	case e.Node.ModifiedIndex == 0:
		return fmt.Errorf("watch event %q on %s without a modifiedIndex", e.Action, e.Node.Key)
	case !e.IsDelete() && !e.Node.Dir && e.Node.Value == nil:
		return fmt.Errorf("watch event %q on %s sets no value", e.Action, e.Node.Key)
	}
	return nil
}
