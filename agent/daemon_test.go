package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/file"
	"github.com/confsync/confsync/backends/keyspace"
	"github.com/confsync/confsync/backends/watch"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
)

func fileIs(path, want string) func() bool {
	return func() bool {
		b, err := os.ReadFile(path)
		return err == nil && string(b) == want
	}
}

const hostsTemplate = `{{range gets "/pool/*"}}{{base .Key}}={{.Value}}
{{end}}`

// testAgent is an agent running in the test's process.
type testAgent struct {
	*Agent
	t      *testing.T
	out    string
	cancel context.CancelFunc
	done   chan struct{}
	logs   *testutil.SyncBuffer
}

// agentConfig is a daemon over urls with fast retries.
func agentConfig(t *testing.T, dir, stateDir string, urls ...string) Config {
	t.Helper()
	src, err := etcd.New(context.Background(), etcd.Config{Endpoints: urls})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Close)
	return Config{
		Load:        LoadOptions{ConfDir: dir},
		Source:      src,
		StateDir:    stateDir,
		CacheSource: "etcd:" + strings.Join(urls, ","),
		RetryMin:    50 * time.Millisecond,
		RetryMax:    500 * time.Millisecond,
		Grace:       10 * time.Second,
		Watch:       watch.Config{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond},
	}
}

func startAgent(t *testing.T, cfg Config) *testAgent {
	t.Helper()
	logs := &testutil.SyncBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ta := &testAgent{Agent: a, t: t, cancel: cancel, done: make(chan struct{}), logs: logs}
	go func() {
		defer close(ta.done)
		a.Run(ctx)
	}()
	t.Cleanup(ta.stop)
	return ta
}

func (ta *testAgent) stop() {
	ta.cancel()
	<-ta.done
	if ta.t.Failed() {
		ta.t.Logf("agent log:\n%s", ta.logs.String())
	}
}

func (ta *testAgent) resource(name string) ResourceStatus {
	for _, r := range ta.Status().Resources {
		if r.Name == name {
			return r
		}
	}
	ta.t.Fatalf("no resource %s", name)
	return ResourceStatus{}
}

func resourceToml(dest string, extra ...string) string {
	return "[template]\nsrc = \"hosts.tmpl\"\ndest = \"" + dest + "\"\nkeys = [\"/pool\"]\n" + strings.Join(extra, "\n") + "\n"
}

func TestRendersAndFollowsChanges(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	out := t.TempDir()
	dir := confdir(t, map[string]string{
		"conf.d/hosts.toml":    resourceToml(out + "/hosts"),
		"templates/hosts.tmpl": hostsTemplate,
	})
	a := startAgent(t, agentConfig(t, dir, "", srv.URL()))
	testutil.Eventually(t, "first render", fileIs(out+"/hosts", "a=1\n"))
	srv.Set(t, "/pool/b", "2")
	testutil.Eventually(t, "the new key", fileIs(out+"/hosts", "a=1\nb=2\n"))
	srv.Delete(t, "/pool/a")
	testutil.Eventually(t, "the deletion", fileIs(out+"/hosts", "b=2\n"))
	testutil.Eventually(t, "readiness", func() bool { return a.Status().Ready })
}

