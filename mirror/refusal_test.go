package mirror

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	client "go.etcd.io/etcd/client/v2"
)

// A replica initialised from one cluster refuses to resume from another:
// the recorded index means nothing there.
func TestRefusesAnotherSourceCluster(t *testing.T) {
	src, dst := newPair(t)
	other := etcdtest.New(t)
	cfg := baseConfig(t, src, dst)
	cfg.Reload = true
	src.Set(t, "/src/k", "v")
	m := startMirror(t, cfg)
	m.waitApplied(t, sentinel(t, src, "/src"))
	if err := m.stop(t); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		other.Set(t, "/src/k", "other") // an index ahead, so only the identity check can catch it
	}

	cfg = baseConfig(t, other, dst)
	err := startMirror(t, cfg).wait(t, 30*time.Second)
	ref := asRefusal(err)
	if ref == nil || !strings.Contains(err.Error(), src.ClusterID()) || !strings.Contains(err.Error(), other.ClusterID()) {
		t.Fatalf("Run returned %v, want a refusal naming both cluster IDs", err)
	}
	// --reload is the way to switch sources on purpose.
	cfg.Reload = true
	m = startMirror(t, cfg)
	waitTreesEqual(t, other, dst, "/src", "/replica/src", nil)
}

// An index ahead of the source (a rebuilt or restored source) would make
// the mirror skip every event up to it; it refuses instead. This index key
// has no state key beside it, as etcdmirror leaves it.
func TestRefusesIndexAheadOfSource(t *testing.T) {
	src, dst := newPair(t)
	dst.Set(t, "/__replication/replica", fmt.Sprint(src.Index(t)+500))
	err := startMirror(t, baseConfig(t, src, dst)).wait(t, 30*time.Second)
	if ref := asRefusal(err); ref == nil || !strings.Contains(err.Error(), "ahead") {
		t.Fatalf("Run returned %v, want a refusal about an index ahead of the source", err)
	}
}

// An etcdmirror destination (index key only) is adopted and resumed.
func TestAdoptsEtcdmirrorIndex(t *testing.T) {
	src, dst := newPair(t)
	src.Set(t, "/src/a", "1")
	dst.Set(t, "/replica/src/a", "1")
	dst.Set(t, "/__replication/replica", fmt.Sprint(src.Index(t)))
	m := startMirror(t, baseConfig(t, src, dst))
	r := src.Set(t, "/src/a", "2")
	m.waitApplied(t, r.Index)
	if n := mustGet(t, dst.Client(), "/replica/src/a"); n.Value != "2" {
		t.Fatalf("%+v", n)
	}
	if st := m.Status(); st.Resyncs != 0 {
		t.Fatalf("adopting an etcdmirror index resynchronised: %+v", st)
	}
	if n := mustGet(t, dst.Client(), "/__replication/replica.source"); !strings.Contains(n.Value, src.ClusterID()) {
		t.Fatalf("state key not written: %+v", n)
	}
}

// One cluster as both source and destination with overlapping prefixes
// would replicate its own writes forever.
func TestRefusesOverlappingPrefixesOnOneCluster(t *testing.T) {
	one := etcdtest.New(t)
	one.Set(t, "/a/k", "v")
	cfg := baseConfig(t, one, one)
	cfg.SourcePrefix, cfg.DestinationPrefix, cfg.Reload = "/a", "/a/copy", true
	err := startMirror(t, cfg).wait(t, 30*time.Second)
	if ref := asRefusal(err); ref == nil || !strings.Contains(err.Error(), "same cluster") {
		t.Fatalf("Run returned %v, want a refusal about overlapping prefixes", err)
	}
	if !isAbsent(t, one.Client(), "/a/copy") {
		t.Fatal("something was written before the refusal")
	}
	// Disjoint prefixes on one cluster are fine.
	cfg.SourcePrefix, cfg.DestinationPrefix, cfg.Strip = "/a", "/b", true
	m := startMirror(t, cfg)
	waitTreesEqual(t, one, one, "/a", "/b", nil)
	if m.exited() {
		t.Fatal(m.err)
	}
}

