package relay_test

import (
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/sdnotify"
	"github.com/confsync/confsync/internal/sdnotify/sdnotifytest"
	"github.com/confsync/confsync/relay"
)

// Under systemd the relay says READY=1 once it has data to serve, and
// feeds the watchdog from answers to its own /health, which go on while
// etcd is away.
func TestRelayTellsSystemd(t *testing.T) {
	sock := sdnotifytest.Listen(t)
	sdnotifytest.EnableWatchdog(t, 4*time.Second)
	srv := etcdtest.New(t)
	srv.Set(t, "/site/a", "1")
	startRelay(t, []string{srv.URL()}, "/site", func(cfg *relay.RunConfig) { cfg.Notifier = sdnotify.New() })
	msgs := sock.WaitFor(t, "READY=1")
	if last := msgs[len(msgs)-1]; !strings.Contains(last, "serving /site at index") {
		t.Fatalf("ready with %q", last)
	}
	sock.WaitFor(t, "WATCHDOG=1")
	srv.Stop()
	for i := 0; i < 3; i++ {
		sock.WaitFor(t, "WATCHDOG=1")
	}
}
