package mirror

import (
	"context"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	client "go.etcd.io/etcd/client/v2"
)

// Each v2 action, one at a time, with the destination checked after each.
func TestEachActionReplicates(t *testing.T) {
	src, dst := etcdtest.New(t), etcdtest.New(t)
	cfg := baseConfig(t, src, dst)
	cfg.Reload = true
	cfg.IgnoreKeys = `/src/locks(/.*)?`
	m := startMirror(t, cfg)
	ctx := context.Background()
	s, d := src.Client(), dst.Client()

	step := func(name string, resp *client.Response, err error, check func()) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s on the source: %v", name, err)
		}
		m.waitApplied(t, resp.Index)
		check()
	}
	value := func(key, want string) func() {
		return func() {
			t.Helper()
			if n := mustGet(t, d, key); n.Dir || n.Value != want {
				t.Fatalf("%s on the destination: %+v, want value %q", key, n, want)
			}
		}
	}
	gone := func(key string) func() {
		return func() {
			t.Helper()
			if !isAbsent(t, d, key) {
				t.Fatalf("%s still on the destination", key)
			}
		}
	}

	r, err := s.Set(ctx, "/src/a", "1", nil)
	step("set", r, err, value("/replica/src/a", "1"))
	r, err = s.Set(ctx, "/src/b", "x", &client.SetOptions{PrevExist: client.PrevNoExist})
	step("create", r, err, value("/replica/src/b", "x"))
	r, err = s.Set(ctx, "/src/a", "2", &client.SetOptions{PrevExist: client.PrevExist})
	step("update", r, err, value("/replica/src/a", "2"))
	r, err = s.Set(ctx, "/src/a", "3", &client.SetOptions{PrevValue: "2"})
	step("compareAndSwap by value", r, err, value("/replica/src/a", "3"))
	r, err = s.Set(ctx, "/src/a", "4", &client.SetOptions{PrevIndex: r.Node.ModifiedIndex})
	step("compareAndSwap by index", r, err, value("/replica/src/a", "4"))

	// An empty previous value cannot be sent as prevValue (etcd error 201).
	r, err = s.Set(ctx, "/src/empty", "", nil)
	step("set empty", r, err, value("/replica/src/empty", ""))
	r, err = s.Set(ctx, "/src/empty", "filled", &client.SetOptions{PrevIndex: r.Node.ModifiedIndex})
	step("compareAndSwap from empty", r, err, value("/replica/src/empty", "filled"))
	r, err = s.Set(ctx, "/src/empty", "", &client.SetOptions{PrevValue: "filled"})
	step("compareAndSwap to empty", r, err, value("/replica/src/empty", ""))
	r, err = s.Delete(ctx, "/src/empty", &client.DeleteOptions{PrevIndex: r.Node.ModifiedIndex})
	step("compareAndDelete of empty", r, err, gone("/replica/src/empty"))

	r, err = s.Delete(ctx, "/src/b", &client.DeleteOptions{PrevValue: "x"})
	step("compareAndDelete", r, err, gone("/replica/src/b"))
	r, err = s.Delete(ctx, "/src/a", nil)
	step("delete", r, err, gone("/replica/src/a"))

	r, err = s.Set(ctx, "/src/dir", "", &client.SetOptions{Dir: true})
	step("mkdir", r, err, func() {
		if n := mustGet(t, d, "/replica/src/dir"); !n.Dir {
			t.Fatalf("/replica/src/dir is not a directory: %+v", n)
		}
	})
	// etcd 3.x refuses TTL updates of directories, so only a new one can
	// carry a TTL.
	r, err = s.Set(ctx, "/src/tdir", "", &client.SetOptions{Dir: true, TTL: time.Hour})
	step("mkdir with a TTL", r, err, func() {
		n := mustGet(t, d, "/replica/src/tdir")
		if !n.Dir || n.Expiration == nil || time.Until(*n.Expiration) < 59*time.Minute {
			t.Fatalf("directory TTL not replicated: %+v", n)
		}
	})
	r, err = s.Set(ctx, "/src/dir/x/y", "deep", nil)
	step("set deep", r, err, value("/replica/src/dir/x/y", "deep"))
	r, err = s.Delete(ctx, "/src/dir", &client.DeleteOptions{Recursive: true})
	step("recursive delete of a directory", r, err, gone("/replica/src/dir"))

	// In-order keys keep their generated names, hence their order.
	q1, err := s.CreateInOrder(ctx, "/src/queue", "first", nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err = s.CreateInOrder(ctx, "/src/queue", "second", nil)
	step("in-order create", r, err, func() {
		value("/replica"+q1.Node.Key, "first")()
		value("/replica"+r.Node.Key, "second")()
	})

	// A TTL is recomputed from the source's absolute expiration.
	r, err = s.Set(ctx, "/src/lease", "held", &client.SetOptions{TTL: 30 * time.Minute})
	step("set with TTL", r, err, func() {
		n := mustGet(t, d, "/replica/src/lease")
		if n.Expiration == nil || n.Expiration.Sub(*r.Node.Expiration).Abs() > ttlTolerance {
			t.Fatalf("destination expiration %v, source %v", n.Expiration, r.Node.Expiration)
		}
	})
	r, err = s.Set(ctx, "/src/short", "soon gone", &client.SetOptions{TTL: time.Second})
	step("set with a short TTL", r, err, value("/replica/src/short", "soon gone"))
	// The source's expire event arrives when etcd's leader purges the key.
	waitFor(t, 30*time.Second, "the short-lived key to expire on both sides", func() bool {
		return isAbsent(t, s, "/src/short") && isAbsent(t, d, "/replica/src/short")
	})

	// A file turned into a directory by set dir=true.
	r, err = s.Set(ctx, "/src/flip", "file", nil)
	step("set", r, err, value("/replica/src/flip", "file"))
	r, err = s.Set(ctx, "/src/flip", "", &client.SetOptions{Dir: true})
	if err == nil {
		step("set dir over a file", r, err, func() {
			if n := mustGet(t, d, "/replica/src/flip"); !n.Dir {
				t.Fatalf("/replica/src/flip is not a directory: %+v", n)
			}
		})
	}

	// Ignored and hidden keys are not replicated, but move the index on.
	s.Set(ctx, "/src/locks/etcd/l1", "mine", nil)
	s.Set(ctx, "/src/_hidden", "h", nil)
	r, err = s.Set(ctx, "/src/after", "ok", nil)
	step("set after ignored keys", r, err, func() {
		gone("/replica/src/locks/etcd/l1")()
		gone("/replica/src/_hidden")()
		value("/replica/src/after", "ok")()
	})
	if st := m.Status(); st.Ignored < 1 {
		t.Errorf("ignored counter %d after an ignored key", st.Ignored)
	}
	waitTreesEqual(t, src, dst, "/src", "/replica/src", cfg.ignoreRegexp(t))

	// The index key on the destination follows the applied index.
	idx := m.Status().AppliedIndex
	waitFor(t, 10*time.Second, "the index key to be recorded", func() bool {
		n := mustGet(t, d, "/__replication/replica")
		return n.Value == itoa(idx)
	})
	if m.exited() {
		t.Fatalf("mirror stopped: %v", m.err)
	}
}
