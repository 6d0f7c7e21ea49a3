package mirror

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	client "go.etcd.io/etcd/client/v2"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Faults a site has, with three-member clusters on both sides: the leader
// killed in the middle of a burst of writes, the member the mirror talks
// to hanging (blackholed behind its address), a follower lagging behind
// (cut off from its peers, still answering clients), and every member
// restarted one after the other. Through each, a writer keeps changing
// the source, including a counter that only goes up; the test watches the
// destination's copy of the counter and the mirror's applied index and
// fails if either ever goes back (the 2022-09 incident: a mirror that
// came back on a lagging member propagated an older, half-depooled
// state). The mirror must never stop, never diverge, and converge; the
// log reports, per fault, how long it took to catch up again and how
// many events it found already applied.

// faultRig is a source and a destination cluster, a writer, a mirror and
// the monitors.
type faultRig struct {
	t        *testing.T
	api      string // of both sides
	src, dst *etcdtest.Cluster
	// srcFront and dstFront stand in front of each member's client port;
	// the mirror reaches the clusters only through them.
	srcFront, dstFront []*etcdtest.FaultProxy
	cfg                Config
	mirror             atomic.Pointer[running]
	// writeTo are the source members the writer uses (all, unless a test
	// cuts one off).
	writeTo []string
	keys    client.KeysAPI
	v3src   *clientv3.Client

	counter   atomic.Int64
	violation atomic.Value // string: the first backwards step seen
	stop      context.CancelFunc
	wg        sync.WaitGroup
}

func newFaultRig(t *testing.T, api string) *faultRig {
	r := &faultRig{t: t, api: api, src: etcdtest.NewCluster(t, 3), dst: etcdtest.NewCluster(t, 3)}
	front := func(c *etcdtest.Cluster) ([]*etcdtest.FaultProxy, []string) {
		var ps []*etcdtest.FaultProxy
		var urls []string
		for i := range c.Size() {
			p := etcdtest.NewFaultProxy(t, c.Member(i).Addr())
			ps, urls = append(ps, p), append(urls, p.URL())
		}
		return ps, urls
	}
	var srcURLs, dstURLs []string
	r.srcFront, srcURLs = front(r.src)
	r.dstFront, dstURLs = front(r.dst)
	r.cfg = Config{
		Source: etcdConfigOf(srcURLs...), Destination: etcdConfigOf(dstURLs...),
		SourceAPI: api, DestinationAPI: api,
		SourcePrefix: "/src", DestinationPrefix: "/replica",
		PollTimeout: 2 * time.Second, MaxBackoff: 500 * time.Millisecond, LockTTL: 10 * time.Second,
		Reload: true, Logger: testLogger(t),
	}
	r.cfg.Source.RequestTimeout, r.cfg.Destination.RequestTimeout = 2*time.Second, 2*time.Second
	r.writeTo = r.src.Endpoints()
	return r
}

