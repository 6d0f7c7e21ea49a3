package mirror

import (
	"context"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	client "go.etcd.io/etcd/client/v2"
)

// The v3 paths against the etcd versions a site meets: Debian's etcd 3.4
// (the one conf hosts run, v2 and v3) as the source, etcd 3.6 (no v2 at
// all) as the destination; v3 to v3 with transactions and leases, and v2
// to v3, the migration path. Both converge under a random workload, are
// stopped and caught up again, and verify equal.
func TestV3AcrossEtcdVersions(t *testing.T) {
	src := etcdtest.NewProcessCluster(t, 1)
	dst := etcdtest.NewEtcd36(t, 1)
	ctx := context.Background()

	t.Run("v3 3.4 to 3.6", func(t *testing.T) {
		cfg := v3Config(t, src.Endpoints(), dst.Endpoints(), apiV3)
		cfg.DestinationPrefix, cfg.Reload = "/from-v3", true
		w := newV3Workload(t, src.Endpoints(), "/src", 34)
		w.run(ctx, 100)
		m := startMirror(t, cfg)
		w.run(ctx, 300)
		m.waitApplied(t, sentinel3(t, w))
		if err := m.stop(t); err != nil {
			t.Fatal(err)
		}
		w.run(ctx, 200)
		cfg.Reload = false
		m2 := startMirror(t, cfg)
		m2.waitApplied(t, sentinel3(t, w))
		waitSnapshotsEqual(t, "3.4 to 3.6",
			func() map[string]string { return v3Snapshot(t, src.Endpoints(), "/src", ignoredLocks) },
			func() map[string]string { return v3Snapshot(t, dst.Endpoints(), "/from-v3/src", nil) })
		waitVerified(t, cfg)
		if st := m2.Status(); st.Resyncs != 0 {
			t.Errorf("caught up with %d resyncs", st.Resyncs)
		}
	})

	t.Run("v2 3.4 to v3 3.6", func(t *testing.T) {
		keys := client.NewKeysAPI(mustV2Client(t, src.Endpoints()))
		cfg := v3Config(t, src.Endpoints(), dst.Endpoints(), apiV2)
		cfg.DestinationPrefix, cfg.Reload = "/from-v2", true
		w := newWorkload(keys, "/src", 36)
		w.run(ctx, 100)
		m := startMirror(t, cfg)
		w.run(ctx, 300)
		last := setSentinel(t, keys)
		m.waitApplied(t, last)
		if err := m.stop(t); err != nil {
			t.Fatal(err)
		}
		w.run(ctx, 200)
		cfg.Reload = false
		m2 := startMirror(t, cfg)
		m2.waitApplied(t, setSentinel(t, keys))
		waitSnapshotsEqual(t, "v2 3.4 to v3 3.6",
			func() map[string]string { return v2FilesOf(t, keys, "/src", ignoredLocks) },
			func() map[string]string { return v3Snapshot(t, dst.Endpoints(), "/from-v2/src", nil) })
		waitVerified(t, cfg)
	})
}

func mustV2Client(t testing.TB, endpoints []string) client.Client {
	c, err := client.New(client.Config{Endpoints: endpoints, HeaderTimeoutPerRequest: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func setSentinel(t testing.TB, keys client.KeysAPI) uint64 {
	t.Helper()
	r, err := keys.Set(context.Background(), "/src/sentinel", time.Now().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return r.Index
}
