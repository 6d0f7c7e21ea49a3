package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
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

// perRootCommit is the last confsync before the single watch: its agent
// opens one long poll per root. The fleet benchmark builds it from git to
// compare, in the same run, per-root watching with one watch per agent.
const perRootCommit = "50a2cc7"

var (
	perRootOnce sync.Once
	perRootBin  string
	perRootErr  error
)

func perRootBinary(b *testing.B) string {
	perRootOnce.Do(func() {
		dir, err := os.MkdirTemp("", "confsync-per-root-")
		if err != nil {
			perRootErr = err
			return
		}
		src := filepath.Join(dir, "src")
		os.MkdirAll(src, 0o755)
		script := fmt.Sprintf("git -C .. archive %s | tar -x -C %s && cd %s && go build -o ../confsync ./cmd/confsync", perRootCommit, src, src)
		if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
			perRootErr = fmt.Errorf("build confsync at %s: %v\n%s", perRootCommit, err, out)
		}
		perRootBin = filepath.Join(dir, "confsync")
	})
	if perRootErr != nil {
		b.Fatal(perRootErr)
	}
	return perRootBin
}

// fleetEtcd is Debian's etcd 3.4 as a process, so that its CPU and its
// watcher count can be read, loaded with a 10k-key site.
type fleetEtcd struct {
	cluster *etcdtest.ProcessCluster
	pid     int
	tree    *fixture.Site
	keys    client.KeysAPI
}

func newFleetEtcd(b *testing.B) *fleetEtcd {
	c := etcdtest.NewProcessCluster(b, 1)
	tree := fixture.Generate(fixture.Options{Seed: 1, Keys: 10000})
	if err := tree.Load(context.Background(), c.Client()); err != nil {
		b.Fatal(err)
	}
	return &fleetEtcd{cluster: c, pid: c.Pid(0), tree: tree, keys: c.Client()}
}

// BenchmarkFleet runs H agents, each its own process with its own confdir
// of 200 resources (about a hundred roots), against one Debian etcd, first
// the per-root agent (as built from perRootCommit), then today's one-watch
// agent, and measures what etcd pays: watchers, CPU per write and while
// idle, PUT latency, and the time until every agent's file has a change.
//
//	go test -run '^$' -bench Fleet -benchtime 1x -timeout 2h ./bench/
//
// Environment, for other runs: CONFSYNC_FLEET_SIZES=2,5 (fleet sizes),
// CONFSYNC_FLEET_WRITES=150 (timed writes per setup, 40 by default),
// CONFSYNC_FLEET_GAP=3s (pause between one write reaching every file and
// the next, 1s by default), CONFSYNC_FLEET_ONE_WATCH=1 (today's agent
// only), CONFSYNC_FLEET_SHARED=1 (agents as ordinary processes, see
// sharedHost), CONFSYNC_FLEET_FROZEN=1 (agents stopped during the timed
// writes, see frozen).
func BenchmarkFleet(b *testing.B) {
	opts := fleetOptionsFromEnv(b)
	e := newFleetEtcd(b)
	s := &site{tree: e.tree}
	dir, pools := s.confdir(b, 200)
	watched := fixture.Prefix + pools[0]
	host := s.poolHosts(pools[0])[0]
	// Idle etcd is timed as the fleets are, with the same spacing and
	// count, so that the two differ only in the fleet: an etcd left alone
	// for a second between writes is not one written to every 300 ms,
	// and a p99 of 40 writes is their worst one or two.
	idle := putLatency(b, e, watched+"/"+host, opts.writes, opts.gap, nil)
	b.Logf("idle etcd: PUT p50 %.2f ms, p99 %.2f ms", idle.p50, idle.p99)
	for _, h := range opts.sizes {
		for _, kind := range opts.kinds {
			b.Run(fmt.Sprintf("H=%d/%s", h, kind), func(b *testing.B) {
				bin := confsyncBinary(b)
				if kind == "per-root" {
					bin = perRootBinary(b)
				}
				fleet := startFleet(b, bin, e, dir, h)
				time.Sleep(2 * time.Second) // let every watch register
				watchers := e.cluster.WatcherCount(b, 0)
				idleCPU := cpuOver(e.pid, 10*time.Second)
				timed := fleet
				if frozen() {
					fleet.signal(syscall.SIGSTOP)
					timed = nil
				}
				m := putLatency(b, e, watched+"/"+host, opts.writes, opts.gap, timed)
				b.ReportMetric(float64(watchers), "etcd-watchers")
				b.ReportMetric(idleCPU*100, "etcd-idle-cpu-%")
				b.ReportMetric(m.cpuPerWrite, "etcd-cpu-ms/write")
				b.ReportMetric(m.p50, "put-p50-ms")
				b.ReportMetric(m.p99, "put-p99-ms")
				b.ReportMetric(m.p99/idle.p99, "put-p99-vs-idle")
				b.ReportMetric(m.p50/idle.p50, "put-p50-vs-idle")
				if !frozen() {
					b.ReportMetric(m.allFilesP50, "all-files-p50-ms")
					b.ReportMetric(m.allFilesMax, "all-files-max-ms")
				}
				fleet.stop()
			})
		}
	}
}

