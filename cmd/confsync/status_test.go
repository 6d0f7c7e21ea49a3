package main

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/agent"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/gate"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	"github.com/confsync/confsync/mirror"
)

// confsync status shows a running agent for a person, with its failing
// resource and why, and exits as confsync check would.
func TestStatusOfAnAgent(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	dir, _ := writeConfdir(t, map[string]string{
		"conf.d/good.toml": "[template]\nsrc = \"t.tmpl\"\ndest = \"{{out}}/good\"\nkeys = [\"/pool\"]\n",
		"conf.d/bad.toml":  "[template]\nsrc = \"t.tmpl\"\ndest = \"{{out}}/bad\"\nkeys = [\"/pool\"]\ncheck_cmd = \"echo refused >&2; false\"\n",
		"templates/t.tmpl": `{{getv "/pool/a"}}`,
	})
	src, err := etcd.New(context.Background(), etcd.Config{Endpoints: []string{srv.URL()}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{Load: agent.LoadOptions{ConfDir: dir}, Source: src,
		Options: agent.Options{Logger: slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	web := httptest.NewServer(a.Handler())
	t.Cleanup(web.Close)
	testutil.Eventually(t, "the good resource rendered and the bad one's check failed", func() bool {
		var rendered, failed bool
		for _, r := range a.Status().Resources {
			rendered = rendered || r.Name == "good.toml" && r.Applied
			failed = failed || r.Name == "bad.toml" && r.LastErrorKind == "check"
		}
		return rendered && failed
	})
	res := runCmd(t, "status", web.URL+"/status")
	for _, want := range []string{"confsync agent", "watch", "/pool on " + srv.URL(), "2: 1 rendered, 1 failing",
		"FAIL bad.toml", "check", "refused", "CONFSYNC WARNING - 1 resources failing: bad.toml (check)"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, res.stdout)
		}
	}
	if res.code != checkWarning {
		t.Fatalf("exit %d, want %d as check gives", res.code, checkWarning)
	}
}

// A mirror and a gate are shown too, each judged on what matters for it.
func TestStatusOfAMirrorAndAGate(t *testing.T) {
	src, dst := etcdtest.New(t), etcdtest.New(t)
	src.Set(t, "/src/k", "v")
	m, err := mirror.New(mirror.Config{
		Source: etcd.Config{Endpoints: []string{src.URL()}}, Destination: etcd.Config{Endpoints: []string{dst.URL()}},
		SourcePrefix: "/src", DestinationPrefix: "/replica", Reload: true, PollTimeout: time.Second,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; m.Close() })
	mweb := httptest.NewServer(m.Handler())
	t.Cleanup(mweb.Close)
	testutil.Eventually(t, "the mirror streaming", func() bool { return m.Status().Phase == "streaming" })
	res := runCmd(t, "status", mweb.URL+"/status")
	for _, want := range []string{"confsync mirror", "streaming", "source", src.URL(), "/src", "/replica/src", "CONFSYNC OK - mirror streaming"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("mirror status lacks %q:\n%s", want, res.stdout)
		}
	}
	if res.code != checkOK {
		t.Errorf("mirror: exit %d", res.code)
	}

	g, err := gate.New(gate.Config{Upstreams: []string{dst.URL()}, ReadOnly: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	gweb := httptest.NewServer(g.MetricsHandler())
	t.Cleanup(gweb.Close)
	res = runCmd(t, "status", gweb.URL+"/status")
	if !strings.Contains(res.stdout, "read-only") || !strings.Contains(res.stdout, "which answers") || res.code != checkOK {
		t.Errorf("gate status (exit %d):\n%s", res.code, res.stdout)
	}
	dst.Stop()
	res = runCmd(t, "status", gweb.URL+"/status")
	if !strings.Contains(res.stdout, "does not answer") || res.code != checkCritical {
		t.Errorf("gate status with etcd down (exit %d):\n%s", res.code, res.stdout)
	}
	if res := runCmd(t, "status", "http://127.0.0.1:1/status"); res.code != checkUnknown {
		t.Errorf("nothing listening: exit %d", res.code)
	}
}

// A relay is judged on the age of the data it serves: OK while current,
// WARNING then CRITICAL as etcd stays away.
func TestStatusOfARelay(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/p/k", "v")
	addr, metrics := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		var out, errOut strings.Builder
		run(ctx, []string{"relay", "-listen", addr, "-metrics-addr", metrics, "-node", srv.URL(), "-prefix", "/p", "-log-level", "error"}, &out, &errOut)
	}()
	t.Cleanup(func() { cancel(); <-done })
	url := "http://" + metrics + "/status"
	var res runResult
	testutil.Eventually(t, "the relay reporting current data", func() bool {
		res = runCmd(t, "status", url)
		return res.code == checkOK
	})
	for _, want := range []string{"confsync relay", "data current", "watch", "/p on " + srv.URL(), "history", "watchers",
		"CONFSYNC OK - relay serving current data"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("relay status lacks %q:\n%s", want, res.stdout)
		}
	}
	srv.Stop()
	testutil.Eventually(t, "the relay judged stale", func() bool {
		res = runCmd(t, "status", "-warn-age", "1s", "-crit-age", "1h", url)
		return res.code == checkWarning
	})
	if !strings.Contains(res.stdout, "CONFSYNC WARNING - relay serving data") || !strings.Contains(res.stdout, "disconnected") {
		t.Errorf("stale relay status:\n%s", res.stdout)
	}
	testutil.Eventually(t, "the relay judged critical", func() bool {
		return runCmd(t, "status", "-warn-age", "1s", "-crit-age", "2s", url).code == checkCritical
	})
}
