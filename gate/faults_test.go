package gate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	client "go.etcd.io/etcd/client/v2"
)

// The gate in front of a three-member cluster, every member an upstream,
// under the faults a site sees. Each test logs how long the gate took to
// serve again.

// faultRig is a three-member etcd cluster behind a gate, each member
// reached through a FaultProxy. upstream i of the gate is member order[i]:
// the gate starts on order[0].
type faultRig struct {
	*harness
	cluster *etcdtest.Cluster
	order   []int
	proxies []*etcdtest.FaultProxy
}

// newFaultRig makes member first the gate's preferred upstream (-1: the
// leader).
func newFaultRig(t *testing.T, first int) *faultRig {
	c := etcdtest.NewCluster(t, 3)
	if first < 0 {
		first = c.Leader(t)
	}
	return newFaultRigOn(t, c, first)
}

// quorumGet reads a key or directory through raft from the cluster.
func (r *faultRig) quorumGet(key string) (*client.Node, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := r.cluster.Client().Get(ctx, key, &client.GetOptions{Quorum: true, Recursive: true})
	if err != nil {
		return nil, err
	}
	return resp.Node, nil
}

// gateIndex is the etcd index the gate's preferred member reports.
func (r *faultRig) gateIndex() uint64 {
	got := r.do(req{method: "GET", path: "/v2/keys/"})
	var idx uint64
	fmt.Sscan(got.header.Get("X-Etcd-Index"), &idx)
	return idx
}

// writeLog records what clients were told about their writes.
type writeLog struct {
	mu     sync.Mutex
	status map[string]int // key -> HTTP status the client got
	body   map[string]string
}

func (w *writeLog) add(key string, status int, body string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.status == nil {
		w.status, w.body = map[string]int{}, map[string]string{}
	}
	w.status[key], w.body[key] = status, body
}

// checkNoWriteTwiceOrLost checks the cluster against what the writers
// were told. Each write was a POST (create in order) into a directory of
// its own: etcd applying it twice leaves two children, losing it none.
// A write the client was told succeeded must be there exactly once; one
// that failed may be there once (it may have been applied before the
// answer was lost: the gate says so) or not at all.
func (r *faultRig) checkNoWriteTwiceOrLost(t *testing.T, dir string, log *writeLog) (ok, failed, failedApplied int) {
	t.Helper()
	root, err := r.quorumGet(dir)
	if err != nil {
		t.Fatalf("quorum read of %s: %v", dir, err)
	}
	children := map[string]int{}
	for _, n := range root.Nodes {
		children[n.Key] = len(n.Nodes)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	causes := map[string]int{}
	for key, status := range log.status {
		n := children[key]
		switch {
		case n > 1:
			t.Errorf("write %s applied %d times (client got %d)", key, n, status)
		case status == http.StatusCreated && n != 1:
			t.Errorf("write %s acknowledged with 201 but not in etcd: lost", key)
		case status == http.StatusCreated:
			ok++
		default:
			failed++
			failedApplied += n
			if !strings.Contains(log.body[key], "errorCode") {
				t.Errorf("write %s failed with %d and a body that is not etcd-shaped: %q", key, status, log.body[key])
			}
			var e struct{ Cause string }
			json.Unmarshal([]byte(log.body[key]), &e)
			causes[fmt.Sprintf("%d %s", status, e.Cause)]++
		}
	}
	t.Logf("failed writes by answer: %v", causes)
	return ok, failed, failedApplied
}

// writer POSTs into dir/<name>-<n> through the gate until stop is
// closed, recording every answer, and returns when it stopped.
func (r *faultRig) writer(name, dir string, log *writeLog, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		key := fmt.Sprintf("%s/%s-%04d", dir, name, n)
		got, err := r.tryDo(req{method: "POST", path: "/v2/keys" + key, body: form("value", "x"), user: "conftool"})
		if err != nil {
			log.add(key, 0, err.Error())
			continue
		}
		log.add(key, got.status, got.body)
	}
}

