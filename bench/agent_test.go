// Package bench holds the benchmarks that run confsync as users do: the
// real binary against a real etcd, measuring wall time, peak memory, etcd
// requests and change-to-file latency. Run them with
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/
//
// They report custom metrics (b.ReportMetric); BENCHMARKS.md has figures.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/confsync/confsync/agent"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/fixture"
	"github.com/fsnotify/fsnotify"
	client "go.etcd.io/etcd/client/v2"
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// confsyncBinary builds the production binary once per run.
func confsyncBinary(b *testing.B) string {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "confsync-bench-")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "confsync")
		out, err := exec.Command("go", "build", "-o", binary, "../cmd/confsync").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		b.Fatal(buildErr)
	}
	return binary
}

// site is an etcd holding a generated tree of the given size, behind a
// counting proxy.
type site struct {
	srv   *etcdtest.Server
	proxy *etcdtest.Proxy
	tree  *fixture.Site
}

func newSite(b *testing.B, keys int) *site {
	b.Helper()
	srv := etcdtest.New(b)
	tree := fixture.Generate(fixture.Options{Seed: 1, Keys: keys})
	if err := tree.Load(context.Background(), srv.Client()); err != nil {
		b.Fatal(err)
	}
	return &site{srv: srv, proxy: etcdtest.NewProxy(b, srv.URL()), tree: tree}
}

// pools lists the distinct pool directories of the tree.
func (s *site) pools() []string {
	seen := map[string]bool{}
	var out []string
	for _, k := range s.tree.Keys() {
		if !strings.HasPrefix(k, fixture.Prefix+"/pools/") {
			continue
		}
		p := strings.TrimPrefix(k[:strings.LastIndex(k, "/")], fixture.Prefix)
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

const poolTemplate = `# pool file rendered by confsync
{{range gets "/pools/*/*/*/*"}}{{$d := json .Value}}{{if ne $d.pooled "inactive"}}{ 'host': '{{base .Key}}', 'weight':{{$d.weight}}, 'enabled': {{if eq $d.pooled "yes"}}True{{else}}False{{end}} }
{{end}}{{end}}`

const clusterTemplate = `# dsh group rendered by confsync
{{range gets "/pools/*/*/*/*"}}{{$d := json .Value}}{{if ne $d.pooled "inactive"}}{{base .Key}}
{{end}}{{end}}`

// confdir writes n resources: three in four render one pool each (as pybal
// files do); the rest render a whole cluster (as dsh groups do), so some
// resources share subtrees.
func (s *site) confdir(b *testing.B, n int) (dir string, resources []string) {
	b.Helper()
	dir = b.TempDir()
	os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755)
	os.MkdirAll(filepath.Join(dir, "templates"), 0o755)
	os.WriteFile(filepath.Join(dir, "templates", "pool.tmpl"), []byte(poolTemplate), 0o644)
	os.WriteFile(filepath.Join(dir, "templates", "cluster.tmpl"), []byte(clusterTemplate), 0o644)
	pools := s.pools()
	for i := 0; i < n; i++ {
		pool := pools[i%len(pools)]
		src, key := "pool.tmpl", pool
		if i%4 == 3 {
			src, key = "cluster.tmpl", pool[:strings.LastIndex(pool, "/")]
		}
		name := fmt.Sprintf("r%03d", i)
		toml := fmt.Sprintf("[template]\nsrc = %q\ndest = \"/out/%s\"\nprefix = %q\nkeys = [%q]\n", src, name, fixture.Prefix, key)
		os.WriteFile(filepath.Join(dir, "conf.d", name+".toml"), []byte(toml), 0o644)
		resources = append(resources, pool)
	}
	return dir, resources
}

func maxRSSMiB(ps *os.ProcessState) float64 {
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		return float64(ru.Maxrss) / 1024 // kilobytes on Linux
	}
	return 0
}