// fleetOptions say what BenchmarkFleet runs (see its environment).
type fleetOptions struct {
	sizes  []int
	kinds  []string
	writes int
	gap    time.Duration
}

func fleetOptionsFromEnv(b *testing.B) fleetOptions {
	o := fleetOptions{sizes: []int{10, 50, 100}, kinds: []string{"per-root", "one-watch"}, writes: 40, gap: time.Second}
	if env := os.Getenv("CONFSYNC_FLEET_SIZES"); env != "" {
		o.sizes = nil
		for _, f := range strings.Split(env, ",") {
			h, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || h < 1 {
				b.Fatalf("CONFSYNC_FLEET_SIZES=%q: want fleet sizes such as 10,50,100", env)
			}
			o.sizes = append(o.sizes, h)
		}
	}
	if env := os.Getenv("CONFSYNC_FLEET_WRITES"); env != "" {
		n, err := strconv.Atoi(env)
		if err != nil || n < 1 {
			b.Fatalf("CONFSYNC_FLEET_WRITES=%q: want a number of timed writes such as 150", env)
		}
		o.writes = n
	}
	if env := os.Getenv("CONFSYNC_FLEET_GAP"); env != "" {
		d, err := time.ParseDuration(env)
		if err != nil || d <= 0 {
			b.Fatalf("CONFSYNC_FLEET_GAP=%q: want a duration such as 3s", env)
		}
		o.gap = d
	}
	if frozen() || os.Getenv("CONFSYNC_FLEET_ONE_WATCH") == "1" {
		o.kinds = []string{"one-watch"}
	}
	return o
}

// fleet is H agent processes.
type fleet struct {
	cmds  []*exec.Cmd
	dests []string // each agent's file for resource 0
}

