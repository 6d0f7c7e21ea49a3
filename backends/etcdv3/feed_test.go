package etcdv3_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/etcdv3"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The feed hands over every kind of change as flat events: the copy it
// keeps is what etcd holds, key for key, through puts, deletes, a key that
// holds a value and keys below it, a transaction of several keys in one
// revision, and writes to siblings in the watched range that are not
// below the prefix.
func TestFeedFollowsEveryChange(t *testing.T) {
	srv := etcdtest.New(t)
	w := newWriter(t, nil, "", "", srv.URL())
	seedPaths(w)
	f, r := runFeed(t, etcd.Config{Endpoints: []string{srv.URL()}}, etcd.FeedConfig{Prefix: "/app"})
	r.matches(t, w, "the first read")
	w.put("/app/a", "changed")
	w.put("/app/new/deep/key", "created")
	w.del("/app/a") // /app/a/b stays
	w.del("/app")   // the prefix's own value; the keys below stay
	w.put("/apple", "sibling changed")
	w.put("/app//x", "unclean")
	ctx, cancel := w.ctx()
	defer cancel()
	txn, err := w.cli.Txn(ctx).Then(clientv3.OpPut("/app/t1", "1"), clientv3.OpPut("/app/t2", "2"), clientv3.OpDelete("/app/c/d/e")).Commit()
	if err != nil {
		t.Fatal(err)
	}
	w.put("/other", "moves the revision past the prefix")
	r.matches(t, w, "every change")
	testutil.Eventually(t, "the revision of the last write", func() bool { return r.index() >= uint64(txn.Header.Revision) })
	if st := f.Status(); st.Mode != etcdv3.ModeWatch || !st.Connected || st.ClusterID != srv.ClusterID() || st.Endpoint != srv.URL() {
		t.Fatalf("status %+v", st)
	}
	if reads := r.reads(); len(reads) != 1 {
		t.Fatalf("reads %v, want the first one only", reads)
	}
	r.inOrder(t)
	r.mu.Lock()
	defer r.mu.Unlock()
	for key, want := range map[string]string{"/app/a": "set delete", "/app/new/deep/key": "create", "/app": "delete",
		"/app/t1": "create", "/app/c/d/e": "delete", "/apple": "", "/app//x": ""} {
		if got := strings.Join(r.actions[key], " "); got != want {
			t.Errorf("events of %s: %q, want %q", key, got, want)
		}
	}
}

// A watch that resumes at a revision etcd has compacted away re-reads the
// prefix: deletes and changes made while the feed was cut off are found.
func TestFeedRereadsAfterCompaction(t *testing.T) {
	srv := etcdtest.New(t)
	proxy := etcdtest.NewFaultProxy(t, srv.Addr())
	w := newWriter(t, nil, "", "", srv.URL())
	w.put("/app/keep", "1")
	w.put("/app/gone", "1")
	_, r := runFeed(t, etcd.Config{Endpoints: []string{proxy.URL()}},
		etcd.FeedConfig{Prefix: "/app", WatchHeaderTimeout: 500 * time.Millisecond})
	r.matches(t, w, "the first read")
	proxy.Drop()
	proxy.ResetConnections()
	w.del("/app/gone")
	w.put("/app/keep", "2")
	w.put("/app/new", "3")
	w.compact(w.put("/elsewhere", "x"))
	proxy.PassThrough()
	testutil.Eventually(t, "a re-read after compaction", func() bool { return r.resetCount("compacted") == 1 })
	r.matches(t, w, "the changes made while cut off")
	r.inOrder(t)
}

// A quiet prefix in a busy cluster follows the cluster's revision through
// progress notifications: after a compaction of everything before now, a
// cut watch resumes without a re-read.
func TestFeedKeepsAQuietPrefixCurrent(t *testing.T) {
	srv := etcdtest.New(t)
	proxy := etcdtest.NewFaultProxy(t, srv.Addr())
	w := newWriter(t, nil, "", "", srv.URL())
	w.put("/app/k", "1")
	_, r := runFeed(t, etcd.Config{Endpoints: []string{proxy.URL()}},
		etcd.FeedConfig{Prefix: "/app", PollTimeout: 200 * time.Millisecond, WatchHeaderTimeout: 500 * time.Millisecond})
	var last int64
	for i := 0; i < 20; i++ {
		last = w.put(fmt.Sprintf("/busy/%d", i), "x")
	}
	testutil.Eventually(t, "the quiet prefix at the cluster's revision", func() bool { return r.index() >= uint64(last) })
	w.compact(last)
	proxy.ResetConnections()
	w.put("/app/k", "2")
	r.matches(t, w, "the write after the cut")
	if n := r.resetCount("compacted"); n != 0 {
		t.Fatalf("%d re-reads after compaction, want none", n)
	}
}

// Another cluster behind the same address (a cluster rebuilt, a wrong
// DNS record): its ID differs, so the feed re-reads rather than resume at
// a revision that means nothing there, and follows the new cluster's data
// even though its revision is lower.
func TestFeedRereadsWhenTheClusterChanges(t *testing.T) {
	old, replacement := etcdtest.New(t), etcdtest.New(t)
	proxy := etcdtest.NewFaultProxy(t, old.Addr())
	w := newWriter(t, nil, "", "", old.URL())
	for i := 0; i < 20; i++ {
		w.put("/app/k", fmt.Sprint(i))
	}
	f, r := runFeed(t, etcd.Config{Endpoints: []string{proxy.URL()}},
		etcd.FeedConfig{Prefix: "/app", WatchHeaderTimeout: 500 * time.Millisecond})
	r.matches(t, w, "the old cluster")
	w2 := newWriter(t, nil, "", "", replacement.URL())
	w2.put("/app/other", "new cluster")
	proxy.SetTarget(replacement.Addr())
	proxy.ResetConnections()
	r.matches(t, w2, "the new cluster's data")
	if r.resetCount("cluster-id-changed") != 1 || f.Status().ClusterID != replacement.ClusterID() {
		t.Fatalf("reads %v, status %+v", r.reads(), f.Status())
	}
}

