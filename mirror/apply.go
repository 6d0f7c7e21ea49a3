package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	client "go.etcd.io/etcd/client/v2"
)

// nodeState is what one key holds: nothing, a directory or a file.
type nodeState struct {
	exists   bool
	dir      bool
	value    string
	expires  *time.Time
	modIndex uint64 // the destination's own modifiedIndex, for prevIndex
}

func stateOf(n *client.Node) nodeState {
	if n == nil {
		return nodeState{}
	}
	return nodeState{exists: true, dir: n.Dir, value: n.Value, expires: n.Expiration, modIndex: n.ModifiedIndex}
}

func (s nodeState) String() string {
	switch {
	case !s.exists:
		return "nothing (key absent)"
	case s.dir:
		return "a directory"
	default:
		return strconv.Quote(s.value)
	}
}

// ttl is the TTL to write so that the destination key expires when the
// source key does. The event's own ttl field is the remaining time when etcd
// built the event, stale when the event is replayed from history; the
// absolute expiration is not. A deadline already passed gets one second:
// the source's expire event follows and removes the key anyway.
func ttl(expires *time.Time, now time.Time) time.Duration {
	if expires == nil {
		return 0
	}
	secs := math.Ceil(expires.Sub(now).Seconds())
	if secs < 1 {
		secs = 1
	}
	return time.Duration(secs) * time.Second
}

// outcome is what applying an event did.
type outcome int

const (
	applied        outcome = iota // the destination was changed
	alreadyApplied                // the destination already held the result (a replay)
	superseded                    // replay window: the destination is already past the event
)

// event is one source change, classified and mapped.
type event struct {
	index     uint64
	action    string
	srcKey    string
	dstKey    string
	node      *client.Node
	prev      *client.Node
	clearBase bool // the source root or an ancestor was deleted
}

// applier changes the destination, one event at a time per key.
type applier struct {
	log    *slog.Logger
	keys   client.KeysAPI
	km     keyMap
	ignore *regexp.Regexp
	now    func() time.Time
}

// before and after are the key's state as the event describes it.
func (ev *event) before() nodeState { return stateOf(ev.prev) }

func (ev *event) after() nodeState {
	switch ev.action {
	case "delete", "expire", "compareAndDelete":
		return nodeState{}
	}
	return stateOf(ev.node)
}

// apply makes the destination key hold the event's result, provided it held
// the event's prior state. lenient is for the replay window after a crash
// (see replicationState.MayHaveAppliedThrough): a destination that matches
// neither state is taken to be past the event already.
func (a *applier) apply(ctx context.Context, ev *event, lenient bool) (outcome, error) {
	if ev.clearBase {
		return applied, a.clearBase(ctx)
	}
	before, after := ev.before(), ev.after()
	if !before.exists && !after.exists {
		return alreadyApplied, nil
	}
	done, err := a.fastPath(ctx, ev.dstKey, before, after)
	if err != nil || done {
		return applied, err
	}
	// The one-request form did not fit or did not match: look at the key
	// and decide. A few rounds allow for our own earlier request landing
	// late; more means another writer.
	var cur nodeState
	for round := 0; round < 4; round++ {
		cur, err = a.get(ctx, ev.dstKey)
		if err != nil {
			return applied, err
		}
		switch {
		case matchesBefore(before, after, cur):
			done, err := a.transition(ctx, ev, cur, after)
			if err != nil {
				return applied, err
			}
			if done {
				return applied, nil
			}
		case matchesAfter(after, cur):
			return alreadyApplied, nil
		case lenient:
			return superseded, nil
		default:
			return applied, ev.divergence(before, cur)
		}
	}
	return applied, ev.divergence(before, cur)
}

func (ev *event) divergence(expected, found nodeState) error {
	return &DivergenceError{
		Index: ev.index, Action: ev.action, SourceKey: ev.srcKey, DestKey: ev.dstKey,
		Expected: expected.String(), Found: found.String(),
	}
}