// tryDo is do without failing the test on a transport error.
func (r *faultRig) tryDo(q req) (response, error) {
	hr, _ := http.NewRequest(q.method, r.base+q.path, strings.NewReader(q.body))
	if q.body != "" {
		hr.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if q.user != "" {
		hr.SetBasicAuth(q.user, passwords[q.user])
	}
	resp, err := r.client.Do(hr)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}, err
}

// readRecovered polls a read through the gate until one succeeds, and
// returns how long after since that was.
func (r *faultRig) readRecovered(t *testing.T, since time.Time) time.Duration {
	t.Helper()
	var took time.Duration
	testutil.Eventually(t, "a read through the gate to succeed again", func() bool {
		got, err := r.tryDo(req{method: "GET", path: "/v2/keys/conftool"})
		took = time.Since(since)
		return err == nil && got.status == 200
	})
	return took
}

// recovered polls a write through the gate until one succeeds, and returns
// how long after since that was.
func (r *faultRig) recovered(t *testing.T, since time.Time, key string) time.Duration {
	t.Helper()
	var took time.Duration
	testutil.Eventually(t, "a write through the gate to succeed again", func() bool {
		got, err := r.tryDo(req{method: "PUT", path: "/v2/keys" + key, body: form("value", "after"), user: "conftool"})
		took = time.Since(since)
		return err == nil && (got.status == 200 || got.status == 201)
	})
	return took
}

// TestFaultLeaderKilledMidBurst: the leader, which the gate uses, is
// killed while writes stream through the gate. The gate moves to another
// member; no write is applied twice, none acknowledged is lost, and those
// in flight get an etcd-shaped error saying they may have been applied.
func TestFaultLeaderKilledMidBurst(t *testing.T) {
	r := newFaultRig(t, -1)
	leader := r.order[0]
	log := &writeLog{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go r.writer(fmt.Sprint("w", w), "/conftool/burst", log, stop, &wg)
	}
	testutil.Eventually(t, "the burst to be under way", func() bool {
		log.mu.Lock()
		defer log.mu.Unlock()
		return len(log.status) >= 100
	})
	killed := time.Now()
	r.cluster.KillMember(leader)
	readTook := r.readRecovered(t, killed)
	took := r.recovered(t, killed, "/conftool/after-kill")
	testutil.Eventually(t, "100 more writes", func() bool {
		log.mu.Lock()
		defer log.mu.Unlock()
		return len(log.status) >= 300
	})
	close(stop)
	wg.Wait()

	ok, failed, applied := r.checkNoWriteTwiceOrLost(t, "/conftool/burst", log)
	t.Logf("leader (member %d) killed mid-burst: reads served again after %v, writes after %v (etcd's election and its own request timeout); "+
		"%d acknowledged, %d failed (%d of those applied anyway), none applied twice or lost",
		leader, readTook.Round(time.Millisecond), took.Round(time.Millisecond), ok, failed, applied)
	if r.metric("confsync_gate_upstream_failovers_total") < 1 {
		t.Error("no failover counted")
	}
}

