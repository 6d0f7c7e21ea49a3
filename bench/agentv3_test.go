package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/confsync/confsync/agent"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/fixture"
	"github.com/fsnotify/fsnotify"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// v3Site is an etcd holding a v3 copy of a generated tree.
type v3Site struct {
	*site // the same tree; its v2 store stays empty
	cli   *clientv3.Client
}

func newV3Site(b *testing.B, keys int) *v3Site {
	b.Helper()
	srv := etcdtest.New(b)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.URL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cli.Close() })
	tree := fixture.Generate(fixture.Options{Seed: 1, Keys: keys})
	if err := tree.LoadV3(context.Background(), cli); err != nil {
		b.Fatal(err)
	}
	return &v3Site{site: &site{srv: srv, tree: tree}, cli: cli}
}

func (s *v3Site) put(b *testing.B, key, value string) int64 {
	resp, err := s.cli.Put(context.Background(), key, value)
	if err != nil {
		b.Fatal(err)
	}
	return resp.Header.Revision
}

func (s *v3Site) startAgent(b *testing.B, dir string, extra ...string) *runningAgent {
	b.Helper()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	out := b.TempDir()
	args := append([]string{"agent", "-backend", "etcdv3", "-confdir", dir, "-node", s.srv.URL(), "-dest-root", out,
		"-state-dir", b.TempDir(), "-metrics-addr", addr, "-log-level", "warn"}, extra...)
	cmd := exec.Command(confsyncBinary(b), args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	return &runningAgent{cmd: cmd, addr: addr, out: out}
}

// v3Watchers is etcd's count of v3 watchers (a gauge on its /metrics).
func (s *v3Site) v3Watchers(b *testing.B) int {
	resp, err := http.Get(s.srv.URL() + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "etcd_debugging_mvcc_watcher_total "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return int(n)
		}
	}
	return -1
}

// BenchmarkAgentV3_200x10k is BenchmarkAgent200x10k with -backend etcdv3
// against a v3 copy of the tree: 200 resources over about a hundred
// roots, one v3 watch. Run both to compare:
//
//	go test -run '^$' -bench 'Agent(V3_)?200x10k' -benchtime 1x ./bench/
func BenchmarkAgentV3_200x10k(b *testing.B) {
	s := newV3Site(b, 10000)
	dir, pools := s.confdir(b, 200)
	for i := 0; i < b.N; i++ {
		a := s.startAgent(b, dir)
		ready := a.waitReady(b)
		b.ReportMetric(float64(ready.Milliseconds()), "ms-to-all-rendered")
		resources, _ := agent.LoadAll(agent.LoadOptions{ConfDir: dir})
		b.ReportMetric(float64(len(agent.Roots(resources))), "roots")
		time.Sleep(200 * time.Millisecond) // let the watch register
		b.ReportMetric(float64(s.v3Watchers(b)), "etcd-watchers")
		b.ReportMetric(float64(connsTo(a.cmd.Process.Pid, s.srv.URL())), "tcp-connections-to-etcd")

		p50, p99, renders := s.latency(b, a, pools[0], 200)
		b.ReportMetric(p50, "p50-ms-write-to-file")
		b.ReportMetric(p99, "p99-ms-write-to-file")
		b.ReportMetric(renders/float64(affected(resources, fixture.Prefix+pools[0]+"/x")), "renders/affected-resource/event")

		cpu, renders := s.unreadEvents(b, a, resources, 1000)
		b.ReportMetric(cpu, "cpu-ms-per-1000-unread-events")
		b.ReportMetric(renders, "renders-for-unread-events")

		writes, burst := s.burstInto(b, a, pools[1], 5000)
		b.ReportMetric(writes, "rewrites-per-1000-write-burst")
		b.ReportMetric(burst, "ms-burst-to-final-file")
		b.ReportMetric(a.peakRSSMiB(), "peak-RSS-MiB")
	}
}

// latency is the v2 bench's latency with v3 writes.
func (s *v3Site) latency(b *testing.B, a *runningAgent, pool string, n int) (p50, p99, rendersPerEvent float64) {
	dest := filepath.Join(a.out, "out", "r000")
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
		time.Sleep(60 * time.Millisecond)
		start := time.Now()
		s.put(b, fixture.Prefix+pool+"/"+host, fixture.NodeValue(1000+i, "yes"))
		waitForContent(b, w, dest, fmt.Sprintf("'weight':%d,", 1000+i))
		samples = append(samples, time.Since(start))
	}
	time.Sleep(300 * time.Millisecond)
	after := totalRenders(a.status(b))
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return ms(samples[len(samples)/2]), ms(samples[len(samples)*99/100]), float64(after-before) / float64(n)
}

// burstInto is the v2 bench's burst with v3 writes.
func (s *v3Site) burstInto(b *testing.B, a *runningAgent, pool string, base int) (rewrites, ms float64) {
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
	for i := 0; i < 1000; i++ {
		s.put(b, fixture.Prefix+pool+"/"+hosts[i%len(hosts)], fixture.NodeValue(base+i, "yes"))
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

// unreadEvents is the v2 bench's unread events with v3 writes.
func (s *v3Site) unreadEvents(b *testing.B, a *runningAgent, resources []*agent.Resource, n int) (cpuMs, renders float64) {
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
	var last int64
	for i := 0; i < n; i++ {
		last = s.put(b, key, fixture.NodeValue(i, "no"))
	}
	for a.status(b).Watch.Index < uint64(last) {
		time.Sleep(5 * time.Millisecond)
	}
	spent := cpuTime(a.cmd.Process.Pid) - cpu
	return float64(spent.Microseconds()) / 1000 * 1000 / float64(n), float64(totalRenders(a.status(b)) - before)
}
