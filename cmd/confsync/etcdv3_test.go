package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/fixture"
	"github.com/confsync/confsync/internal/testutil"
	"github.com/confsync/confsync/internal/udiff"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// v3Writer writes through the v3 API, retrying while a cluster elects a
// leader or a member restarts.
type v3Writer struct {
	t   *testing.T
	cli *clientv3.Client
}

func newV3Writer(t *testing.T, endpoints ...string) *v3Writer {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return &v3Writer{t: t, cli: cli}
}

func (w *v3Writer) do(what string, op func(ctx context.Context) (int64, error)) int64 {
	w.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		rev, err := op(ctx)
		cancel()
		if err == nil {
			return rev
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (w *v3Writer) put(key, value string) int64 {
	w.t.Helper()
	return w.do("put "+key, func(ctx context.Context) (int64, error) {
		resp, err := w.cli.Put(ctx, key, value)
		if err != nil {
			return 0, err
		}
		return resp.Header.Revision, nil
	})
}

func (w *v3Writer) del(key string) int64 {
	w.t.Helper()
	return w.do("delete "+key, func(ctx context.Context) (int64, error) {
		resp, err := w.cli.Delete(ctx, key)
		if err != nil {
			return 0, err
		}
		return resp.Header.Revision, nil
	})
}

func (w *v3Writer) compact(rev int64) {
	w.t.Helper()
	w.do("compact", func(ctx context.Context) (int64, error) {
		_, err := w.cli.Compact(ctx, rev, clientv3.WithCompactPhysical())
		return rev, err
	})
}

// lines is every key under prefix as "key=value" lines, sorted: what the
// listing template below renders.
func (w *v3Writer) lines(prefix string) string {
	w.t.Helper()
	var out []string
	w.do("read "+prefix, func(ctx context.Context) (int64, error) {
		resp, err := w.cli.Get(ctx, prefix+"/", clientv3.WithPrefix())
		if err != nil {
			return 0, err
		}
		out = out[:0]
		for _, kv := range resp.Kvs {
			out = append(out, strings.TrimPrefix(string(kv.Key), prefix)+"="+string(kv.Value)+"\n")
		}
		return resp.Header.Revision, nil
	})
	sort.Strings(out)
	return strings.Join(out, "")
}

// sameTree fails unless the two directories hold the same files, byte for
// byte.
func sameTree(t *testing.T, wantDir, gotDir string) {
	t.Helper()
	want, got := collect(t, wantDir), collect(t, gotDir)
	for rel, content := range want {
		if got[rel] != content {
			t.Errorf("%s differs:\n%s", rel, udiff.Diff("want", "got", []byte(content), []byte(got[rel]), 3))
		}
	}
	for rel := range got {
		if _, ok := want[rel]; !ok {
			t.Errorf("%s rendered but not expected", rel)
		}
	}
}

// The example confdir renders the golden files from a v3 copy of the
// fixture tree, one-shot and as an agent; and after the same changes to
// the v2 tree and the v3 copy, the agent's files are byte for byte what a
// render from v2 writes.
func TestExampleConfdirFromEtcdV3(t *testing.T) {
	srv := loadSite(t) // the v2 tree
	site := fixture.Generate(fixture.Options{Seed: 1})
	w := newV3Writer(t, srv.URL())
	if err := site.LoadV3(context.Background(), w.cli); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "example")

	once := t.TempDir()
	if res := runCmd(t, "render", "-backend", "etcdv3", "-confdir", exampleConfdir, "-node", srv.URL(), "-dest-root", once); res.code != 0 {
		t.Fatalf("render: exit %d: %s", res.code, res.stderr)
	}
	sameTree(t, golden, once)

	out := t.TempDir()
	a := startAgentProcess(t, "-backend", "etcdv3", "-confdir", exampleConfdir, "-node", srv.URL(), "-dest-root", out)
	testutil.Eventually(t, "every resource rendered", func() bool { return a.status(t).Ready })
	sameTree(t, golden, out)
	if st := a.status(t).Watch; st.Mode != "v3-watch" || st.Prefix != fixture.Prefix {
		t.Fatalf("watch %+v", st)
	}

	hosts := site.Under(fixture.Prefix + "/pools/eqiad/api_appserver/apache2")
	changed, gone := hosts[0], hosts[1]
	value := fixture.NodeValue(77, "no")
	srv.Set(t, changed, value)
	srv.Delete(t, gone)
	w.put(changed, value)
	last := w.del(gone)
	fromV2 := t.TempDir()
	if res := runCmd(t, "render", "-confdir", exampleConfdir, "-node", srv.URL(), "-dest-root", fromV2); res.code != 0 {
		t.Fatalf("render from v2: exit %d: %s", res.code, res.stderr)
	}
	testutil.Eventually(t, "the agent at the last write", func() bool { return a.status(t).Watch.Index >= uint64(last) })
	testutil.Eventually(t, "the files a render from v2 writes", func() bool {
		return reflect.DeepEqual(collect(t, fromV2), collect(t, out))
	})
}

const listingTemplate = "{{range gets \"/*/*\"}}{{.Key}}={{.Value}}\n{{end}}"

// The agent on -backend etcdv3 misses nothing across a failover (the
// member in use killed), a restart of every member, and a compaction of
// the history it needed to resume: after each, its file is exactly what
// etcd holds, and it holds one connection.
func TestAgentV3MissesNothing(t *testing.T) {
	cluster := etcdtest.NewProcessCluster(t, 3)
	var proxies []*etcdtest.FaultProxy
	var endpoints []string
	for i := 0; i < cluster.Size(); i++ {
		p := etcdtest.NewFaultProxy(t, cluster.URL(i))
		proxies, endpoints = append(proxies, p), append(endpoints, p.URL())
	}
	const prefix = "/conftool/v1/pools"
	w := newV3Writer(t, cluster.Endpoints()...)
	for i := 0; i < 20; i++ {
		w.put(fmt.Sprintf("%s/eqiad/mw%02d", prefix, i), "pooled")
	}
	dir, out := writeConfdir(t, map[string]string{
		"templates/all.tmpl": listingTemplate,
		"conf.d/all.toml":    fmt.Sprintf("[template]\nsrc = \"all.tmpl\"\ndest = \"{{out}}/all\"\nprefix = %q\nkeys = [\"/\"]\n", prefix),
	})
	a := startAgentProcess(t, "-backend", "etcdv3", "-confdir", dir, "-node", strings.Join(endpoints, ","))
	conns := sampleConns(t, a.cmd.Process.Pid, hostsOf(endpoints))
	current := func(when string) {
		t.Helper()
		var want, got string
		testutil.Eventually(t, "the file as etcd holds it "+when, func() bool {
			want = w.lines(prefix)
			b, _ := os.ReadFile(filepath.Join(out, "all"))
			got = string(b)
			return got == want
		})
	}
	current("at start")

	// Failover: the member in use dies.
	used := -1
	for i, ep := range endpoints {
		if ep == a.status(t).Watch.Endpoint {
			used = i
		}
	}
	if used < 0 {
		t.Fatalf("the agent watches through %q, none of %v", a.status(t).Watch.Endpoint, endpoints)
	}
	cluster.Kill(used)
	w.put(prefix+"/eqiad/mw00", "after-failover")
	w.del(prefix + "/eqiad/mw01")
	current("after the failover")
	if ep := a.status(t).Watch.Endpoint; ep == endpoints[used] {
		t.Fatalf("still on the killed member's %s", ep)
	}
	cluster.Start(t, used)

	// Every member restarts, one after the other.
	for i := 0; i < cluster.Size(); i++ {
		cluster.Restart(t, i)
		cluster.WaitHealthy(t)
	}
	w.put(prefix+"/eqiad/mw02", "after-restart")
	current("after the restart")

	// Cut off while the history it would resume from is compacted away.
	for _, p := range proxies {
		p.Drop()
		p.ResetConnections()
	}
	w.put(prefix+"/eqiad/mw03", "while-cut-off")
	w.del(prefix + "/eqiad/mw04")
	w.compact(w.put(prefix+"/codfw/mw50", "new"))
	for _, p := range proxies {
		p.PassThrough()
	}
	current("after the compaction")
	testutil.Eventually(t, "the re-read counted", func() bool { return metricHas(a, "confsync_resyncs_total{", `reason="compacted"`) })
	if n := conns.most(); n != 1 {
		t.Fatalf("the agent held up to %d connections at once, want 1", n)
	}
}

// metricHas reports whether a line of the agent's /metrics starts with
// name and contains label.
func metricHas(a *runningAgent, name, label string) bool {
	resp, err := http.Get("http://" + a.metrics + "/metrics")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), name) && strings.Contains(sc.Text(), label) {
			return true
		}
	}
	return false
}

