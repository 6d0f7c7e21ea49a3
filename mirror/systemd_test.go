package mirror

import (
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/sdnotify"
	"github.com/confsync/confsync/internal/sdnotify/sdnotifytest"
)

// Under systemd the mirror says READY=1 once it replicates, after its
// first copy (--reload), and feeds the watchdog while the source is away
// (retrying is the loop turning, not a hang).
func TestMirrorTellsSystemd(t *testing.T) {
	sock := sdnotifytest.Listen(t)
	sdnotifytest.EnableWatchdog(t, 4*time.Second)
	src, dst := etcdtest.New(t), etcdtest.New(t)
	last := src.Set(t, "/src/k", "v")
	cfg := baseConfig(t, src, dst)
	cfg.Notifier, cfg.Reload = sdnotify.New(), true
	startMirror(t, cfg)
	msgs := sock.WaitFor(t, "READY=1")
	if got := msgs[len(msgs)-1]; !strings.Contains(got, "streaming") {
		t.Fatalf("ready while %q", got)
	}
	v, err := dst.Client().Get(t.Context(), "/replica/src/k", nil)
	if err != nil || v.Node.Value != "v" || v.Index < last.Index {
		t.Fatalf("READY=1 before the copy: %v %v", v, err)
	}
	sock.WaitFor(t, "WATCHDOG=1")
	src.Stop()
	for i := 0; i < 3; i++ {
		sock.WaitFor(t, "WATCHDOG=1")
	}
}