func startFleet(b *testing.B, bin string, e *fleetEtcd, dir string, h int) *fleet {
	f := &fleet{}
	// Every agent gets its own metrics port: the listeners are held until
	// all are picked, so the kernel cannot hand one port out twice.
	addrs := make([]string, h)
	var held []net.Listener
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		held = append(held, l)
		addrs[i] = l.Addr().String()
	}
	for _, l := range held {
		l.Close()
	}
	for _, addr := range addrs {
		out, state := hostDir(b), hostDir(b)
		args := []string{"agent", "-confdir", dir, "-node", e.cluster.URL(0), "-dest-root", out,
			"-state-dir", state, "-metrics-addr", addr, "-log-level", "error"}
		cmd := exec.Command(bin, args...)
		if !sharedHost() {
			cmd = exec.Command("chrt", append([]string{"--idle", "0", bin}, args...)...)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		f.cmds = append(f.cmds, cmd)
		f.dests = append(f.dests, filepath.Join(out, "out", "r000"))
	}
	b.Cleanup(f.stop)
	deadline := time.Now().Add(10 * time.Minute)
	for _, addr := range addrs {
		for !agentReady(addr) {
			if time.Now().After(deadline) {
				b.Fatalf("agent at %s never became ready", addr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return f
}

// sharedHost says whether the fleet's agents run as ordinary processes
// beside etcd (CONFSYNC_FLEET_SHARED=1). By default they stand in for
// agents on hosts of their own: they run under SCHED_IDLE, so they take
// only CPU etcd does not want, and keep their files on tmpfs, so that
// their cache writes and fsyncs do not queue behind etcd's WAL on the one
// disk. Otherwise what is measured is a hundred processes and etcd sharing
// two cores and a disk, not what the agents cost etcd.
func sharedHost() bool { return os.Getenv("CONFSYNC_FLEET_SHARED") == "1" }

// frozen says whether the agents are stopped (SIGSTOP) once they watch,
// for the timed writes (CONFSYNC_FLEET_FROZEN=1, one-watch agents only).
// What is left is etcd's own cost of H streamed watchers: it still
// encodes and writes every event to each of them, but no agent takes any
// CPU, so a PUT slower than idle is etcd's doing, not the agents'.
func frozen() bool { return os.Getenv("CONFSYNC_FLEET_FROZEN") == "1" }

// signal sends sig to every agent still running.
func (f *fleet) signal(sig syscall.Signal) {
	for _, c := range f.cmds {
		if c.ProcessState == nil {
			c.Process.Signal(sig)
		}
	}
}

// hostDir is a directory for one agent's files: on tmpfs unless the
// fleet shares the host.
func hostDir(b *testing.B) string {
	if sharedHost() {
		return b.TempDir()
	}
	dir, err := os.MkdirTemp("/dev/shm", "confsync-fleet-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func agentReady(addr string) bool {
	resp, err := http.Get("http://" + addr + "/status")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var st agent.Status
	return json.NewDecoder(resp.Body).Decode(&st) == nil && st.Ready
}

func (f *fleet) stop() {
	f.signal(syscall.SIGCONT)
	for _, c := range f.cmds {
		if c.ProcessState == nil {
			c.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, c := range f.cmds {
		if c.ProcessState == nil {
			c.Wait()
		}
	}
}

type writeFigures struct {
	p50, p99, cpuPerWrite    float64
	allFilesP50, allFilesMax float64
}

// putLatency times n PUTs of key, gap apart, and etcd's CPU over them;
// with a fleet, it also times how long until every agent's file shows
// each value.
func putLatency(b *testing.B, e *fleetEtcd, key string, n int, gap time.Duration, f *fleet) writeFigures {
	var w *fsnotify.Watcher
	if f != nil {
		var err error
		if w, err = fsnotify.NewWatcher(); err != nil {
			b.Fatal(err)
		}
		defer w.Close()
		for _, d := range f.dests {
			w.Add(filepath.Dir(d))
		}
	}
	var puts, spread []time.Duration
	cpu := cpuTime(e.pid)
	for i := 0; i < n; i++ {
		time.Sleep(gap)
		weight := 2000 + int(time.Now().UnixNano()%100000)
		start := time.Now()
		if _, err := e.keys.Set(context.Background(), key, fixture.NodeValue(weight, "yes"), nil); err != nil {
			b.Fatal(err)
		}
		puts = append(puts, time.Since(start))
		if f != nil {
			spread = append(spread, waitAll(b, w, f.dests, fmt.Sprintf("'weight':%d,", weight), start))
		}
	}
	fig := writeFigures{cpuPerWrite: float64((cpuTime(e.pid) - cpu).Microseconds()) / 1000 / float64(n)}
	fig.p50, fig.p99 = percentiles(puts)
	if f != nil {
		fig.allFilesP50, _ = percentiles(spread)
		sort.Slice(spread, func(i, j int) bool { return spread[i] < spread[j] })
		fig.allFilesMax = ms(spread[len(spread)-1])
	}
	return fig
}

// waitAll waits until every file holds want and returns the time from
// start until the last one did.
func waitAll(b *testing.B, w *fsnotify.Watcher, files []string, want string, start time.Time) time.Duration {
	pending := map[string]bool{}
	for _, f := range files {
		pending[f] = true
	}
	var last time.Duration
	deadline := time.After(2 * time.Minute)
	for len(pending) > 0 {
		for f := range pending {
			if raw, err := os.ReadFile(f); err == nil && strings.Contains(string(raw), want) {
				delete(pending, f)
				last = time.Since(start)
			}
		}
		if len(pending) == 0 {
			break
		}
		select {
		case <-w.Events:
		case <-time.After(5 * time.Millisecond):
		case <-deadline:
			b.Fatalf("%d agents never wrote %q", len(pending), want)
		}
	}
	return last
}

// cpuOver is the share of one core a process used over d.
func cpuOver(pid int, d time.Duration) float64 {
	before := cpuTime(pid)
	time.Sleep(d)
	return float64(cpuTime(pid)-before) / float64(d)
}

func percentiles(ds []time.Duration) (p50, p99 float64) {
	sorted := append([]time.Duration(nil), ds...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	return ms(sorted[len(sorted)/2]), ms(sorted[(len(sorted)*99)/100])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
