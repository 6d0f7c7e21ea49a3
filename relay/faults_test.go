package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	"github.com/confsync/confsync/relay"
	client "go.etcd.io/etcd/client/v2"
)

// The relay under the faults a three-member site has. Its clients are
// pybal-style collectors waiting on /fault with waitIndex; what they must
// never see is a counter going back, and what they must end with is the
// last value written.

// counterWriter writes /fault/n = 1, 2, 3... retrying each value until
// etcd takes it (writes fail while a leader is elected).
type counterWriter struct {
	last atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func startCounter(keys client.KeysAPI, gap time.Duration) *counterWriter {
	w := &counterWriter{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for n := 1; ; {
			select {
			case <-w.stop:
				return
			case <-time.After(gap):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := keys.Set(ctx, "/fault/n", strconv.Itoa(n), nil)
			cancel()
			if err == nil {
				w.last.Store(int64(n))
				n++
			}
		}
	}()
	return w
}

func (w *counterWriter) halt() int {
	close(w.stop)
	<-w.done
	return int(w.last.Load())
}

// counterSeen checks what each collector saw of /fault/n: never a value
// older than one seen before, and, for a collector that never had to
// re-read, every value from first to last with none left out. It returns
// the re-reads beyond each collector's first read.
func counterSeen(t *testing.T, cs *collectors, last int) (extraRereads int) {
	t.Helper()
	cs.waitFor(t, map[string]string{"/fault/n": strconv.Itoa(last)})
	for _, c := range cs.all {
		c.mu.Lock()
		var seen []int
		for _, ev := range c.events {
			if ev.Key() == "/fault/n" && ev.Node.Value != nil {
				n, _ := strconv.Atoi(*ev.Node.Value)
				seen = append(seen, n)
			}
		}
		rereads := c.rereadCount
		c.mu.Unlock()
		for i := 1; i < len(seen); i++ {
			if seen[i] < seen[i-1] {
				t.Fatalf("client %s saw /fault/n go back from %d to %d", c.id, seen[i-1], seen[i])
			}
			// The same value twice is a write retried after an election
			// that had taken it the first time.
			if rereads == 1 && seen[i] > seen[i-1]+1 {
				t.Errorf("client %s missed values between %d and %d without being told to re-read", c.id, seen[i-1], seen[i])
			}
		}
		extraRereads += rereads - 1
	}
	return extraRereads
}

// The leader dies in the middle of a stream of writes: the relay follows
// the cluster through the election, its clients miss nothing and never
// see an older value.
func TestRelaySurvivesTheLeaderKilledMidBurst(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	c.Client().Set(context.Background(), "/fault/n", "0", nil)
	r := startRelay(t, c.Endpoints(), "/fault")
	clients := startCollectors(t, r.URL, "/fault", 5)
	clients.waitFor(t, map[string]string{"/fault/n": "0"})
	w := startCounter(c.Client(), 5*time.Millisecond)
	testutil.Eventually(t, "the burst under way", func() bool { return w.last.Load() >= 30 })
	killed := time.Now()
	leader := c.KillLeader(t)
	testutil.Eventually(t, "writes again after the election", func() bool { return w.last.Load() >= 60 })
	last := w.halt()
	extra := counterSeen(t, clients, last)
	t.Logf("leader m%d killed: every client had the last of %d values %s later; %d re-reads", leader, last,
		time.Since(killed).Round(time.Millisecond), extra)
}

// The member the relay reads from hangs (connections accepted, nothing
// answered): the relay leaves it within its watch timeouts, and its
// clients get the change made meanwhile.
func TestRelayLeavesAHungMember(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	c.Client().Set(context.Background(), "/fault/n", "0", nil)
	proxies := map[string]*etcdtest.FaultProxy{}
	var urls []string
	for i := 0; i < c.Size(); i++ {
		p := etcdtest.NewFaultProxy(t, c.URL(i))
		proxies[p.URL()] = p
		urls = append(urls, p.URL())
	}
	metricsAddr := freeLoopbackAddr(t)
	// startRelay's 2s poll: a hung member shows within 2s and the 5s
	// header timeout.
	r := startRelay(t, urls, "/fault", func(c *relay.RunConfig) { c.MetricsAddr = metricsAddr })
	clients := startCollectors(t, r.URL, "/fault", 5)
	clients.waitFor(t, map[string]string{"/fault/n": "0"})
	used := relayStatus(t, metricsAddr).Watch.Endpoint
	proxies[used].Blackhole()
	cut := time.Now()
	c.Client().Set(context.Background(), "/fault/n", "1", nil)
	counterSeen(t, clients, 1)
	t.Logf("member in use hung: every client had the change %s later", time.Since(cut).Round(time.Millisecond))
	if now := relayStatus(t, metricsAddr).Watch.Endpoint; now == used {
		t.Fatalf("the relay still reads from the hung member %s", used)
	}
}

// A follower cut off from the others keeps serving its ageing data. When
// the member the relay used dies and only that follower is left to it,
// the relay keeps serving its newer copy rather than the follower's older
// one, and its clients never see a value go back.
func TestRelayNeverGoesBackToALaggingFollower(t *testing.T) {
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
	if a := get(c.URL(lagging) + "/v2/keys/fault/n"); a.status == http.StatusOK && strings.Contains(string(a.body), `"value":"20"`) {
		t.Fatal("the partitioned member is not behind")
	}
	r := startRelay(t, []string{c.URL(leader), c.URL(lagging)}, "/fault")
	clients := startCollectors(t, r.URL, "/fault", 5)
	clients.waitFor(t, map[string]string{"/fault/n": "20"})
	c.KillMember(leader)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if v := value(t, r.URL, "/fault/n"); v != "20" {
			t.Fatalf("the relay went back to %q from the lagging member", v)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.Heal(lagging)
	c.RestartMember(t, leader)
	if _, err := c.Client().Set(context.Background(), "/fault/n", "21", nil); err != nil {
		t.Fatal(err)
	}
	counterSeen(t, clients, 21)
}

// Every member restarts in turn while writes go on (a rolling upgrade):
// the relay follows, its clients miss nothing and never go back.
func TestRelayFollowsARollingRestart(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	c.Client().Set(context.Background(), "/fault/n", "0", nil)
	r := startRelay(t, c.Endpoints(), "/fault")
	clients := startCollectors(t, r.URL, "/fault", 5)
	clients.waitFor(t, map[string]string{"/fault/n": "0"})
	w := startCounter(c.Client(), 10*time.Millisecond)
	for i := 0; i < c.Size(); i++ {
		c.StopMember(i)
		c.RestartMember(t, i)
		before := w.last.Load()
		testutil.Eventually(t, fmt.Sprintf("writes after m%d restarted", i), func() bool { return w.last.Load() > before+5 })
	}
	last := w.halt()
	extra := counterSeen(t, clients, last)
	t.Logf("rolling restart: every client had all %d values; %d re-reads", last, extra)
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func relayStatus(t *testing.T, metricsAddr string) relay.Status {
	t.Helper()
	var st relay.Status
	testutil.Eventually(t, "the relay's /status", func() bool {
		a := get("http://" + metricsAddr + "/status")
		return a.status == http.StatusOK && json.Unmarshal(a.body, &st) == nil && st.Watch != nil
	})
	return st
}