// matchesBefore reports whether the destination holds the event's prior
// state, so applying it is right. A key with a TTL may already have expired
// on the destination: its own clock ran out. A file that becomes a directory
// is applied in two steps (delete, then create); absence is the state
// between them.
func matchesBefore(before, after, cur nodeState) bool {
	switch {
	case !before.exists:
		return !cur.exists
	case !cur.exists:
		return before.expires != nil || (!before.dir && after.exists && after.dir)
	case before.dir:
		return cur.dir
	default:
		return !cur.dir && cur.value == before.value
	}
}

// matchesAfter reports whether the destination already holds the result.
func matchesAfter(after, cur nodeState) bool {
	switch {
	case !after.exists:
		return !cur.exists
	case after.dir:
		return cur.exists && cur.dir
	default:
		return cur.exists && !cur.dir && cur.value == after.value
	}
}

// fastPath applies the event with a single conditional request when etcd
// can express the check: create for an absent key, compare-and-swap or
// compare-and-delete on a non-empty previous value. It reports false when
// the condition failed or cannot be expressed (empty previous value, which
// etcd rejects as prevValue with error 201; directories), and the caller
// falls back to reading the key and pinning its modifiedIndex.
func (a *applier) fastPath(ctx context.Context, key string, before, after nodeState) (bool, error) {
	var err error
	switch {
	case !before.exists && after.exists:
		_, err = a.keys.Set(ctx, key, after.value, &client.SetOptions{
			PrevExist: client.PrevNoExist, Dir: after.dir, TTL: ttl(after.expires, a.now()),
		})
	case before.exists && !before.dir && before.value != "" && after.exists && !after.dir:
		_, err = a.keys.Set(ctx, key, after.value, &client.SetOptions{
			PrevValue: before.value, TTL: ttl(after.expires, a.now()),
		})
	case before.exists && !before.dir && before.value != "" && !after.exists:
		_, err = a.keys.Delete(ctx, key, &client.DeleteOptions{PrevValue: before.value})
	default:
		return false, nil
	}
	if err == nil {
		return true, nil
	}
	if conditionFailed(err) {
		return false, nil
	}
	return false, fmt.Errorf("write %s: %w", key, err)
}

// transition moves the key from cur (which matched the event's prior state)
// to after, pinned on cur's modifiedIndex where etcd allows it. It reports
// false when the key changed between the read and the write.
func (a *applier) transition(ctx context.Context, ev *event, cur, after nodeState) (bool, error) {
	key := ev.dstKey
	var err error
	switch {
	case !after.exists && !cur.exists:
		return true, nil
	case !after.exists && cur.dir:
		// etcd has no compare-and-delete for directories; the mirror is
		// the destination's only writer, so read-then-delete is safe.
		_, err = a.keys.Delete(ctx, key, &client.DeleteOptions{Dir: true, Recursive: true})
	case !after.exists:
		_, err = a.keys.Delete(ctx, key, &client.DeleteOptions{PrevIndex: cur.modIndex})
	case cur.exists && !cur.dir && after.dir:
		_, err = a.keys.Delete(ctx, key, &client.DeleteOptions{PrevIndex: cur.modIndex})
		if err == nil {
			return a.transition(ctx, ev, nodeState{}, after)
		}
	case cur.exists && cur.dir && after.dir:
		// A directory's TTL changed (update, which etcd 2.x sources emit).
		return true, a.updateDirTTL(ctx, key, cur, after)
	case cur.exists && cur.dir:
		return false, ev.divergence(ev.before(), cur)
	case cur.exists:
		_, err = a.keys.Set(ctx, key, after.value, &client.SetOptions{
			PrevIndex: cur.modIndex, TTL: ttl(after.expires, a.now()),
		})
	default:
		_, err = a.keys.Set(ctx, key, after.value, &client.SetOptions{
			PrevExist: client.PrevNoExist, Dir: after.dir, TTL: ttl(after.expires, a.now()),
		})
	}
	switch {
	case err == nil:
		return true, nil
	case isCode(err, client.ErrorCodeKeyNotFound), isCode(err, client.ErrorCodeTestFailed), isCode(err, client.ErrorCodeNodeExist):
		return false, nil
	case isCode(err, client.ErrorCodeNotFile), isCode(err, client.ErrorCodeNotDir), isCode(err, client.ErrorCodeRootROnly), isCode(err, client.ErrorCodeDirNotEmpty):
		return false, &DivergenceError{
			Index: ev.index, Action: ev.action, SourceKey: ev.srcKey, DestKey: key,
			Expected: ev.before().String(), Found: fmt.Sprintf("%s, and etcd refused the change: %v", cur, err),
		}
	default:
		return false, fmt.Errorf("write %s: %w", key, err)
	}
}

