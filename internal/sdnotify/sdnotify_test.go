package sdnotify_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/sdnotify"
	"github.com/confsync/confsync/internal/sdnotify/sdnotifytest"
)

// What a daemon says reaches the socket systemd listens on, in order, with
// READY=1 and its status line in one datagram.
func TestReadyAndStatusReachTheSocket(t *testing.T) {
	sock := sdnotifytest.Listen(t)
	n := sdnotify.New()
	if !n.Enabled() {
		t.Fatal("not enabled with NOTIFY_SOCKET set")
	}
	mustNot(t, n.Status("rendering: 3/15 resources, waiting for etcd"))
	mustNot(t, n.Ready("15 resources rendered from etcd"))
	mustNot(t, n.Reloading("reloading conf.d"))
	mustNot(t, n.Ready("16 resources rendered from etcd"))
	mustNot(t, n.Stopping("stopping: waiting for 1 reload command"))
	want := []string{
		"STATUS=rendering: 3/15 resources, waiting for etcd",
		"READY=1\nSTATUS=15 resources rendered from etcd",
		"RELOADING=1\nSTATUS=reloading conf.d",
		"READY=1\nSTATUS=16 resources rendered from etcd",
		"STOPPING=1\nSTATUS=stopping: waiting for 1 reload command",
	}
	for _, w := range want {
		got, ok := sock.Next(time.Minute)
		if !ok || got != w {
			t.Fatalf("got %q, want %q", got, w)
		}
	}
}

// A loop may set its status on every turn; systemd hears only changes, and
// a status cannot smuggle in another assignment.
func TestStatusIsSentOnlyWhenItChanges(t *testing.T) {
	sock := sdnotifytest.Listen(t)
	n := sdnotify.New()
	for _, s := range []string{"a", "a", "a", "b", "b", "two\nlines"} {
		mustNot(t, n.Status(s))
	}
	for _, w := range []string{"STATUS=a", "STATUS=b", "STATUS=two lines"} {
		if got, ok := sock.Next(time.Minute); !ok || got != w {
			t.Fatalf("got %q, want %q", got, w)
		}
	}
	if got, ok := sock.Next(100 * time.Millisecond); ok {
		t.Fatalf("unexpected %q", got)
	}
}

// Outside systemd everything is a no-op, including on a nil Notifier, so
// daemons need no special case.
func TestOutsideSystemdNothingHappens(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	sdnotifytest.EnableWatchdog(t, time.Second)
	for _, n := range []*sdnotify.Notifier{sdnotify.New(), nil} {
		if n.Enabled() {
			t.Fatal("enabled without NOTIFY_SOCKET")
		}
		mustNot(t, n.Ready("x"))
		mustNot(t, n.Status("x"))
		w, err := n.Watchdog("loop", nil)
		if err != nil || w != nil {
			t.Fatalf("watchdog %v, %v; want none", w, err)
		}
		w.Alive() // nil-safe
		w.Run(context.Background())
	}
}

// WatchdogSec= set for another process (WATCHDOG_PID) or not at all means
// no watchdog; a malformed WATCHDOG_USEC is an error naming it.
func TestWatchdogOnlyWhenSystemdWatchesThisProcess(t *testing.T) {
	sdnotifytest.Listen(t)
	n := sdnotify.New()
	t.Setenv("WATCHDOG_USEC", "")
	if w, err := n.Watchdog("loop", nil); w != nil || err != nil {
		t.Fatalf("no WATCHDOG_USEC: %v %v", w, err)
	}
	t.Setenv("WATCHDOG_USEC", "2000000")
	t.Setenv("WATCHDOG_PID", "1")
	if w, err := n.Watchdog("loop", nil); w != nil || err != nil {
		t.Fatalf("another process's watchdog: %v %v", w, err)
	}
	t.Setenv("WATCHDOG_PID", "")
	if w, err := n.Watchdog("loop", nil); err != nil || w.Interval() != 2*time.Second {
		t.Fatalf("WATCHDOG_USEC=2000000: %v %v", w, err)
	}
	t.Setenv("WATCHDOG_USEC", "soon")
	if _, err := n.Watchdog("loop", nil); err == nil || !strings.Contains(err.Error(), "WATCHDOG_USEC") {
		t.Fatalf("malformed WATCHDOG_USEC: %v", err)
	}
}

// The watchdog is pinged while the watched loop turns; when the loop gets
// stuck (here: a request to a server that stopped answering, with no
// timeout) the pings stop, so systemd would kill and restart the daemon,
// and the status line says which loop is stuck. When the loop recovers,
// pings resume.
func TestWatchdogStopsWhenTheLoopIsStuck(t *testing.T) {
	sock := sdnotifytest.Listen(t)
	interval := time.Second
	sdnotifytest.EnableWatchdog(t, interval)

	hang, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
			<-release
		default:
		}
	}))
	defer srv.Close()
	defer unblock() // before srv.Close, which waits for the hanging request

	n := sdnotify.New()
	wd, err := n.Watchdog("watch loop", nil)
	if err != nil || wd == nil {
		t.Fatalf("watchdog: %v %v", wd, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go wd.Run(ctx)
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for ctx.Err() == nil {
			resp, err := http.Get(srv.URL) // no timeout: the hang this test plays
			if err == nil {
				resp.Body.Close()
			}
			wd.Alive()
			time.Sleep(10 * time.Millisecond)
		}
	}()

	for range 3 {
		sock.WaitFor(t, "WATCHDOG=1")
	}
	close(hang)
	seen := sock.WaitFor(t, "STATUS=")
	last := seen[len(seen)-1]
	if !strings.Contains(last, "stuck: watch loop made no progress") {
		t.Fatalf("status when stuck: %q", last)
	}
	// Stuck: no ping for two intervals, which is what makes systemd act.
	deadline := time.Now().Add(2 * interval)
	for time.Now().Before(deadline) {
		if m, ok := sock.Next(time.Until(deadline)); ok {
			t.Fatalf("%q sent while the loop is stuck", m)
		}
	}
	unblock()
	sock.WaitFor(t, "WATCHDOG=1")
	cancel()
	<-loopDone
}

func mustNot(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