// waitApplied waits until the mirror has applied idx. Six in-process
// members under -race on a loaded machine can take their time, hence a
// longer wait than other tests.
func (r *faultRig) waitApplied(idx uint64) {
	r.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for r.m().Status().AppliedIndex < idx {
		if m := r.m(); m.exited() {
			r.t.Fatalf("mirror stopped before reaching index %d: %v", idx, m.err)
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("mirror did not reach index %d within 3 minutes; status %+v", idx, r.m().Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// m is the running mirror.
func (r *faultRig) m() *running { return r.mirror.Load() }

// start runs the mirror, the writer and the monitors.
func (r *faultRig) start() {
	r.keys = client.NewKeysAPI(mustV2Client(r.t, r.writeTo))
	if r.api == apiV3 {
		r.v3src = v3Client(r.t, r.writeTo...)
	}
	r.put("/src/counter", "0")
	r.mirror.Store(startMirror(r.t, r.cfg))
	r.waitApplied(r.sentinel())
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	r.wg.Go(func() { r.write(ctx) })
	r.wg.Go(func() { r.watchCounter(ctx) })
	r.wg.Go(func() { r.watchApplied(ctx) })
	r.t.Cleanup(func() {
		cancel()
		r.wg.Wait()
	})
}

// write changes the source continuously: the counter, and keys that
// come and go, about 100 writes a second. Failed writes (no leader) are
// retried by the next round.
func (r *faultRig) write(ctx context.Context) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ctx.Err() == nil; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n := r.counter.Load() + 1
		if r.tryPut(ctx, "/src/counter", strconv.FormatInt(n, 10)) == nil {
			r.counter.Store(n)
		}
		k := fmt.Sprintf("/src/pool/k%d", i%37)
		if i%5 == 0 {
			r.tryDelete(ctx, k)
		} else {
			r.tryPut(ctx, k, fmt.Sprintf("v%d", i))
		}
	}
}

// watchCounter reads the destination's counter (a linearizable read)
// and records the first time it goes back.
func (r *faultRig) watchCounter(ctx context.Context) {
	var last int64
	for ctx.Err() == nil {
		if v, ok := r.dstValue(ctx, "/replica/src/counter"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			if n < last {
				r.violation.CompareAndSwap(nil, fmt.Sprintf("the destination's counter went back from %d to %d", last, n))
			}
			last = max(last, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// watchApplied records the first time a mirror's applied index goes back
// (a restarted mirror starts again from the recorded index).
func (r *faultRig) watchApplied(ctx context.Context) {
	var last uint64
	var seen *running
	for ctx.Err() == nil {
		m := r.m()
		if m != seen {
			seen, last = m, 0
		}
		s := m.Status()
		if s.AppliedIndex < last {
			r.violation.CompareAndSwap(nil, fmt.Sprintf("the applied index went back from %d to %d", last, s.AppliedIndex))
		}
		last = max(last, s.AppliedIndex)
		time.Sleep(10 * time.Millisecond)
	}
}

// recover measures one fault that the mirror must get through while it
// lasts (a leader kill, a member hanging): the time from the fault until
// the mirror has applied a change made after it, and what it replayed
// meanwhile. heal then ends the fault.
func (r *faultRig) recover(fault string, inject, heal func()) {
	r.t.Helper()
	m, before := r.m(), r.m().Status()
	start := time.Now()
	inject()
	after := r.sentinel()
	r.waitApplied(after)
	took := time.Since(start)
	r.report(fault, "after the fault", took, m, before)
	if heal != nil {
		heal()
	}
	r.waitApplied(r.sentinel())
	r.check()
}

// outlast plays a fault the mirror cannot get through (no member it can
// reach has the data): for hold it must make no wrong move; then heal ends
// the fault, and the time to catch up is measured from there.
func (r *faultRig) outlast(fault string, inject func(), hold time.Duration, heal func()) {
	r.t.Helper()
	m, before := r.m(), r.m().Status()
	inject()
	r.sentinel()
	time.Sleep(hold)
	r.check()
	start := time.Now()
	heal()
	r.waitApplied(r.sentinel())
	r.report(fault, "after the fault ended", time.Since(start), m, before)
	r.check()
}

// report logs what a fault cost. Counters are per mirror; a restarted
// mirror's count from zero.
func (r *faultRig) report(fault, from string, took time.Duration, m *running, before Status) {
	st := r.m().Status()
	if r.m() != m {
		before = Status{}
	}
	r.t.Logf("FAULT %s (%s): caught up %s %s; %d events applied, %d found already applied (replayed), %d resyncs, %d lock losses; last error: %s",
		fault, r.api, took.Round(time.Millisecond), from, st.Applied-before.Applied, st.Replayed-before.Replayed,
		st.Resyncs-before.Resyncs, st.LockLosses-before.LockLosses, st.LastError)
}

// check fails the test on a backwards step or a stopped mirror.
func (r *faultRig) check() {
	r.t.Helper()
	if v := r.violation.Load(); v != nil {
		r.t.Fatal(v)
	}
	if r.m().exited() {
		r.t.Fatalf("the mirror stopped: %v", r.m().err)
	}
}

// finish stops the writer and checks the destination equals the source.
func (r *faultRig) finish() {
	r.t.Helper()
	r.stop()
	r.wg.Wait()
	r.waitApplied(r.sentinel())
	r.check()
	waitVerified(r.t, r.cfg)
}

// sentinel writes a key through the source's healthy members, retrying
// while the cluster elects a leader, and returns its index or revision.
func (r *faultRig) sentinel() uint64 {
	r.t.Helper()
	var idx uint64
	testutil.Eventually(r.t, "a source write to succeed", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		var err error
		idx, err = r.putIndex(ctx, "/src/sentinel", time.Now().String())
		return err == nil
	})
	return idx
}

func (r *faultRig) put(key, value string) {
	r.t.Helper()
	if err := r.tryPut(context.Background(), key, value); err != nil {
		r.t.Fatal(err)
	}
}

func (r *faultRig) tryPut(ctx context.Context, key, value string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err := r.putIndex(ctx, key, value)
	return err
}

func (r *faultRig) putIndex(ctx context.Context, key, value string) (uint64, error) {
	if r.api == apiV2 {
		resp, err := r.keys.Set(ctx, key, value, nil)
		if err != nil {
			return 0, err
		}
		return resp.Index, nil
	}
	resp, err := r.v3src.Put(ctx, key, value)
	if err != nil {
		return 0, err
	}
	return uint64(resp.Header.Revision), nil
}

func (r *faultRig) tryDelete(ctx context.Context, key string) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if r.api == apiV2 {
		r.keys.Delete(ctx, key, nil)
		return
	}
	r.v3src.Delete(ctx, key)
}

func (r *faultRig) dstValue(ctx context.Context, key string) (string, bool) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if r.api == apiV2 {
		resp, err := r.dst.Client().Get(ctx, key, &client.GetOptions{Quorum: true})
		if err != nil {
			return "", false
		}
		return resp.Node.Value, true
	}
	resp, err := r.v3(r.dst).Get(ctx, key)
	if err != nil || len(resp.Kvs) == 0 {
		return "", false
	}
	return string(resp.Kvs[0].Value), true
}

var v3Clients sync.Map // *etcdtest.Cluster → *clientv3.Client

// v3 is a v3 client of a cluster's members, reached directly.
func (r *faultRig) v3(c *etcdtest.Cluster) *clientv3.Client {
	if cli, ok := v3Clients.Load(c); ok {
		return cli.(*clientv3.Client)
	}
	cli := v3Client(r.t, c.Endpoints()...)
	r.t.Cleanup(func() { v3Clients.Delete(c) })
	v3Clients.Store(c, cli)
	return cli
}

func healthyEndpoints(c *etcdtest.Cluster, except int) []string {
	var out []string
	for i, ep := range c.Endpoints() {
		if i != except {
			out = append(out, ep)
		}
	}
	return out
}

// follower is a member of c that does not lead.
func follower(t *testing.T, c *etcdtest.Cluster) int {
	return (c.Leader(t) + 1) % c.Size()
}

func TestFaultsWithThreeMemberClusters(t *testing.T) {
	for _, api := range []string{apiV2, apiV3} {
		t.Run(api, func(t *testing.T) {
			t.Run("leader killed mid-burst", func(t *testing.T) {
				r := newFaultRig(t, api)
				r.start()
				var srcLeader, dstLeader int
				r.recover("source leader killed mid-burst", func() { srcLeader = r.src.KillLeader(t) },
					func() { r.src.RestartMember(t, srcLeader) })
				r.recover("destination leader killed mid-burst", func() { dstLeader = r.dst.KillLeader(t) },
					func() { r.dst.RestartMember(t, dstLeader) })
				r.finish()
			})
			t.Run("member in use blackholed", func(t *testing.T) {
				r := newFaultRig(t, api)
				r.start()
				// The mirror starts on the first endpoint of each side.
				r.recover("source member in use blackholed", r.srcFront[0].Blackhole, r.srcFront[0].PassThrough)
				r.recover("destination member in use blackholed", r.dstFront[0].Blackhole, r.dstFront[0].PassThrough)
				r.finish()
			})
			t.Run("lagging follower", func(t *testing.T) {
				r := newFaultRig(t, api)
				f := follower(t, r.src)
				r.writeTo = healthyEndpoints(r.src, f)
				r.start()
				// A follower cut off from its peers keeps answering with
				// ever older data; the mirror can reach only that member.
				others := func(fn func(*etcdtest.FaultProxy)) {
					for i, p := range r.srcFront {
						if i != f {
							fn(p)
						}
					}
				}
				r.outlast("only a lagging source follower reachable", func() {
					r.src.Partition(f)
					others((*etcdtest.FaultProxy).Drop)
					others((*etcdtest.FaultProxy).ResetConnections)
				}, 3*time.Second, func() { others((*etcdtest.FaultProxy).PassThrough) })
				// The 2022-09 case: the mirror restarts while the only
				// source member it reaches lags far behind what it
				// already applied.
				r.outlast("mirror restarted on a lagging source member", func() {
					others((*etcdtest.FaultProxy).Drop)
					others((*etcdtest.FaultProxy).ResetConnections)
					if err := r.m().stop(t); err != nil {
						t.Fatalf("mirror stopped with %v", err)
					}
					r.cfg.Reload = false
					r.mirror.Store(startMirror(t, r.cfg))
				}, 3*time.Second, func() { others((*etcdtest.FaultProxy).PassThrough) })
				r.src.Heal(f)
				r.finish()
			})
			t.Run("rolling restart of every member", func(t *testing.T) {
				r := newFaultRig(t, api)
				r.start()
				r.recover("rolling restart of all six members", func() {
					for i := range 3 {
						r.src.StopMember(i)
						r.src.RestartMember(t, i)
						r.dst.StopMember(i)
						r.dst.RestartMember(t, i)
					}
				}, nil)
				r.finish()
			})
		})
	}
}