// Deleting a directory above the source prefix deletes the replica's copy;
// the prefix can then come back.
func TestAncestorDeleteClearsTheDestination(t *testing.T) {
	src, dst := newPair(t)
	cfg := baseConfig(t, src, dst)
	cfg.SourcePrefix, cfg.DestinationPrefix, cfg.Strip, cfg.Reload = "/a/b", "/copy", true, true
	src.Set(t, "/a/b/x", "1")
	src.Set(t, "/a/b/y/z", "2")
	src.Set(t, "/a/other", "3")
	m := startMirror(t, cfg)
	m.waitApplied(t, sentinel(t, src, "/a/b"))
	waitTreesEqual(t, src, dst, "/a/b", "/copy", nil)

	r := src.Delete(t, "/a")
	m.waitApplied(t, r.Index)
	if !isAbsent(t, dst.Client(), "/copy") {
		t.Fatalf("/copy survived the deletion of /a: %+v", snapshotTree(t, dst.Client(), "/copy", nil))
	}
	r = src.Set(t, "/a/b/again", "4")
	m.waitApplied(t, r.Index)
	waitTreesEqual(t, src, dst, "/a/b", "/copy", nil)

	// The same, replayed from history after a restart.
	m.stop(t)
	src.Set(t, "/a/b/later", "5")
	src.Delete(t, "/a")
	src.Set(t, "/a/b/final", "6")
	cfg.Reload = false
	m2 := startMirror(t, cfg)
	m2.waitApplied(t, sentinel(t, src, "/a/b"))
	waitTreesEqual(t, src, dst, "/a/b", "/copy", nil)
}

// Hidden keys never reach the replica, whether the event arrives live or
// from history, and never stop replication.
func TestHiddenKeysAreSkippedConsistently(t *testing.T) {
	src, dst := newPair(t)
	cfg := baseConfig(t, src, dst)
	cfg.Reload = true
	src.Set(t, "/src/_lock/x", "before")
	m := startMirror(t, cfg)
	src.Set(t, "/src/_lock/y", "live")
	src.Delete(t, "/src/_lock")
	m.waitApplied(t, sentinel(t, src, "/src"))
	m.stop(t)
	src.Set(t, "/src/_lock/z", "replayed")
	src.Delete(t, "/src/_lock/z")
	cfg.Reload = false
	m2 := startMirror(t, cfg)
	m2.waitApplied(t, sentinel(t, src, "/src"))
	resp, err := dst.Client().Get(context.Background(), "/replica/src/_lock", nil)
	if err == nil {
		t.Fatalf("hidden key replicated: %+v", resp.Node)
	}
	if !client.IsKeyNotFound(err) {
		t.Fatal(err)
	}
}

// The source behind SRC is replaced while the mirror runs (a DNS name or a
// load balancer now points at a rebuilt cluster with a lower index): the
// mirror stops instead of waiting for an index the new cluster would only
// reach after skipping everything in between.
func TestRefusesSourceReplacedWhileRunning(t *testing.T) {
	src, dst := newPair(t)
	rebuilt := etcdtest.New(t)
	for i := range 20 {
		src.Set(t, "/src/k", fmt.Sprint(i))
	}
	proxy := etcdtest.NewProxy(t, src.URL())
	cfg := baseConfig(t, src, dst)
	cfg.Source.Endpoints = []string{proxy.URL()}
	cfg.Reload = true
	m := startMirror(t, cfg)
	m.waitApplied(t, sentinel(t, src, "/src"))

	proxy.SetTarget(rebuilt.URL())
	proxy.CloseClientConnections()
	err := m.wait(t, 30*time.Second)
	if ref := asRefusal(err); ref == nil || !strings.Contains(err.Error(), rebuilt.ClusterID()) {
		t.Fatalf("Run returned %v, want a refusal naming the new cluster", err)
	}
}
