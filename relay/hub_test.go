package relay

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/keyspace"
	"github.com/confsync/confsync/backends/watch"
)

// The hub is driven here as a watch.Watcher drives it, with the copies and
// events a watch of etcd delivers; the end-to-end tests drive it from a
// real etcd.

// feed is a copy of /site that events are applied to, as the watch does.
type feed struct {
	t     *testing.T
	s     *Server
	space *keyspace.Space
	index uint64
}

func newFeed(t *testing.T) *feed {
	f := &feed{t: t, s: New(Config{}), index: 10}
	f.space = keyspace.FromWire("/site", &etcd.Node{Key: "/site", Dir: true, CreatedIndex: 1, ModifiedIndex: 1}, f.index)
	f.s.hub.Reset(watch.Copy{Space: f.space, ClusterID: "c1"}, "initial")
	return f
}

// set applies and delivers a set of key.
func (f *feed) set(key, value string) *etcd.Event {
	f.index++
	ev := &etcd.Event{Action: "set", Node: &etcd.Node{Key: key, Value: &value, ModifiedIndex: f.index, CreatedIndex: f.index}}
	f.space = f.space.Apply(ev)
	f.s.hub.Event(f.space, ev)
	return ev
}

// reset installs a copy with the nodes of space at index.
func (f *feed) reset(space *keyspace.Space, index uint64, cluster, reason string) {
	f.index = index
	f.space = keyspace.FromWire("/site", space.ToWire("/site", true, time.Now()), index)
	f.s.hub.Reset(watch.Copy{Space: f.space, ClusterID: cluster}, reason)
}

func (f *feed) wait(key string, recursive, stream bool, since uint64) registration {
	f.t.Helper()
	reg, err := f.s.hub.watch(keyRead{key: key, recursive: recursive, stream: stream, waitIndex: since}, nil)
	if err != nil {
		f.t.Fatalf("watch %s from %d: %v", key, since, err)
	}
	return reg
}

// TestSlowStreamIsClosed: a stream's buffer holds 100 events; the next
// one finds it full and the stream is closed, as etcd closes a watcher
// that falls behind, without holding up the watch.
func TestSlowStreamIsClosed(t *testing.T) {
	f := newFeed(t)
	slow := f.wait("/site", true, true, 0)
	fast := f.wait("/site/k", false, false, 0)
	for i := 0; i <= streamBuffer; i++ {
		f.set("/site/k", strconv.Itoa(i))
	}
	n := 0
	for range slow.w.ch {
		n++
	}
	if n != streamBuffer {
		t.Errorf("the slow stream got %d events before it closed, want %d", n, streamBuffer)
	}
	if got := counter(t, f.s, "confsync_relay_watches_ended_total", "slow"); got != 1 {
		t.Errorf("watches ended as slow: %v", got)
	}
	if e := <-fast.w.ch; e.index != 11 {
		t.Errorf("the long poll got index %d", e.index)
	}
}

// TestResetKeepsOrRestartsTheHistory: a copy with the very nodes the relay
// has (a periodic re-read, or one after etcd's history moved on outside
// the prefix) keeps the history and the waiting watchers; a copy that
// differs restarts the history at its index and ends the watchers that
// may have missed an event, and a wait from before it gets etcd's 401; a
// copy from an index that went back (a restored cluster) ends them all.
func TestResetKeepsOrRestartsTheHistory(t *testing.T) {
	f := newFeed(t)
	first := f.set("/site/a", "1")
	f.set("/site/b", "2")
	waiting := f.wait("/site", true, false, 0)
	stream := f.wait("/site", true, true, 0)

	f.reset(f.space, f.index+50, "c1", "periodic")
	if past := f.wait("/site/a", false, false, first.Index()); len(past.past) != 1 || past.past[0].index != first.Index() {
		t.Fatalf("after a matching re-read, the history lost %d", first.Index())
	}
	select {
	case <-waiting.w.ch:
		t.Fatal("a matching re-read ended a waiting watch")
	default:
	}

	changed := keyspace.FromWire("/site", &etcd.Node{Key: "/site", Dir: true, CreatedIndex: 1, ModifiedIndex: 1,
		Nodes: []*etcd.Node{{Key: "/site/a", Value: ptr("other"), CreatedIndex: 70, ModifiedIndex: 70}}}, 80)
	future := f.wait("/site", true, false, 100)
	f.reset(changed, 80, "c1", "history-cleared")
	if _, ok := <-waiting.w.ch; ok {
		t.Error("a differing re-read left a waiting watch that may have missed an event")
	}
	if _, ok := <-stream.w.ch; ok {
		t.Error("a differing re-read left a stream that may have missed an event")
	}
	select {
	case <-future.w.ch:
		t.Error("a differing re-read ended a watch waiting for index 100, after the copy")
	default:
	}
	_, err := f.s.hub.watch(keyRead{key: "/site", recursive: true, waitIndex: first.Index()}, nil)
	var cleared *etcdError
	if !errors.As(err, &cleared) || cleared.Code != codeHistoryCleared || cleared.Index != 80 ||
		cleared.Cause != "the requested history has been cleared [81/"+strconv.FormatUint(first.Index(), 10)+"]" {
		t.Errorf("wait from before the restart: %v", err)
	}

	f.reset(changed, 40, "c1", "index-went-backwards")
	if _, ok := <-future.w.ch; ok {
		t.Error("a copy from an index that went back left a watch waiting")
	}
	if st := f.s.hub.current(); st.index() != 40 {
		t.Errorf("index %d after going back, want 40: the relay follows etcd", st.index())
	}
}

// TestDeleteOfADirectoryReachesWatchersBelowIt: etcd notifies the
// watchers of every node a directory delete removes; from history it
// matches any key below the directory.
func TestDeleteOfADirectoryReachesWatchersBelowIt(t *testing.T) {
	f := newFeed(t)
	f.set("/site/d/x", "1")
	existing := f.wait("/site/d/x", false, false, 0)
	missing := f.wait("/site/d/never", false, false, 0)
	f.index++
	del := &etcd.Event{Action: "delete", Node: &etcd.Node{Key: "/site/d", Dir: true, ModifiedIndex: f.index, CreatedIndex: 11},
		PrevNode: &etcd.Node{Key: "/site/d", Dir: true, ModifiedIndex: 11, CreatedIndex: 11}}
	f.space = f.space.Apply(del)
	f.s.hub.Event(f.space, del)
	if e := <-existing.w.ch; e.index != del.Index() {
		t.Errorf("watch of a deleted node got %d", e.index)
	}
	select {
	case <-missing.w.ch:
		t.Error("a live watch of a key that never existed under the deleted directory fired (etcd's does not)")
	default:
	}
	if past := f.wait("/site/d/never", false, false, del.Index()); len(past.past) != 1 || !strings.Contains(string(past.past[0].body), `"action":"delete"`) {
		t.Errorf("a wait from the delete's index on a key below it: %v", past.past)
	}
}

func ptr(s string) *string { return &s }

// counter reads a counter of s's metrics with the given label value.
func counter(t *testing.T, s *Server, name, label string) float64 {
	t.Helper()
	families, err := s.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