// etcd restarted: the feed resumes after the last revision, without a
// re-read, and sees what is written after.
func TestFeedResumesAfterEtcdRestart(t *testing.T) {
	srv := etcdtest.New(t)
	w := newWriter(t, nil, "", "", srv.URL())
	w.put("/app/k", "before")
	f, r := runFeed(t, etcd.Config{Endpoints: []string{srv.URL()}},
		etcd.FeedConfig{Prefix: "/app", WatchHeaderTimeout: 500 * time.Millisecond})
	srv.Stop()
	testutil.Eventually(t, "the feed to notice", func() bool { return !f.Status().Connected })
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	w.put("/app/k", "after")
	w.del("/app/k")
	w.put("/app/k2", "after")
	r.matches(t, w, "the writes after the restart")
	if reads := r.reads(); len(reads) != 1 {
		t.Fatalf("reads %v, want none after the first", reads)
	}
	r.inOrder(t)
}

// Three members; the one in use is killed: the feed moves to another and
// misses nothing written meanwhile.
func TestFeedFailsOverWhenItsMemberDies(t *testing.T) {
	c := etcdtest.NewProcessCluster(t, 3)
	w := newWriter(t, nil, "", "", c.Endpoints()...)
	w.put("/app/k", "0")
	f, r := runFeed(t, etcd.Config{Endpoints: c.Endpoints()},
		etcd.FeedConfig{Prefix: "/app", WatchHeaderTimeout: time.Second})
	testutil.Eventually(t, "the watch", func() bool { return f.Status().Connected })
	used := f.Status().Endpoint
	var alive []string
	for i := 0; i < c.Size(); i++ {
		if c.URL(i) == used {
			c.Kill(i)
		} else {
			alive = append(alive, c.URL(i))
		}
	}
	w = newWriter(t, nil, "", "", alive...)
	for i := 1; i <= 5; i++ {
		w.put("/app/k", fmt.Sprint(i))
	}
	w.del("/app/k")
	w.put("/app/k2", "after")
	r.matches(t, w, "the writes after the kill")
	testutil.Eventually(t, "the feed on another member", func() bool {
		st := f.Status()
		return st.Connected && st.Endpoint != used
	})
	r.inOrder(t)
}

// basicFollow is the same short follow against any etcd: a read, a few
// events, the cluster's identity.
func basicFollow(t *testing.T, endpoints []string, clusterID string) {
	w := newWriter(t, nil, "", "", endpoints...)
	w.put("/conftool/v1/pools/eqiad/app/web/mw1", `{"weight": 10, "pooled": "yes"}`)
	f, r := runFeed(t, etcd.Config{Endpoints: endpoints}, etcd.FeedConfig{Prefix: "/conftool/v1"})
	r.matches(t, w, "the first read")
	w.put("/conftool/v1/pools/eqiad/app/web/mw1", `{"weight": 10, "pooled": "no"}`)
	w.put("/conftool/v1/pools/eqiad/app/web/mw2", `{"weight": 30, "pooled": "yes"}`)
	w.del("/conftool/v1/pools/eqiad/app/web/mw1")
	w.put("/conftool/v1-x", "a sibling")
	r.matches(t, w, "the events")
	if st := f.Status(); st.ClusterID != clusterID || st.Mode != etcdv3.ModeWatch {
		t.Fatalf("status %+v, want cluster %s", st, clusterID)
	}
	r.inOrder(t)
}

// The embedded etcd 3.5 the other tests use.
func TestFeedEtcd35(t *testing.T) {
	srv := etcdtest.New(t)
	basicFollow(t, []string{srv.URL()}, srv.ClusterID())
}

// Debian's etcd 3.4 (the site's) through its v3 API.
func TestFeedEtcd34(t *testing.T) {
	c := etcdtest.NewProcessCluster(t, 1)
	basicFollow(t, c.Endpoints(), c.ClusterID(t))
}

// etcd 3.6, which has no v2 API left.
func TestFeedEtcd36(t *testing.T) {
	c := etcdtest.NewEtcd36(t, 1)
	basicFollow(t, c.Endpoints(), c.ClusterID(t))
}

// Interval mode re-reads on its period instead of watching.
func TestFeedInterval(t *testing.T) {
	srv := etcdtest.New(t)
	w := newWriter(t, nil, "", "", srv.URL())
	w.put("/app/k", "1")
	f, r := runFeed(t, etcd.Config{Endpoints: []string{srv.URL()}}, etcd.FeedConfig{Prefix: "/app", Interval: 100 * time.Millisecond})
	w.put("/app/k", "2")
	r.matches(t, w, "a later read")
	if st := f.Status(); st.Mode != "interval" || r.resetCount("interval") == 0 {
		t.Fatalf("status %+v, reads %v", st, r.reads())
	}
}

func TestProgressInOrder(t *testing.T) {
	for v, want := range map[string]bool{
		"3.4.23": false, "3.4.25": true, "3.5.7": false, "3.5.8": true, "3.5.35": true,
		"3.6.0": true, "3.6.0-rc.1": true, "3.7.2": true, "4.0.0": true, "3.3.27": false, "": false, "garbage": false,
	} {
		if got := etcdv3.ProgressInOrder(v); got != want {
			t.Errorf("%q: %v, want %v", v, got, want)
		}
	}
}