// TestFaultMemberInUseBlackholed: the member the gate uses hangs (it
// accepts connections and never answers). Reads move to the next member
// after the header timeout; the health probe gives up on the member
// without any request having to wait; a watch on it ends empty, and
// watched again through the gate it delivers from the next member.
func TestFaultMemberInUseBlackholed(t *testing.T) {
	r := newFaultRig(t, -1)
	set := r.cluster.Member(r.order[1]).Set(t, "/conftool/bh", "before")
	w := r.openWatch(r.watchClient(), "/conftool/bh", set.Node.ModifiedIndex+1)

	hung := time.Now()
	r.proxies[0].Blackhole()
	got, err := r.tryDo(req{method: "GET", path: "/v2/keys/conftool/bh"})
	readTook := time.Since(hung)
	if err != nil || got.status != 200 || !strings.Contains(got.body, `"value":"before"`) {
		t.Fatalf("read while the member in use hangs: %v %d %s", err, got.status, got.body)
	}
	// The watch on the hung member ends without an event...
	select {
	case b := <-w.body:
		if b != "" {
			t.Fatalf("the watch on the hung member delivered %q", b)
		}
	case <-time.After(time.Minute):
		t.Fatal("the watch on the hung member is still open a minute later")
	}
	watchTook := time.Since(hung)
	// ...and, watched again from the same index, delivers from the next member.
	w = r.openWatch(r.watchClient(), "/conftool/bh", set.Node.ModifiedIndex+1)
	if got := r.do(req{method: "PUT", path: "/v2/keys/conftool/bh", body: form("value", "after"), user: "conftool"}); got.status != 200 {
		t.Fatalf("write after the failover: %d %s", got.status, got.body)
	}
	if v := w.event(t); v != "after" {
		t.Errorf("the watch delivered %q", v)
	}
	t.Logf("member in use (%d) blackholed: a read waiting on it was answered by the next after %v; its watch ended after %v",
		r.order[0], readTook.Round(time.Millisecond), watchTook.Round(time.Millisecond))
	if !strings.Contains(r.logs.String(), "ending the watches on an upstream given up on") {
		t.Error("ending the hung member's watches not logged")
	}
	r.proxies[0].PassThrough()
}

