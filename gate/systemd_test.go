package gate_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/sdnotify"
	"github.com/confsync/confsync/internal/sdnotify/sdnotifytest"
	"github.com/confsync/confsync/internal/testutil"
)

// Under systemd the gate says READY=1 once it listens and has checked its
// upstream, keeps its status current, and feeds the watchdog from its
// upstream checks, which go on while etcd is down.
func TestGateTellsSystemd(t *testing.T) {
	sock := sdnotifytest.Listen(t)
	sdnotifytest.EnableWatchdog(t, 4*time.Second)
	srv := etcdtest.New(t)
	logs := &testutil.SyncBuffer{}
	cfg := gate.Config{Listen: "127.0.0.1:0", Upstreams: []string{srv.URL()},
		ReadOnly: true, Notifier: sdnotify.New(),
		Logger: slog.New(slog.NewTextHandler(logs, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gate.Run(ctx, cfg, nil) }()
	t.Cleanup(func() { cancel(); <-done })
	msgs := sock.WaitFor(t, "READY=1")
	if last := msgs[len(msgs)-1]; !strings.Contains(last, "serving read-only; upstream "+srv.URL()+" healthy") {
		t.Fatalf("ready with status %q", last)
	}
	sock.WaitFor(t, "WATCHDOG=1")
	srv.Stop()
	msgs = sock.WaitFor(t, "STATUS=")
	for !strings.Contains(msgs[len(msgs)-1], "unhealthy") {
		msgs = sock.WaitFor(t, "STATUS=")
	}
	// etcd being away is not the gate being stuck: pings go on.
	sock.WaitFor(t, "WATCHDOG=1")
}