// The number of long polls to etcd is the number of roots, not of
// resources, and an event re-renders only the resources it concerns.
func TestOneWatchForAllRootsAndOnlyAffectedResourcesRender(t *testing.T) {
	srv := etcdtest.New(t)
	for i := 0; i < 10; i++ {
		srv.Set(t, fmt.Sprintf("/site/pools/p%d/h", i), "x")
	}
	proxy := etcdtest.NewProxy(t, srv.URL())
	out := t.TempDir()
	files := map[string]string{"templates/t.tmpl": `{{range gets "/*"}}{{.Value}}{{end}}`}
	for i := 0; i < 30; i++ {
		files[fmt.Sprintf("conf.d/r%02d.toml", i)] = fmt.Sprintf("[template]\nsrc = \"t.tmpl\"\ndest = \"%s/r%02d\"\nprefix = \"/site/pools/p%d\"\nkeys = [\"/\"]\n", out, i, i%10)
	}
	dir := confdir(t, files)
	cfg := agentConfig(t, dir, "", proxy.URL())
	cfg.Load.Prefix = ""
	// Three resources per pool; the resources' keys cover the pools, so
	// the roots are the ten pools, all followed by one watch of /site/pools.
	a := startAgent(t, cfg)
	testutil.Eventually(t, "all rendered", func() bool { return a.Status().Ready })
	testutil.Eventually(t, "one watch", func() bool { return proxy.OpenWatches() == 1 })
	if st := a.Status(); len(st.Roots) != 10 || st.Watch.Prefix != "/site/pools" {
		t.Fatalf("%d roots, watch on %q; want 10 roots under one watch of /site/pools", len(st.Roots), st.Watch.Prefix)
	}
	// The first live event moves the watch from long polls to a stream,
	// through a proving watch the agent ends before the stream starts;
	// the proxy counts that watch until its handler notices, which on a
	// loaded machine can be after the stream arrived. Let it happen
	// before counting, on a key under the watch that no resource reads.
	srv.Set(t, "/site/pools/unread", "x")
	testutil.Eventually(t, "the watch streaming", func() bool {
		return a.Status().Watch.Mode == "stream" && proxy.OpenWatches() == 1
	})
	proxy.Reset()
	before := map[string]int{}
	for _, r := range a.Status().Resources {
		before[r.Name] = r.Renders
	}
	srv.Set(t, "/site/pools/p3/h", "changed")
	for _, name := range []string{"r03", "r13", "r23"} {
		testutil.Eventually(t, name+" to change", fileIs(out+"/"+name, "changed"))
		testutil.Eventually(t, name+" to be counted", func() bool { return a.resource(name+".toml").Renders > before[name+".toml"] })
	}
	for _, r := range a.Status().Resources {
		grew := r.Renders - before[r.Name]
		affected := r.Name == "r03.toml" || r.Name == "r13.toml" || r.Name == "r23.toml"
		if affected && grew != 1 || !affected && grew != 0 {
			t.Errorf("%s rendered %d more times", r.Name, grew)
		}
	}
	if n := proxy.MaxOpenWatches(); n > 1 {
		t.Errorf("%d watches at once for 10 roots", n)
	}
	if n := proxy.Count(func(r etcdtest.Request) bool { return !r.Watch() }); n != 0 {
		t.Errorf("%d reads besides the watches after an event", n)
	}
}

func TestNoUpdateMissed(t *testing.T) {
	srv := etcdtest.New(t)
	proxy := etcdtest.NewProxy(t, srv.URL())
	out := t.TempDir()
	dir := confdir(t, map[string]string{
		"conf.d/hosts.toml":    resourceToml(out + "/hosts"),
		"templates/hosts.tmpl": hostsTemplate,
	})
	a := startAgent(t, agentConfig(t, dir, "", proxy.URL()))
	testutil.Eventually(t, "first render", fileIs(out+"/hosts", ""))

	// A burst.
	want := map[string]string{}
	for i := 0; i < 1000; i++ {
		k := fmt.Sprintf("h%02d", i%25)
		want[k] = fmt.Sprint(i)
		srv.Set(t, "/pool/"+k, want[k])
	}
	expect := render(want)
	testutil.Eventually(t, "the burst's final state", fileIs(out+"/hosts", expect))
	writes := a.resource("hosts.toml").Writes
	t.Logf("1000 writes gave %d file rewrites", writes)

	// A forced 401: cut the agent off while history moves on.
	proxy.SetDown(true)
	proxy.CloseClientConnections()
	srv.Set(t, "/pool/h00", "during-outage")
	for i := 0; i < 1100; i++ {
		srv.Set(t, "/elsewhere", fmt.Sprint(i))
	}
	proxy.SetDown(false)
	want["h00"] = "during-outage"
	testutil.Eventually(t, "the change made during the cut", fileIs(out+"/hosts", render(want)))

	// An etcd restart.
	srv.Stop()
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	srv.Set(t, "/pool/h01", "after-restart")
	want["h01"] = "after-restart"
	testutil.Eventually(t, "the change after the restart", fileIs(out+"/hosts", render(want)))
}

func render(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, m[k])
	}
	return b.String()
}