// BenchmarkRenderOneShot is `confsync render` of 200 resources over a
// 10k-key tree, fetch included, as a fresh process each time.
func BenchmarkRenderOneShot(b *testing.B) {
	bin := confsyncBinary(b)
	s := newSite(b, 10000)
	dir, _ := s.confdir(b, 200)
	resources, _ := agent.LoadAll(agent.LoadOptions{ConfDir: dir})
	roots := agent.Roots(resources)
	var rss float64
	s.proxy.Reset()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out := b.TempDir()
		cmd := exec.Command(bin, "render", "-confdir", dir, "-node", s.proxy.URL(), "-dest-root", out, "-log-level", "warn")
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("render: %v\n%s", err, msg)
		}
		rss = max(rss, maxRSSMiB(cmd.ProcessState))
	}
	b.StopTimer()
	b.ReportMetric(rss, "peak-RSS-MiB")
	b.ReportMetric(float64(s.proxy.Count(nil))/float64(b.N), "etcd-requests/op")
	b.ReportMetric(float64(len(roots)), "roots")
}

// runningAgent is the agent binary running against a site.
type runningAgent struct {
	cmd  *exec.Cmd
	addr string
	out  string
}

func startAgent(b *testing.B, s *site, dir string, extra ...string) *runningAgent {
	b.Helper()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	out := b.TempDir()
	args := append([]string{"agent", "-confdir", dir, "-node", s.proxy.URL(), "-dest-root", out,
		"-state-dir", b.TempDir(), "-metrics-addr", addr, "-log-level", "warn"}, extra...)
	cmd := exec.Command(confsyncBinary(b), args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	a := &runningAgent{cmd: cmd, addr: addr, out: out}
	b.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	return a
}

func (a *runningAgent) status(b *testing.B) *agent.Status {
	resp, err := http.Get("http://" + a.addr + "/status")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var st agent.Status
	json.NewDecoder(resp.Body).Decode(&st)
	return &st
}

func (a *runningAgent) waitReady(b *testing.B) time.Duration {
	start := time.Now()
	for {
		if st := a.status(b); st != nil && st.Ready {
			return time.Since(start)
		}
		if time.Since(start) > 2*time.Minute {
			b.Fatal("agent never became ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// peakRSSMiB reads the agent's high-water resident set from /proc.
func (a *runningAgent) peakRSSMiB() float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			kb, _ := strconv.Atoi(strings.Fields(line)[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

// BenchmarkAgent200x10k measures the agent over 200 resources and a
// 10k-key tree: time to all rendered, watch connections, write-to-file
// latency, renders per event, a 1000-write burst, and memory. Each
// resource reads one pool or one cluster, so there are about a hundred
// roots.
func BenchmarkAgent200x10k(b *testing.B) { benchAgent(b, 10000, false) }

// BenchmarkAgentWholeTree10k adds a resource that reads every pool (as an
// all-hosts list would): the roots collapse into one, and the agent holds
// the whole tree.
func BenchmarkAgentWholeTree10k(b *testing.B) { benchAgent(b, 10000, true) }

// BenchmarkAgentWholeTree100k is the same over a 100k-key tree.
func BenchmarkAgentWholeTree100k(b *testing.B) { benchAgent(b, 100000, true) }

const summaryTemplate = `{{range $dc := ls "/pools"}}{{$dc}}: {{len (ls (printf "/pools/%s" $dc))}} clusters
{{end}}`

func benchAgent(b *testing.B, keys int, wholeTree bool) {
	s := newSite(b, keys)
	dir, pools := s.confdir(b, 200)
	if wholeTree {
		os.WriteFile(filepath.Join(dir, "templates", "summary.tmpl"), []byte(summaryTemplate), 0o644)
		os.WriteFile(filepath.Join(dir, "conf.d", "summary.toml"), []byte(fmt.Sprintf(
			"[template]\nsrc = \"summary.tmpl\"\ndest = \"/out/summary\"\nprefix = %q\nkeys = [\"/pools\"]\n", fixture.Prefix)), 0o644)
	}
	for i := 0; i < b.N; i++ {
		s.proxy.Reset()
		a := startAgent(b, s, dir)
		ready := a.waitReady(b)
		b.ReportMetric(float64(ready.Milliseconds()), "ms-to-all-rendered")
		resources, _ := agent.LoadAll(agent.LoadOptions{ConfDir: dir})
		b.ReportMetric(float64(len(agent.Roots(resources))), "roots")
		time.Sleep(200 * time.Millisecond) // let the watch register
		b.ReportMetric(float64(s.proxy.OpenWatches()), "watch-connections")
		b.ReportMetric(float64(s.watchers(b)), "etcd-watchers")
		b.ReportMetric(float64(connsTo(a.cmd.Process.Pid, s.proxy.URL())), "tcp-connections-to-etcd")

		p50, p99, renders := latency(b, s, a, pools[0], 200)
		b.ReportMetric(p50, "p50-ms-write-to-file")
		b.ReportMetric(p99, "p99-ms-write-to-file")
		// 1.0 means every render was of a resource the change concerned,
		// each at most once per change.
		b.ReportMetric(renders/float64(affected(resources, fixture.Prefix+pools[0]+"/x")), "renders/affected-resource/event")

		cpu, renders := unreadEvents(b, s, a, resources, 1000)
		b.ReportMetric(cpu, "cpu-ms-per-1000-unread-events")
		b.ReportMetric(renders, "renders-for-unread-events")
		if st := a.status(b); st.Watch.Mode == "stream" {
			b.ReportMetric(1, "streaming")
		} else {
			b.ReportMetric(0, "streaming")
		}

		writes, burst := burstInto(b, s, a, pools[1], 5000)
		b.ReportMetric(writes, "rewrites-per-1000-write-burst")
		b.ReportMetric(burst, "ms-burst-to-final-file")
		b.ReportMetric(a.peakRSSMiB(), "peak-RSS-MiB")

		// The same burst with quiescence on settles into a few writes.
		quiet := startAgent(b, s, dir, "-wait", "200ms:2s")
		quiet.waitReady(b)
		writes, _ = burstInto(b, s, quiet, pools[1], 7000)
		b.ReportMetric(writes, "rewrites-per-burst-with-wait-200ms:2s")
	}
}

// latency changes one host of pool n times and measures, with fsnotify,
// the time until the pool's file is replaced. It also counts how many
// resources rendered per change.
func latency(b *testing.B, s *site, a *runningAgent, pool string, n int) (p50, p99, rendersPerEvent float64) {
	dest := filepath.Join(a.out, "out", "r000") // resource 0 renders pools[0]
	host := s.poolHosts(pool)[0]
	w, err := fsnotify.NewWatcher()
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	w.Add(filepath.Dir(dest))
	before := totalRenders(a.status(b))
	var samples []time.Duration
	for i := 0; i < n; i++ {
		// Single writes, as an operator's depool is: apart by more than
		// the agent's 50ms burst gap.
		time.Sleep(60 * time.Millisecond)
		value := fixture.NodeValue(1000+i, "yes")
		start := time.Now()
		if _, err := s.srv.Client().Set(context.Background(), fixture.Prefix+pool+"/"+host, value, nil); err != nil {
			b.Fatal(err)
		}
		waitForContent(b, w, dest, fmt.Sprintf("'weight':%d,", 1000+i))
		samples = append(samples, time.Since(start))
	}
	time.Sleep(300 * time.Millisecond)
	after := totalRenders(a.status(b))
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return ms(samples[len(samples)/2]), ms(samples[len(samples)*99/100]), float64(after-before) / float64(n)
}

// affected counts the resources whose keys cover key.
func affected(resources []*agent.Resource, key string) int {
	n := 0
	for _, r := range resources {
		for _, k := range r.PrefixedKeys {
			if strings.HasPrefix(key, k+"/") {
				n++
				break
			}
		}
	}
	return n
}

func waitForContent(b *testing.B, w *fsnotify.Watcher, dest, want string) {
	deadline := time.After(30 * time.Second)
	for {
		if raw, err := os.ReadFile(dest); err == nil && strings.Contains(string(raw), want) {
			return
		}
		select {
		case <-w.Events:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			b.Fatalf("%s never got %q", dest, want)
		}
	}
}

func (s *site) poolHosts(pool string) []string {
	var hosts []string
	for _, k := range s.tree.Under(fixture.Prefix + pool) {
		hosts = append(hosts, k[strings.LastIndex(k, "/")+1:])
	}
	return hosts
}

func totalRenders(st *agent.Status) int {
	n := 0
	for _, r := range st.Resources {
		n += r.Renders
	}
	return n
}

// burstInto writes 1000 values into one pool as fast as etcd takes them
// and reports how many times resource 1's file was rewritten, and how long
// until it showed the final state.
func burstInto(b *testing.B, s *site, a *runningAgent, pool string, base int) (rewrites, ms float64) {
	writesOf := func() int {
		for _, r := range a.status(b).Resources {
			if r.Name == "r001.toml" {
				return r.Writes
			}
		}
		return 0
	}
	before := writesOf()
	hosts := s.poolHosts(pool)
	start := time.Now()
	var last string
	for i := 0; i < 1000; i++ {
		last = fixture.NodeValue(base+i, "yes")
		if _, err := s.srv.Client().Set(context.Background(), fixture.Prefix+pool+"/"+hosts[i%len(hosts)], last, nil); err != nil {
			b.Fatal(err)
		}
	}
	dest := filepath.Join(a.out, "out", "r001")
	for {
		raw, _ := os.ReadFile(dest)
		if strings.Contains(string(raw), fmt.Sprintf("'weight':%d,", base+999)) {
			break
		}
		if time.Since(start) > time.Minute {
			b.Fatal("burst never settled")
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	time.Sleep(300 * time.Millisecond)
	return float64(writesOf() - before), float64(elapsed.Milliseconds())
}

// unreadEvents writes n values to a key under the watched prefix that no
// resource reads and reports the agent's CPU time for them, and how many
// renders they caused (none should).
func unreadEvents(b *testing.B, s *site, a *runningAgent, resources []*agent.Resource, n int) (cpuMs, renders float64) {
	roots := agent.Roots(resources)
	prefix := a.status(b).Watch.Prefix
	var key string
	for _, k := range s.tree.Keys() {
		if !strings.HasPrefix(k, prefix+"/") {
			continue
		}
		read := false
		for _, r := range roots {
			if k == r || strings.HasPrefix(k, r+"/") {
				read = true
			}
		}
		if !read {
			key = k
			break
		}
	}
	if key == "" {
		b.Fatalf("every key under %s is read by a resource", prefix)
	}
	before, cpu := totalRenders(a.status(b)), cpuTime(a.cmd.Process.Pid)
	var last *client.Response
	for i := 0; i < n; i++ {
		var err error
		if last, err = s.srv.Client().Set(context.Background(), key, fixture.NodeValue(i, "no"), nil); err != nil {
			b.Fatal(err)
		}
	}
	for a.status(b).Watch.Index < last.Index {
		time.Sleep(5 * time.Millisecond)
	}
	spent := cpuTime(a.cmd.Process.Pid) - cpu
	return float64(spent.Microseconds()) / 1000 * 1000 / float64(n), float64(totalRenders(a.status(b)) - before)
}

// watchers is etcd's count of registered v2 watchers. (Reading it races
// inside an in-process etcd 3.5, which matters only under -race; the
// benchmarks run without it.)
func (s *site) watchers(b *testing.B) int {
	resp, err := http.Get(s.srv.URL() + "/v2/stats/store")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var stats struct{ Watchers int }
	json.NewDecoder(resp.Body).Decode(&stats)
	return stats.Watchers
}

// cpuTime is the CPU time every thread of a process has used so far, to the
// nanosecond (from /proc/<pid>/task/*/schedstat).
func cpuTime(pid int) time.Duration {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var total time.Duration
	for _, t := range tasks {
		raw, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		if ns, err := strconv.ParseInt(strings.Fields(string(raw))[0], 10, 64); err == nil {
			total += time.Duration(ns)
		}
	}
	return total
}

// connsTo counts pid's established TCP connections to the host:port of
// url, from the sockets among its file descriptors.
func connsTo(pid int, rawURL string) int {
	u, _ := url.Parse(rawURL)
	_, port, _ := net.SplitHostPort(u.Host)
	want, _ := strconv.ParseInt(port, 10, 64)
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[link[len("socket:["):len(link)-1]] = true
		}
	}
	n := 0
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		raw, err := os.ReadFile(table)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(raw), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "01" || !inodes[f[9]] {
				continue
			}
			_, hexPort, _ := strings.Cut(f[2], ":")
			if p, err := strconv.ParseInt(hexPort, 16, 64); err == nil && p == want {
				n++
			}
		}
	}
	return n
}