// updateDirTTL gives an existing directory the source's expiry. etcd 3.x
// refuses TTL updates of directories (error 300, "Not a file"); the
// directory then keeps its old expiry on the destination, with a warning.
func (a *applier) updateDirTTL(ctx context.Context, key string, cur, after nodeState) error {
	if sameExpiry(cur.expires, after.expires) {
		return nil
	}
	_, err := a.keys.Set(ctx, key, "", &client.SetOptions{
		Dir: true, PrevExist: client.PrevExist, TTL: ttl(after.expires, a.now()),
	})
	if storeRefusal(err) {
		a.log.Warn("the destination refuses to change a directory's TTL; it keeps its previous expiry",
			"key", key, "expires", expiry(after), "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("update directory %s: %w", key, err)
	}
	return nil
}

// storeRefusal reports etcd 3.x wrapping a store error in error 300
// ("Raft Internal Error", cause "nodePath ... : Not a file"): an answer
// about the key, not a failure worth retrying.
func storeRefusal(err error) bool {
	var e client.Error
	return errors.As(err, &e) && e.Code == client.ErrorCodeRaftInternal && strings.Contains(e.Cause, "nodePath")
}

func conditionFailed(err error) bool {
	var e client.Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Code {
	case client.ErrorCodeKeyNotFound, client.ErrorCodeTestFailed, client.ErrorCodeNodeExist,
		client.ErrorCodeNotFile, client.ErrorCodeNotDir:
		return true
	}
	return false
}

// get reads one destination key. A missing key, or a path through a file,
// is absent.
func (a *applier) get(ctx context.Context, key string) (nodeState, error) {
	resp, err := a.keys.Get(ctx, key, &client.GetOptions{Quorum: true})
	switch {
	case err == nil:
		return stateOf(resp.Node), nil
	case etcd.IsKeyNotFound(err), isCode(err, client.ErrorCodeNotDir):
		return nodeState{}, nil
	default:
		return nodeState{}, fmt.Errorf("read %s: %w", key, err)
	}
}

// clearBase removes everything the mirror owns under the destination base,
// after the source deleted its root or an ancestor of it. Destination keys
// whose source keys are ignored stay.
func (a *applier) clearBase(ctx context.Context) error {
	base := a.km.dstBase
	if a.ignore == nil && base != "/" {
		_, err := a.keys.Delete(ctx, base, &client.DeleteOptions{Dir: true, Recursive: true})
		if err == nil || etcd.IsKeyNotFound(err) {
			return nil
		}
		if !isCode(err, client.ErrorCodeNotFile) {
			return fmt.Errorf("delete %s: %w", base, err)
		}
		// base is a plain key.
		_, err = a.keys.Delete(ctx, base, nil)
		if err == nil || etcd.IsKeyNotFound(err) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", base, err)
	}
	tree, err := readTree(ctx, a.keys, base)
	if err != nil {
		return err
	}
	for _, n := range deletions(tree, nil, a.km, a.ignore) {
		if err := deleteNode(ctx, a.keys, n); err != nil {
			return err
		}
	}
	return nil
}