// The whole outage story: etcd goes away (files stay, staleness shows);
// the agent restarts while it is away (files come from the cache); etcd
// returns (the agent converges without a restart).
func TestOutageAndCache(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	out, state := t.TempDir(), t.TempDir()
	dir := confdir(t, map[string]string{
		"conf.d/hosts.toml":    resourceToml(out + "/hosts"),
		"templates/hosts.tmpl": hostsTemplate,
	})
	cfg := agentConfig(t, dir, state, srv.URL())
	a := startAgent(t, cfg)
	testutil.Eventually(t, "first render", fileIs(out+"/hosts", "a=1\n"))
	testutil.Eventually(t, "the cache", func() bool { _, err := os.Stat(filepath.Join(state, "cache.json")); return err == nil })

	srv.Stop()
	testutil.Eventually(t, "staleness to show", func() bool {
		s := a.Status()
		return !s.BackendUp && len(s.Roots) == 1 && s.Roots[0].AgeSeconds > 0
	})
	if !fileIs(out+"/hosts", "a=1\n")() {
		t.Fatal("file changed while etcd was down")
	}
	a.stop()

	// Restart during the outage, with the destination damaged meanwhile.
	os.WriteFile(out+"/hosts", []byte("garbage\n"), 0o644)
	b := startAgent(t, cfg)
	testutil.Eventually(t, "render from cache", fileIs(out+"/hosts", "a=1\n"))
	testutil.Eventually(t, "readiness from cache", func() bool { return b.Status().Ready })
	st := b.Status()
	if st.BackendUp || !st.Roots[0].FromCache {
		t.Fatalf("status does not report stale cached data: %+v", st.Roots)
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	srv.Set(t, "/pool/b", "2")
	testutil.Eventually(t, "convergence after etcd returns", fileIs(out+"/hosts", "a=1\nb=2\n"))
	testutil.Eventually(t, "fresh status", func() bool {
		s := b.Status()
		return s.BackendUp && !s.Roots[0].FromCache && s.Roots[0].AgeSeconds == 0
	})
}

// servesAll stands for what agent -serve attaches: a Listener of the
// whole copy. What it does with the changes is the relay's business.
type servesAll struct{}

func (servesAll) Reset(watch.Copy, string)           {}
func (servesAll) Event(*keyspace.Space, *etcd.Event) {}
func (servesAll) Progress(*keyspace.Space)           {}

// siteAgent runs an agent watching /site whose one resource reads
// /site/pool (/site/pool/a=1), beside a key no resource reads,
// /site/other/x=1. It returns once the file and the first cache are in
// place, with a way to read x from the cache.
func siteAgent(t *testing.T, listener watch.Listener) (srv *etcdtest.Server, a *testAgent, hosts string, cachedX func() string) {
	t.Helper()
	srv = etcdtest.New(t)
	srv.Set(t, "/site/pool/a", "1")
	srv.Set(t, "/site/other/x", "1")
	out, state := t.TempDir(), t.TempDir()
	hosts = out + "/hosts"
	dir := confdir(t, map[string]string{
		"conf.d/hosts.toml":    strings.Replace(resourceToml(hosts), `"/pool"`, `"/site/pool"`, 1),
		"templates/hosts.tmpl": strings.Replace(hostsTemplate, "/pool/*", "/site/pool/*", 1),
	})
	cfg := agentConfig(t, dir, state, srv.URL())
	cfg.Watch.Prefix, cfg.Watch.Listener = "/site", listener
	a = startAgent(t, cfg)
	testutil.Eventually(t, "first render", fileIs(hosts, "a=1\n"))
	cache := &watch.Cache{Path: filepath.Join(state, "cache.json"), Source: cfg.CacheSource}
	cachedX = func() string {
		c, err := cache.Load()
		if err != nil || c == nil {
			return ""
		}
		if n := c.Space.Get("/site/other/x"); n != nil {
			return n.Value()
		}
		return ""
	}
	testutil.Eventually(t, "the first cache", func() bool { return cachedX() == "1" })
	return srv, a, hosts, cachedX
}

// Events under the watched prefix that no resource reads cost no render
// and no disk write.
func TestUnreadEventsCostNoRenderAndNoWrite(t *testing.T) {
	srv, a, hosts, cachedX := siteAgent(t, nil)
	renders := a.resource("hosts.toml").Renders
	for i := 2; i <= 20; i++ {
		srv.Set(t, "/site/other/x", strconv.Itoa(i))
	}
	testutil.Eventually(t, "the agent's copy to have the last unread event", func() bool {
		n := a.watcher.Copy().Space.Get("/site/other/x")
		return n != nil && n.Value() == "20"
	})
	a.saveCache() // what the once-a-second save would do now
	if x := cachedX(); x != "1" {
		t.Fatalf("the cache was rewritten for events no resource reads (x=%q in it)", x)
	}
	// Events are handled in order: a render the unread events had caused
	// would come before the one this change causes.
	srv.Set(t, "/site/pool/a", "2")
	testutil.Eventually(t, "the read change", fileIs(hosts, "a=2\n"))
	testutil.Eventually(t, "the render counted", func() bool { return a.resource("hosts.toml").Renders > renders })
	if got := a.resource("hosts.toml").Renders; got != renders+1 {
		t.Fatalf("%d renders for 19 unread events and one read change, want 1", got-renders)
	}
}

// An agent that serves its copy (-serve) persists changes no resource
// reads too: after a restart during an outage it serves those keys, and
// they must not be older than what it served before.
func TestServedCopyIsCachedWhateverTheResourcesRead(t *testing.T) {
	srv, _, _, cachedX := siteAgent(t, servesAll{})
	srv.Set(t, "/site/other/x", "2")
	testutil.Eventually(t, "the unread change in the cache", func() bool { return cachedX() == "2" })
}

func TestCorruptOrForeignCacheIsIgnoredWithAWarning(t *testing.T) {
	srv := etcdtest.New(t)
	url := srv.URL()
	srv.Stop()
	out, state := t.TempDir(), t.TempDir()
	dir := confdir(t, map[string]string{
		"conf.d/hosts.toml":    resourceToml(out + "/hosts"),
		"templates/hosts.tmpl": hostsTemplate,
	})
	os.WriteFile(filepath.Join(state, "cache.json"), []byte(`{"format":1,"source":"etcd:http://other:2379","roots":{"/pool":{"values":{"/pool/x":"1"}}}}`), 0o600)
	a := startAgent(t, agentConfig(t, dir, state, url))
	testutil.Eventually(t, "a warning", func() bool { return strings.Contains(a.logs.String(), "cache not used") })
	if _, err := os.Stat(out + "/hosts"); err == nil {
		t.Fatal("rendered from another cluster's cache")
	}
	a.stop()
	os.WriteFile(filepath.Join(state, "cache.json"), []byte("{not json"), 0o600)
	b := startAgent(t, agentConfig(t, dir, state, url))
	testutil.Eventually(t, "a warning", func() bool { return strings.Contains(b.logs.String(), "corrupt") })
}

func TestFailedCheckKeepsOldFileAndIsRetried(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	out := t.TempDir()
	gate := filepath.Join(out, "check-passes")
	os.WriteFile(gate, nil, 0o644)
	dir := confdir(t, map[string]string{
		"conf.d/hosts.toml":    resourceToml(out+"/hosts", `check_cmd = "test -e `+gate+`"`),
		"templates/hosts.tmpl": hostsTemplate,
	})
	a := startAgent(t, agentConfig(t, dir, "", srv.URL()))
	testutil.Eventually(t, "first render", fileIs(out+"/hosts", "a=1\n"))
	os.Remove(gate)
	srv.Set(t, "/pool/a", "2")
	testutil.Eventually(t, "failures to be retried", func() bool { return a.resource("hosts.toml").Failures >= 3 })
	if !fileIs(out+"/hosts", "a=1\n")() {
		t.Fatal("a failed check replaced the file")
	}
	if r := a.resource("hosts.toml"); r.Healthy || r.LastErrorKind != "check" {
		t.Fatalf("status %+v", r)
	}
	os.WriteFile(gate, nil, 0o644)
	testutil.Eventually(t, "the retry to succeed", fileIs(out+"/hosts", "a=2\n"))
	testutil.Eventually(t, "health", func() bool { return a.resource("hosts.toml").Healthy })
	assertNoStage(t, out)
}

func TestFailedReloadIsRetriedAndRunsOncePerGroup(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	out := t.TempDir()
	gate := filepath.Join(out, "reload-works")
	reload := fmt.Sprintf(`reload_cmd = "test -e %s && echo reload >> %s/reloads"`, gate, out)
	dir := confdir(t, map[string]string{
		"conf.d/one.toml":      resourceToml(out+"/one", reload),
		"conf.d/two.toml":      resourceToml(out+"/two", reload),
		"templates/hosts.tmpl": hostsTemplate,
	})
	a := startAgent(t, agentConfig(t, dir, "", srv.URL()))
	testutil.Eventually(t, "files written", func() bool { return fileIs(out+"/one", "a=1\n")() && fileIs(out+"/two", "a=1\n")() })
	testutil.Eventually(t, "reload retried", func() bool { return a.resource("one.toml").Failures >= 3 })
	if !a.resource("one.toml").PendingReload {
		t.Fatal("failed reload not pending")
	}
	os.WriteFile(gate, nil, 0o644)
	testutil.Eventually(t, "the reload to succeed", func() bool {
		r := a.resource("one.toml")
		return r.Healthy && !r.PendingReload
	})
	if got, _ := os.ReadFile(out + "/reloads"); string(got) != "reload\n" {
		t.Fatalf("two resources sharing a reload command reloaded %q", got)
	}
	// A change to both: one reload.
	srv.Set(t, "/pool/a", "2")
	testutil.Eventually(t, "second reload", fileIs(out+"/reloads", "reload\nreload\n"))
}

func TestHungReloadIsKilledAtItsTimeout(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	out := t.TempDir()
	dir := confdir(t, map[string]string{
		"conf.d/hosts.toml":    resourceToml(out+"/hosts", `reload_cmd = "sleep 600"`, `reload_cmd_timeout = "300ms"`),
		"templates/hosts.tmpl": hostsTemplate,
	})
	a := startAgent(t, agentConfig(t, dir, "", srv.URL()))
	testutil.Eventually(t, "a timeout", func() bool {
		return strings.Contains(a.resource("hosts.toml").LastError, "timeout")
	})
}

func TestBrokenResourceFileDoesNotStopTheOthers(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	out := t.TempDir()
	dir := confdir(t, map[string]string{
		"conf.d/good.toml":     resourceToml(out + "/good"),
		"conf.d/bad.toml":      resourceToml(out+"/bad", `mode = "9"`),
		"templates/hosts.tmpl": hostsTemplate,
	})
	a := startAgent(t, agentConfig(t, dir, "", srv.URL()))
	testutil.Eventually(t, "the good resource", fileIs(out+"/good", "a=1\n"))
	st := a.Status()
	if len(st.FailedFiles) != 1 || !strings.Contains(st.FailedFiles[0].Error, "mode") {
		t.Fatalf("failed files %+v", st.FailedFiles)
	}
	// Fix it: the fsnotify watch reloads it.
	os.WriteFile(filepath.Join(dir, "conf.d/bad.toml"), []byte(resourceToml(out+"/bad")), 0o644)
	testutil.Eventually(t, "the fixed resource", fileIs(out+"/bad", "a=1\n"))
	// Break the good one: its previous version keeps running, with the
	// error reported.
	os.WriteFile(filepath.Join(dir, "conf.d/good.toml"), []byte("[template]\nsrc = 1\n"), 0o644)
	testutil.Eventually(t, "the config error", func() bool { return a.resource("good.toml").ConfigError != "" })
	srv.Set(t, "/pool/a", "2")
	testutil.Eventually(t, "the old version to keep rendering", fileIs(out+"/good", "a=2\n"))
}

func TestHotReloadAddsResourcesAndRoots(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	srv.Set(t, "/other/x", "y")
	out := t.TempDir()
	dir := confdir(t, map[string]string{
		"conf.d/hosts.toml":    resourceToml(out + "/hosts"),
		"templates/hosts.tmpl": hostsTemplate,
	})
	a := startAgent(t, agentConfig(t, dir, "", srv.URL()))
	testutil.Eventually(t, "first render", fileIs(out+"/hosts", "a=1\n"))
	os.WriteFile(filepath.Join(dir, "templates/other.tmpl"), []byte(`{{getv "/other/x"}}`), 0o644)
	os.WriteFile(filepath.Join(dir, "conf.d/other.toml"), []byte("[template]\nsrc = \"other.tmpl\"\ndest = \""+out+"/other\"\nkeys = [\"/other\"]\n"), 0o644)
	testutil.Eventually(t, "the new resource", fileIs(out+"/other", "y"))
	// A template edit re-renders.
	os.WriteFile(filepath.Join(dir, "templates/other.tmpl"), []byte(`x={{getv "/other/x"}}`), 0o644)
	testutil.Eventually(t, "the edited template", fileIs(out+"/other", "x=y"))
	// SIGHUP's path, without a file change, is harmless.
	a.Reload()
	if n := len(a.watcher.Roots()); n != 2 {
		t.Fatalf("%d roots watched, want 2", n)
	}
}

func TestQuiescenceSettlesABurst(t *testing.T) {
	srv := etcdtest.New(t)
	out := t.TempDir()
	dir := confdir(t, map[string]string{
		"conf.d/hosts.toml":    resourceToml(out+"/hosts", `wait = "300ms:5s"`),
		"templates/hosts.tmpl": hostsTemplate,
	})
	a := startAgent(t, agentConfig(t, dir, "", srv.URL()))
	testutil.Eventually(t, "first render", fileIs(out+"/hosts", ""))
	for i := 0; i < 100; i++ {
		srv.Set(t, "/pool/k", fmt.Sprint(i))
	}
	testutil.Eventually(t, "the settled value", fileIs(out+"/hosts", "k=99\n"))
	if w := a.resource("hosts.toml").Writes; w > 3 {
		t.Fatalf("%d writes for a 100-write burst with quiescence", w)
	}
}

func TestShutdownLetsRunningCommandsFinish(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	out := t.TempDir()
	dir := confdir(t, map[string]string{
		"conf.d/hosts.toml":    resourceToml(out+"/hosts", `reload_cmd = "touch `+out+`/started; sleep 1; touch `+out+`/finished"`),
		"templates/hosts.tmpl": hostsTemplate,
	})
	a := startAgent(t, agentConfig(t, dir, "", srv.URL()))
	testutil.Eventually(t, "the reload to start", func() bool { _, err := os.Stat(out + "/started"); return err == nil })
	a.stop()
	if _, err := os.Stat(out + "/finished"); err != nil {
		t.Fatal("shutdown killed a running reload instead of letting it finish")
	}
	assertNoStage(t, out)
}

func TestIntervalMode(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	proxy := etcdtest.NewProxy(t, srv.URL())
	out := t.TempDir()
	dir := confdir(t, map[string]string{
		"conf.d/one.toml":      resourceToml(out + "/one"),
		"conf.d/two.toml":      resourceToml(out + "/two"),
		"templates/hosts.tmpl": hostsTemplate,
	})
	cfg := agentConfig(t, dir, "", proxy.URL())
	cfg.Interval = 200 * time.Millisecond
	startAgent(t, cfg)
	testutil.Eventually(t, "first render", fileIs(out+"/two", "a=1\n"))
	srv.Set(t, "/pool/a", "2")
	testutil.Eventually(t, "the change", fileIs(out+"/one", "a=2\n"))
	if n := proxy.Count(func(r etcdtest.Request) bool { return r.Watch() }); n != 0 {
		t.Fatalf("%d watches in interval mode", n)
	}
	reads := proxy.Count(nil)
	testutil.Eventually(t, "more ticks", func() bool { return proxy.Count(nil) >= reads+3 })
	for _, r := range proxy.Requests() {
		if r.Path != "/v2/keys/pool" {
			t.Fatalf("unexpected request %+v: one GET per root per tick", r)
		}
	}
}

func TestHTTPEndpointsAndMetricNames(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	out := t.TempDir()
	dir := confdir(t, map[string]string{
		"conf.d/_etc_hosts.toml": resourceToml(out + "/hosts"),
		"templates/hosts.tmpl":   hostsTemplate,
	})
	a := startAgent(t, agentConfig(t, dir, "", srv.URL()))
	web := httptest.NewServer(a.Handler())
	defer web.Close()
	testutil.Eventually(t, "readiness", func() bool {
		resp, err := web.Client().Get(web.URL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	resp, err := web.Client().Get(web.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`confd_resource_healthy{name="_etc_hosts.toml"} 1`,
		`confd_resource_error_timestamp_seconds{name="_etc_hosts.toml"} -1`,
		`confsync_resource_last_success_timestamp_seconds{name="_etc_hosts.toml"}`,
		`confsync_data_age_seconds{root="/pool"} 0`,
		`confsync_etcd_index{root="/pool"}`,
		`confsync_backend_up 1`,
		`confsync_render_duration_seconds_bucket`,
		`confsync_resource_renders_total{name="_etc_hosts.toml"}`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	resp, err = web.Client().Get(web.URL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st Status
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if !st.Ready || len(st.Resources) != 1 || st.Resources[0].Dest != out+"/hosts" {
		t.Fatalf("status %+v", st)
	}
}

func assertNoStage(t *testing.T, dir string) {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, ".*.confsync-*"))
	if len(m) > 0 {
		t.Fatalf("stage files left: %v", m)
	}
}

// Resources that share a destination never run at the same time: each
// one's check holds a lock file for a while and fails if it finds the
// other's.
func TestResourcesSharingADestNeverOverlap(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	out := t.TempDir()
	lock := filepath.Join(out, "check.lock")
	check := fmt.Sprintf(`check_cmd = "(set -C; echo $$ > %s) || { echo overlap >> %s/overlaps; exit 1; }; sleep 0.3; rm -f %s"`, lock, out, lock)
	dir := confdir(t, map[string]string{
		"conf.d/one.toml":    "[template]\nsrc = \"one.tmpl\"\ndest = \"" + out + "/shared\"\nkeys = [\"/pool\"]\n" + check + "\n",
		"conf.d/two.toml":    "[template]\nsrc = \"two.tmpl\"\ndest = \"" + out + "/shared\"\nkeys = [\"/pool\"]\n" + check + "\n",
		"templates/one.tmpl": `one {{getv "/pool/a"}}`,
		"templates/two.tmpl": `two {{getv "/pool/a"}}`,
	})
	a := startAgent(t, agentConfig(t, dir, "", srv.URL()))
	for i := 2; i <= 4; i++ {
		srv.Set(t, "/pool/a", fmt.Sprint(i))
		want := fmt.Sprint(i)
		testutil.Eventually(t, "both resources to apply "+want, func() bool {
			one, two := a.resource("one.toml"), a.resource("two.toml")
			b, _ := os.ReadFile(out + "/shared")
			return one.Healthy && two.Healthy && strings.HasSuffix(string(b), " "+want)
		})
	}
	if b, err := os.ReadFile(out + "/overlaps"); err == nil {
		t.Fatalf("checks of resources sharing a destination overlapped: %s", b)
	}
}

// With the file backend, -watch follows edits of the data files at once
// (the periodic resync here is an hour away).
func TestFileBackendFollowsEdits(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data.yaml")
	os.WriteFile(data, []byte("pool:\n  a: 1\n"), 0o644)
	out := t.TempDir()
	dir := confdir(t, map[string]string{
		"conf.d/hosts.toml":    resourceToml(out + "/hosts"),
		"templates/hosts.tmpl": hostsTemplate,
	})
	startAgent(t, Config{
		Load:           LoadOptions{ConfDir: dir},
		Source:         &file.Source{Paths: []string{data}},
		ResyncInterval: time.Hour,
		DataFiles:      []string{data},
	})
	testutil.Eventually(t, "first render", fileIs(out+"/hosts", "a=1\n"))
	// Replace the file the way editors and config management do.
	tmp := data + ".new"
	os.WriteFile(tmp, []byte("pool:\n  a: 2\n  b: 3\n"), 0o644)
	os.Rename(tmp, data)
	testutil.Eventually(t, "the edit", fileIs(out+"/hosts", "a=2\nb=3\n"))
}

// Without quiescence, a burst renders at most once per MinRenderGap and
// once more after its last write: few rewrites, and the right file.
func TestBurstWithoutQuiescenceIsRateLimited(t *testing.T) {
	srv := etcdtest.New(t)
	out := t.TempDir()
	dir := confdir(t, map[string]string{
		"conf.d/hosts.toml":    resourceToml(out + "/hosts"),
		"templates/hosts.tmpl": hostsTemplate,
	})
	cfg := agentConfig(t, dir, "", srv.URL())
	cfg.MinRenderGap = 200 * time.Millisecond
	a := startAgent(t, cfg)
	testutil.Eventually(t, "first render", fileIs(out+"/hosts", ""))
	start := time.Now()
	for i := 0; i < 200; i++ {
		srv.Set(t, "/pool/k", fmt.Sprint(i))
	}
	burst := time.Since(start)
	testutil.Eventually(t, "the last value", fileIs(out+"/hosts", "k=199\n"))
	// One pass per gap during the burst, plus the first and the last.
	limit := int(burst/cfg.MinRenderGap) + 3
	if w := a.resource("hosts.toml").Writes; w > limit {
		t.Fatalf("%d rewrites for a %v burst of 200 writes; the gap allows %d", w, burst.Round(time.Millisecond), limit)
	}
}