// TestFaultPartitionedFollowerLags: the member the gate uses, a follower,
// is cut off from the others: it keeps answering reads with ever older
// data. etcd's /health fails on it once it has no leader; the gate then
// moves to a healthy member, reads are fresh again and the watch on the
// stale member resumes on the healthy one without missing the events.
func TestFaultPartitionedFollowerLags(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	follower := (c.Leader(t) + 1) % 3
	r := newFaultRigOn(t, c, follower)
	set := c.Member(follower).Set(t, "/conftool/lag", "0")
	w := r.openWatch(r.watchClient(), "/conftool/lag", set.Node.ModifiedIndex+1)

	cut := time.Now()
	c.Partition(follower)
	defer c.Heal(follower)
	var took time.Duration
	for i := 1; ; i++ {
		// Written straight to a healthy member: the stale one cannot know.
		c.Member(r.order[1]).Set(t, "/conftool/lag", fmt.Sprint(i))
		v, status := r.value("/conftool/lag")
		if status == 200 && v == fmt.Sprint(i) {
			took = time.Since(cut)
			break
		}
		if time.Since(cut) > time.Minute {
			t.Fatalf("reads through the gate still stale (%q) a minute after the partition", v)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The first event after the watch's index is delivered, whichever
	// member the watch ended up on.
	b := <-w.body
	if b == "" {
		w = r.openWatch(r.watchClient(), "/conftool/lag", set.Node.ModifiedIndex+1)
		b = <-w.body
	}
	var ev struct{ Node struct{ Value string } }
	if err := json.Unmarshal([]byte(b), &ev); err != nil || ev.Node.Value != "1" {
		t.Errorf("the watch delivered %q, want the first value written after it opened", b)
	}
	t.Logf("partitioned follower (member %d): reads through the gate fresh again after %v", follower, took.Round(time.Millisecond))
}

// newFaultRigOn is newFaultRig on an existing cluster.
func newFaultRigOn(t *testing.T, c *etcdtest.Cluster, first int) *faultRig {
	r := &faultRig{cluster: c, order: []int{first}}
	for i := range c.Size() {
		if i != first {
			r.order = append(r.order, i)
		}
	}
	var upstreams []string
	for _, m := range r.order {
		p := etcdtest.NewFaultProxy(t, c.URL(m))
		r.proxies = append(r.proxies, p)
		upstreams = append(upstreams, p.URL())
	}
	r.harness = newHarness(t, withConfig(func(cfg *gate.Config) { cfg.Upstreams = upstreams }))
	return r
}

// TestFaultRollingRestart: every member is restarted in turn, the one the
// gate uses first, while a writer and a watcher work through the gate.
// Every acknowledged write is in etcd once, and the watcher, following
// etcd's index through the gate, sees each of them exactly once.
func TestFaultRollingRestart(t *testing.T) {
	r := newFaultRig(t, -1)
	from := r.gateIndex() + 1 // before the first write
	log := &writeLog{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go r.writer("roll", "/conftool/roll", log, stop, &wg)

	seen := map[string]int{}
	var seenMu sync.Mutex
	watchDone := make(chan struct{})
	watchCtx, stopWatching := context.WithCancel(context.Background())
	defer stopWatching()
	watchLog := &testutil.SyncBuffer{}
	go func() {
		defer close(watchDone)
		wc := r.watchClient()
		for index := from; watchCtx.Err() == nil; {
			hr, _ := http.NewRequestWithContext(watchCtx, "GET", fmt.Sprintf("%s/v2/keys/conftool/roll?wait=true&recursive=true&waitIndex=%d", r.base, index), nil)
			resp, err := wc.Do(hr)
			if err != nil {
				fmt.Fprintf(watchLog, "%s watch %d: %v\n", time.Now().Format("15:04:05.000"), index, err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			fmt.Fprintf(watchLog, "%s watch %d: %d %d bytes %v\n", time.Now().Format("15:04:05.000"), index, resp.StatusCode, len(b), err)
			if err != nil || len(b) == 0 || resp.StatusCode != 200 {
				if resp.StatusCode == 400 || resp.StatusCode == 401 {
					t.Errorf("watch at %d: %d %s", index, resp.StatusCode, b)
					return
				}
				continue // ended without an event: watch again from the same index
			}
			var ev struct {
				Node struct {
					Key           string
					ModifiedIndex uint64
				}
			}
			if json.Unmarshal(b, &ev) != nil {
				continue
			}
			seenMu.Lock()
			seen[strings.TrimSuffix(ev.Node.Key[:strings.LastIndex(ev.Node.Key, "/")], "/")]++
			seenMu.Unlock()
			index = ev.Node.ModifiedIndex + 1
		}
	}()

	var took []string
	for _, m := range r.order {
		testutil.Eventually(t, "writes before the restart", func() bool {
			log.mu.Lock()
			defer log.mu.Unlock()
			return len(log.status) > 0
		})
		began := time.Now()
		r.cluster.StopMember(m)
		took = append(took, fmt.Sprintf("member %d: %v", m, r.recovered(t, began, "/conftool/roll-probe").Round(time.Millisecond)))
		r.cluster.RestartMember(t, m)
		r.cluster.Leader(t)
	}
	testutil.Eventually(t, "writes after the restarts", func() bool {
		return r.do(req{method: "PUT", path: "/v2/keys/conftool/roll-probe", body: form("value", "end"), user: "conftool"}).status == 200
	})
	close(stop)
	wg.Wait()
	ok, failed, applied := r.checkNoWriteTwiceOrLost(t, "/conftool/roll", log)

	// Every write in etcd reaches the watcher, once.
	root, _ := r.quorumGet("/conftool/roll")
	deadline := time.Now().Add(time.Minute)
	for {
		seenMu.Lock()
		var missing []string
		for _, n := range root.Nodes {
			if len(n.Nodes) > 0 && seen[n.Key] == 0 {
				missing = append(missing, fmt.Sprint(n.Key, "@", n.Nodes[0].ModifiedIndex))
			}
		}
		seenMu.Unlock()
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watcher missed %d writes: %v\nwatch log: %s\ngate log:\n%s", len(missing), missing[:min(5, len(missing))], watchLog.String(), r.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopWatching()
	<-watchDone
	seenMu.Lock()
	for key, n := range seen {
		if n > 1 {
			t.Errorf("the watcher saw %s %d times", key, n)
		}
	}
	seenMu.Unlock()
	t.Logf("rolling restart, writes served again after stopping %s; %d acknowledged, %d failed (%d applied anyway); the watcher saw every write once",
		strings.Join(took, ", "), ok, failed, applied)
}
