package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	client "go.etcd.io/etcd/client/v2"
)

// counterSite is an agent rendering one counter, /fault/n, into a file,
// with a check command that logs every version it lets through: the log
// is every file the agent ever put in place, in order.
type counterSite struct {
	dest, log string
}

func newCounterSite(t *testing.T) (*counterSite, string) {
	out := t.TempDir()
	s := &counterSite{dest: filepath.Join(out, "n"), log: filepath.Join(t.TempDir(), "versions")}
	dir := confdir(t, map[string]string{
		"conf.d/n.toml": "[template]\nsrc = \"n.tmpl\"\ndest = \"" + s.dest + "\"\nkeys = [\"/fault\"]\n" +
			"check_cmd = \"cat {{.src}} >> " + s.log + "; echo >> " + s.log + "\"\n",
		"templates/n.tmpl": `{{getv "/fault/n"}}`,
	})
	return s, dir
}

// versions is every value the agent wrote, in order.
func (s *counterSite) versions(t *testing.T) []int {
	raw, _ := os.ReadFile(s.log)
	var out []int
	for _, line := range strings.Fields(string(raw)) {
		n, err := strconv.Atoi(line)
		if err != nil {
			t.Fatalf("versions log holds %q", line)
		}
		out = append(out, n)
	}
	return out
}

// neverBack fails when the file ever went back to an older counter.
func (s *counterSite) neverBack(t *testing.T) {
	t.Helper()
	v := s.versions(t)
	for i := 1; i < len(v); i++ {
		if v[i] < v[i-1] {
			t.Fatalf("the file went back from %d to %d (versions %v)", v[i-1], v[i], v)
		}
	}
}

func (s *counterSite) shows(n int) func() bool {
	return func() bool {
		b, _ := os.ReadFile(s.dest)
		return string(b) == strconv.Itoa(n)
	}
}

