package etcdtest_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	client "go.etcd.io/etcd/client/v2"
)

func TestProcessClusterSurvivesLeaderKill(t *testing.T) {
	c := etcdtest.NewProcessCluster(t, 3)
	if len(c.Endpoints()) != 3 || c.ClusterID(t) == "" {
		t.Fatalf("endpoints %v, cluster ID %q", c.Endpoints(), c.ClusterID(t))
	}
	kv := c.Client()
	if _, err := kv.Set(context.Background(), "/conftool/v1/a", "1", nil); err != nil {
		t.Fatal(err)
	}
	old := c.Leader(t)
	if c.Pid(old) == 0 {
		t.Fatal("no pid for a running member")
	}
	c.Kill(old)
	if c.Running(old) || c.Pid(old) != 0 {
		t.Fatalf("killed member still running (pid %d)", c.Pid(old))
	}
	next := c.Leader(t)
	if next == old {
		t.Fatalf("leader %d is still the killed member", next)
	}
	if _, err := kv.Set(context.Background(), "/conftool/v1/a", "2", nil); err != nil {
		t.Fatalf("write after the leader's death: %v", err)
	}

	c.Start(t, old)
	c.WaitHealthy(t)
	testutil.Eventually(t, "the restarted member to catch up", func() bool {
		return getLocal(c.URL(old), "/conftool/v1/a") == "2"
	})
}

func TestProcessStopRestartKeepsDataAndPorts(t *testing.T) {
	c := etcdtest.NewProcessCluster(t, 1)
	id, url := c.ClusterID(t), c.URL(0)
	if _, err := c.Client().Set(context.Background(), "/k", "v", nil); err != nil {
		t.Fatal(err)
	}
	c.Restart(t, 0)
	c.WaitHealthy(t)
	if c.ClusterID(t) != id || c.URL(0) != url {
		t.Fatalf("restart changed identity: %s %s -> %s %s", id, url, c.ClusterID(t), c.URL(0))
	}
	if got := getLocal(url, "/k"); got != "v" {
		t.Fatalf("after restart /k = %q", got)
	}
}

func TestProcessPausedMemberHangsUntilResumed(t *testing.T) {
	c := etcdtest.NewProcessCluster(t, 1)
	c.Pause(0)
	answered := make(chan error, 1)
	go func() {
		resp, err := http.Get(c.URL(0) + "/v2/keys/")
		if err == nil {
			resp.Body.Close()
		}
		answered <- err
	}()
	select {
	case err := <-answered:
		t.Fatalf("paused member answered (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	c.Resume(0)
	if err := <-answered; err != nil {
		t.Fatalf("request after resume: %v", err)
	}
}

func TestProcessPausedLeaderIsReplaced(t *testing.T) {
	c := etcdtest.NewProcessCluster(t, 3)
	old := c.Leader(t)
	c.Pause(old)
	next := old
	testutil.Eventually(t, "a new leader", func() bool { next = c.Leader(t); return next != old })
	kv := client.NewKeysAPI(mustClient(c.URL(next)))
	if _, err := kv.Set(context.Background(), "/k", "v", nil); err != nil {
		t.Fatalf("write with the old leader hung: %v", err)
	}
	c.Resume(old)
	c.WaitHealthy(t)
	testutil.Eventually(t, "the resumed member to catch up", func() bool { return getLocal(c.URL(old), "/k") == "v" })
}

func TestProcessWatcherCount(t *testing.T) {
	c := etcdtest.NewProcessCluster(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		req, _ := http.NewRequestWithContext(ctx, "GET", c.URL(0)+"/v2/keys/w?wait=true", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	testutil.Eventually(t, "one watcher", func() bool { return c.WatcherCount(t, 0) == 1 })
	cancel()
	<-watching
	testutil.Eventually(t, "no watcher", func() bool { return c.WatcherCount(t, 0) == 0 })
}

func TestProcessClusterMissingBinary(t *testing.T) {
	msg := fatalMessage(t, func(tb testing.TB) {
		etcdtest.NewProcessCluster(tb, 1, etcdtest.ProcessOptions{Binary: "/nonexistent/etcd"})
	})
	if !strings.Contains(msg, "/nonexistent/etcd") {
		t.Fatalf("message %q does not name the binary", msg)
	}
}

// getLocal reads key from the member at url alone (no quorum read), the
// value that member holds now, or "" when it does not answer.
func getLocal(url, key string) string {
	kv := client.NewKeysAPI(mustClient(url))
	resp, err := kv.Get(context.Background(), key, &client.GetOptions{Quorum: false})
	if err != nil {
		return ""
	}
	return resp.Node.Value
}

func mustClient(url string) client.Client {
	c, err := client.New(client.Config{Endpoints: []string{url}, HeaderTimeoutPerRequest: 10 * time.Second})
	if err != nil {
		panic(err)
	}
	return c
}

// fatalTB records the first Fatal of a harness call instead of failing.
type fatalTB struct {
	testing.TB
	mu      sync.Mutex
	msg     string
	cleanup []func()
}

func (f *fatalTB) Helper()                   { f.TB.Helper() }
func (f *fatalTB) Cleanup(fn func())         { f.cleanup = append(f.cleanup, fn) }
func (f *fatalTB) Fatal(args ...any)         { f.fail(fmt.Sprint(args...)) }
func (f *fatalTB) Fatalf(s string, a ...any) { f.fail(fmt.Sprintf(s, a...)) }
func (f *fatalTB) fail(msg string) {
	f.mu.Lock()
	f.msg = msg
	f.mu.Unlock()
	runtime.Goexit()
}

// fatalMessage runs fn with a TB that records Fatal instead of failing t,
// and returns what fn died of ("" if it returned).
func fatalMessage(t *testing.T, fn func(testing.TB)) string {
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	for i := len(f.cleanup) - 1; i >= 0; i-- {
		f.cleanup[i]()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.msg
}