// Started while etcd is down, a v3 agent renders from its last-known-good
// cache and converges when etcd returns; the cache of a v2 agent on the
// same endpoints is not used.
func TestAgentV3RendersFromCacheWhileEtcdIsDown(t *testing.T) {
	srv := etcdtest.New(t)
	w := newV3Writer(t, srv.URL())
	const prefix = "/conftool/v1/pools"
	w.put(prefix+"/eqiad/mw1", "pooled")
	w.put(prefix+"/eqiad/mw1/flat", "a key below a key that holds a value")
	srv.Set(t, prefix+"/eqiad/v2only", "the v2 tree differs")
	dir, out := writeConfdir(t, map[string]string{
		"templates/all.tmpl": "{{range gets \"/*/*\"}}{{.Key}}={{.Value}}\n{{end}}{{range gets \"/*/*/*\"}}{{.Key}}={{.Value}}\n{{end}}",
		"conf.d/all.toml":    fmt.Sprintf("[template]\nsrc = \"all.tmpl\"\ndest = \"{{out}}/all\"\nprefix = %q\nkeys = [\"/\"]\n", prefix),
	})
	file := filepath.Join(out, "all")
	want := "/eqiad/mw1=pooled\n/eqiad/mw1/flat=a key below a key that holds a value\n"
	state := t.TempDir()
	run := func(args ...string) *runningAgent {
		a := &runningAgent{metrics: freeAddr(t), logs: &testutil.SyncBuffer{}}
		a.cmd = confsyncProcess(t, append([]string{"agent", "-metrics-addr", a.metrics, "-state-dir", state,
			"-confdir", dir, "-node", srv.URL()}, args...)...)
		a.cmd.Stderr = a.logs
		if err := a.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.cmd.Process.Signal(syscall.SIGTERM); a.cmd.Wait() })
		return a
	}
	stop := func(a *runningAgent) {
		a.cmd.Process.Signal(syscall.SIGTERM)
		if err := a.cmd.Wait(); err != nil {
			t.Fatalf("agent: %v\n%s", err, a.logs.String())
		}
	}
	v2 := run() // writes a v2 cache on the same endpoints
	testutil.Eventually(t, "the v2 agent's render", func() bool { return readFileOr(file) == "/eqiad/v2only=the v2 tree differs\n" })
	stop(v2)

	first := run("-backend", "etcdv3")
	testutil.Eventually(t, "the v3 agent's render", func() bool { return readFileOr(file) == want })
	stop(first)
	if !strings.Contains(first.logs.String(), "ignoring it") {
		t.Errorf("the v2 cache was not refused:\n%s", first.logs.String())
	}

	srv.Stop()
	os.Remove(file)
	second := run("-backend", "etcdv3")
	testutil.Eventually(t, "a render from the cache", func() bool { return readFileOr(file) == want })
	if st := second.status(t); !st.Watch.FromCache || st.BackendUp {
		t.Fatalf("status while etcd is down: %+v", st.Watch)
	}
	testutil.Eventually(t, "confsync check to report the stale data", func() bool {
		res := runCmd(t, "check", "-url", "http://"+second.metrics+"/status", "-warn-age", "1s", "-crit-age", "1h")
		return res.code == 1 && strings.Contains(res.stdout, "old (etcd unreachable?)")
	})
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	w.put(prefix+"/eqiad/mw2", "after the outage")
	testutil.Eventually(t, "the change after the outage", func() bool {
		return readFileOr(file) == want[:len("/eqiad/mw1=pooled\n")]+"/eqiad/mw2=after the outage\n"+want[len("/eqiad/mw1=pooled\n"):]
	})
	if st := second.status(t); st.Watch.FromCache || !st.BackendUp {
		t.Fatalf("status after etcd returned: %+v", st.Watch)
	}
}

func readFileOr(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// The cache of one API never seeds an agent of the other.
func TestCacheSourceNamesTheAPI(t *testing.T) {
	names := map[string]bool{}
	for _, backend := range []string{"etcd", "etcdv3"} {
		for _, extra := range [][]string{nil, {"-srv-domain", "eqiad.wmnet"}, {"-srv-record", "_etcd-client-ssl._tcp.eqiad.wmnet"}} {
			var f agentFlags
			fs := agentFlagSet(&f)
			if err := fs.Parse(append([]string{"-backend", backend}, extra...)); err != nil {
				t.Fatal(err)
			}
			names[f.cacheSource()] = true
		}
	}
	if len(names) != 6 {
		t.Fatalf("cache sources %v: want six distinct", reflect.ValueOf(names).MapKeys())
	}
}