// writer writes /fault/n = 1, 2, 3... through keys, retrying each value
// until etcd takes it (writes fail while a leader is elected).
type writer struct {
	keys client.KeysAPI
	last atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func startWriter(keys client.KeysAPI, gap time.Duration) *writer {
	w := &writer{keys: keys, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for n := 1; ; {
			select {
			case <-w.stop:
				return
			case <-time.After(gap):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := w.keys.Set(ctx, "/fault/n", strconv.Itoa(n), nil)
			cancel()
			if err == nil {
				w.last.Store(int64(n))
				n++
			}
		}
	}()
	return w
}

func (w *writer) halt() int {
	close(w.stop)
	<-w.done
	return int(w.last.Load())
}

// The leader dies in the middle of a stream of writes: the agent follows
// the new leader's cluster, misses nothing and never shows an older value.
func TestAgentSurvivesTheLeaderKilledMidBurst(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	c.Client().Set(context.Background(), "/fault/n", "0", nil)
	site, dir := newCounterSite(t)
	a := startAgent(t, agentConfig(t, dir, "", c.Endpoints()...))
	testutil.Eventually(t, "first render", site.shows(0))
	w := startWriter(c.Client(), 5*time.Millisecond)
	testutil.Eventually(t, "the burst under way", func() bool { return w.last.Load() >= 30 })
	killed := time.Now()
	leader := c.KillLeader(t)
	testutil.Eventually(t, "writes again after the election", func() bool { return w.last.Load() >= 60 })
	last := w.halt()
	testutil.Eventually(t, "the last value", site.shows(last))
	t.Logf("leader m%d killed; the agent had the last of %d values %s later", leader, last, time.Since(killed).Round(time.Millisecond))
	site.neverBack(t)
	if a.Status().Watch.Index == 0 {
		t.Fatal("no watch index")
	}
}

// The member the agent reads from is cut off (it accepts connections and
// never answers, a hung machine behind a load balancer): the agent leaves
// it within its watch timeouts and misses nothing.
func TestAgentLeavesAHungMember(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	c.Client().Set(context.Background(), "/fault/n", "0", nil)
	proxies := make([]*etcdtest.FaultProxy, 3)
	var urls []string
	for i := range proxies {
		proxies[i] = etcdtest.NewFaultProxy(t, c.URL(i))
		urls = append(urls, proxies[i].URL())
	}
	site, dir := newCounterSite(t)
	cfg := agentConfig(t, dir, "", urls...)
	// A quiet watch is registered again every PollTimeout (10s by default,
	// plus up to 20%), which is when a hung member shows: its answer does
	// not come within the 5s watch header timeout. Shortened here.
	cfg.Watch.PollTimeout = 2 * time.Second
	a := startAgent(t, cfg)
	testutil.Eventually(t, "first render", site.shows(0))
	used := -1
	for i, u := range urls {
		if u == a.Status().Watch.Endpoint {
			used = i
		}
	}
	proxies[used].Blackhole()
	cut := time.Now()
	c.Client().Set(context.Background(), "/fault/n", "1", nil)
	testutil.Eventually(t, "the change through another member", site.shows(1))
	t.Logf("member in use hung; the change arrived %s later", time.Since(cut).Round(time.Millisecond))
	if st := a.Status().Watch; st.Endpoint == urls[used] {
		t.Fatalf("still on the hung member: %+v", st)
	}
	site.neverBack(t)
}

// A follower cut off from the others keeps serving its ageing data. When
// the member the agent used dies and the only one left to it is that
// follower, the agent keeps its newer files instead of taking the
// follower's older state, and converges once the follower catches up.
func TestAgentNeverGoesBackToALaggingFollower(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	c.Client().Set(context.Background(), "/fault/n", "0", nil)
	leader := c.Leader(t)
	lagging := (leader + 1) % 3
	c.Partition(lagging)
	for n := 1; n <= 20; n++ {
		if _, err := c.Member(leader).Client().Set(context.Background(), "/fault/n", strconv.Itoa(n), nil); err != nil {
			t.Fatal(err)
		}
	}
	// Behind: an older value, or none at all when the partition came
	// before the member had the first write.
	if resp, err := c.Member(lagging).Client().Get(context.Background(), "/fault/n", nil); err == nil && resp.Node.Value == "20" {
		t.Fatal("the partitioned member is not behind")
	}
	site, dir := newCounterSite(t)
	startAgent(t, agentConfig(t, dir, "", c.URL(leader), c.URL(lagging)))
	testutil.Eventually(t, "the current value", site.shows(20))
	// The member in use dies; the lagging one is all the agent has left
	// (and, with two of three members unreachable, no quorum answers).
	c.KillMember(leader)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(site.dest); string(b) != "20" {
			t.Fatalf("the file went back to %q on the lagging member", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.Heal(lagging)
	c.RestartMember(t, leader)
	c.Client().Set(context.Background(), "/fault/n", "21", nil)
	testutil.Eventually(t, "the next value after healing", site.shows(21))
	site.neverBack(t)
}

// Every member restarts in turn while writes go on (a rolling upgrade):
// the agent follows, misses nothing and never goes back.
func TestAgentFollowsARollingRestart(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	c.Client().Set(context.Background(), "/fault/n", "0", nil)
	site, dir := newCounterSite(t)
	startAgent(t, agentConfig(t, dir, "", c.Endpoints()...))
	testutil.Eventually(t, "first render", site.shows(0))
	w := startWriter(c.Client(), 10*time.Millisecond)
	for i := 0; i < c.Size(); i++ {
		c.StopMember(i)
		c.RestartMember(t, i)
		before := w.last.Load()
		testutil.Eventually(t, fmt.Sprintf("writes after m%d restarted", i), func() bool { return w.last.Load() > before+5 })
	}
	last := w.halt()
	testutil.Eventually(t, "the last value", site.shows(last))
	site.neverBack(t)
}
