package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/sdnotify"
	"github.com/confsync/confsync/internal/sdnotify/sdnotifytest"
)

// Started while etcd is away and without a cache, the agent tells systemd
// nothing but its status; READY=1 comes once etcd is back and every file
// has been rendered.
func TestReadyOnlyAfterEveryResourceRendered(t *testing.T) {
	sock := sdnotifytest.Listen(t)
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	srv.Stop()
	out := t.TempDir()
	dir := confdir(t, map[string]string{
		"conf.d/one.toml":      resourceToml(out + "/one"),
		"conf.d/two.toml":      resourceToml(out + "/two"),
		"templates/hosts.tmpl": hostsTemplate,
	})
	cfg := agentConfig(t, dir, "", srv.URL())
	cfg.Notifier = sdnotify.New()
	startAgent(t, cfg)
	// A status line comes; READY=1 must not, neither with it nor after.
	m, ok := sock.Next(time.Minute)
	if !ok || sdnotifytest.Has(m, "READY=1") || !strings.Contains(m, "0/2 resources rendered") {
		t.Fatalf("with etcd away and nothing rendered, systemd heard %q", m)
	}
	if m, ok := sock.Next(6 * time.Second); ok && sdnotifytest.Has(m, "READY=1") {
		t.Fatalf("READY=1 with etcd away and nothing rendered: %q", m)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	msgs := sock.WaitFor(t, "READY=1")
	for _, f := range []string{"one", "two"} {
		if b, err := os.ReadFile(filepath.Join(out, f)); err != nil || string(b) != "a=1\n" {
			t.Fatalf("READY=1 (%q) before %s was rendered: %q %v", msgs[len(msgs)-1], f, b, err)
		}
	}
	if last := msgs[len(msgs)-1]; !strings.Contains(last, "2/2 resources rendered") {
		t.Fatalf("ready status %q", last)
	}
}

// The watchdog is fed by probes through the render queue: when every
// worker is stuck (here in a check command that hangs), pings stop.
func TestWatchdogStopsWhenTheRenderQueueIsStuck(t *testing.T) {
	sock := sdnotifytest.Listen(t)
	sdnotifytest.EnableWatchdog(t, 2*time.Second)
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	out := t.TempDir()
	gate := filepath.Join(t.TempDir(), "hang")
	dir := confdir(t, map[string]string{
		"conf.d/hosts.toml": resourceToml(out+"/hosts",
			`check_cmd = "while [ -e `+gate+` ]; do sleep 0.05; done"`, `check_cmd_timeout = "10m"`),
		"templates/hosts.tmpl": hostsTemplate,
	})
	cfg := agentConfig(t, dir, "", srv.URL())
	cfg.Notifier, cfg.Workers = sdnotify.New(), 1
	startAgent(t, cfg)
	sock.WaitFor(t, "READY=1")
	sock.WaitFor(t, "WATCHDOG=1")
	// Hang the only worker in the check of the next render.
	os.WriteFile(gate, nil, 0o644)
	srv.Set(t, "/pool/a", "2")
	msgs := sock.WaitFor(t, "STATUS=")
	for !strings.Contains(msgs[len(msgs)-1], "stuck") {
		msgs = sock.WaitFor(t, "STATUS=")
	}
	// No ping for a whole watchdog interval now.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if m, ok := sock.Next(time.Until(deadline)); ok && sdnotifytest.Has(m, "WATCHDOG=1") {
			t.Fatalf("watchdog pinged while the queue was stuck: %q", m)
		}
	}
	// Released, the queue turns and pings resume.
	os.Remove(gate)
	sock.WaitFor(t, "WATCHDOG=1")
}
