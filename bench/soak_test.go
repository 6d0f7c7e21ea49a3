package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/fixture"
	"github.com/confsync/confsync/internal/testpki"
	client "go.etcd.io/etcd/client/v2"
)

// BenchmarkSoak runs the whole site for CONFSYNC_SOAK (default 10m):
// a three-member master etcd and a replica (Debian etcd 3.4 processes), the
// mirror between them, a read-only TLS gate in front of the replica, a
// relay reading through the gate, and an agent with 200 resources reading
// through the relay, every one the real binary. Load: writes on the master,
// 300 long-poll watchers and a stream of GETs on the relay, GETs on the
// gate. Faults every 40s, in turn: the master's leader killed, the replica
// hung, connections reset, the relay's upstream blackholed, the replica
// down, a slow network to the agent. It reports memory, goroutines and
// open files of each daemon after warm-up and at the end, and checks that
// everything converged.
//
//	CONFSYNC_SOAK=10m go test -run '^$' -bench Soak -benchtime 1x -timeout 40m ./bench/
func BenchmarkSoak(b *testing.B) {
	duration := 10 * time.Minute
	if v := os.Getenv("CONFSYNC_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("CONFSYNC_SOAK=%q: %v", v, err)
		}
		duration = d
	}
	s := newSoakSite(b)
	ctx, stop := context.WithCancel(context.Background())
	var load sync.WaitGroup
	stats := &soakStats{}
	load.Add(3)
	go func() { defer load.Done(); s.write(ctx, stats) }()
	go func() { defer load.Done(); s.watch(ctx, 300, stats) }()
	go func() { defer load.Done(); s.read(ctx, stats) }()
	time.Sleep(30 * time.Second) // warm-up under load
	start := s.sample(b)
	faults := s.playFaults(ctx, duration, b)
	stop()
	load.Wait()
	s.converge(b)
	time.Sleep(10 * time.Second) // let retries and idle connections settle
	end := s.sample(b)
	for _, d := range soakDaemons {
		b.ReportMetric(start[d].rssMiB, d+"-rss-start-MiB")
		b.ReportMetric(end[d].rssMiB, d+"-rss-end-MiB")
		b.ReportMetric(float64(start[d].goroutines), d+"-goroutines-start")
		b.ReportMetric(float64(end[d].goroutines), d+"-goroutines-end")
		b.ReportMetric(float64(start[d].fds), d+"-fds-start")
		b.ReportMetric(float64(end[d].fds), d+"-fds-end")
	}
	b.ReportMetric(float64(stats.writes.Load()), "writes")
	b.ReportMetric(float64(stats.events.Load()), "watch-events")
	b.ReportMetric(float64(stats.rereads.Load()), "watcher-401-rereads")
	b.ReportMetric(float64(stats.gets.Load()), "gets")
	b.ReportMetric(float64(stats.getErrors.Load()), "get-errors")
	b.ReportMetric(float64(faults), "faults")
	b.Logf("soak %s: %d faults, %d writes, %d watch events, %d 401 re-reads, %d GETs (%d failed)", duration, faults,
		stats.writes.Load(), stats.events.Load(), stats.rereads.Load(), stats.gets.Load(), stats.getErrors.Load())
	for _, d := range soakDaemons {
		b.Logf("%-6s RSS %.1f -> %.1f MiB, goroutines %d -> %d, open files %d -> %d", d, start[d].rssMiB, end[d].rssMiB,
			start[d].goroutines, end[d].goroutines, start[d].fds, end[d].fds)
	}
}

var soakDaemons = []string{"agent", "relay", "gate", "mirror"}

type soakSite struct {
	master, replica *etcdtest.ProcessCluster
	tree            *fixture.Site
	pools           []string
	procs           map[string]*exec.Cmd
	metrics         map[string]string // daemon -> metrics host:port
	toAgent         *etcdtest.FaultProxy
	toGate          *etcdtest.FaultProxy
	relayURL        string
	gateURL         string
	gateClient      *http.Client
	agentOut        string
}

type soakStats struct {
	writes, events, rereads, gets, getErrors atomic.Int64
}

func newSoakSite(b *testing.B) *soakSite {
	bin := confsyncBinary(b)
	s := &soakSite{procs: map[string]*exec.Cmd{}, metrics: map[string]string{}}
	s.master = etcdtest.NewProcessCluster(b, 3)
	s.replica = etcdtest.NewProcessCluster(b, 1)
	s.tree = fixture.Generate(fixture.Options{Seed: 1, Keys: 2000})
	if err := s.tree.Load(context.Background(), s.master.Client()); err != nil {
		b.Fatal(err)
	}
	site := &site{tree: s.tree}
	dir, pools := site.confdir(b, 200)
	s.pools = pools
	pki := testpki.New(b)
	s.gateClient = &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(false)}, Timeout: 5 * time.Second}
	free := func() string {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		defer l.Close()
		return l.Addr().String()
	}
	start := func(name string, args ...string) {
		cmd := exec.Command(bin, args...)
		logf, _ := os.Create(filepath.Join(b.TempDir(), name+".log"))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		s.procs[name] = cmd
		b.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	}
	mirrorAddr := free()
	_, mirrorPort, _ := net.SplitHostPort(mirrorAddr)
	s.metrics["mirror"] = mirrorAddr
	start("mirror", "mirror", "--reload", "--src-prefix", fixture.Prefix, "--dst-prefix", "/",
		"--port", mirrorPort, "--listen-address", "127.0.0.1", "--poll-timeout", "2s",
		strings.Join(s.master.Endpoints(), ","), s.replica.URL(0))
	gateAddr, gateMetrics := free(), free()
	s.gateURL, s.metrics["gate"] = "https://"+gateAddr, gateMetrics
	start("gate", "gate", "-listen", gateAddr, "-upstream", s.replica.URL(0), "-tls-cert", pki.ServerCert,
		"-tls-key", pki.ServerKey, "-read-only", "-metrics-addr", gateMetrics,
		"-access-log", filepath.Join(b.TempDir(), "access.log"), "-log-level", "warn")
	s.toGate = etcdtest.NewFaultProxy(b, gateAddr)
	relayAddr, relayMetrics := free(), free()
	s.relayURL, s.metrics["relay"] = "http://"+relayAddr, relayMetrics
	start("relay", "relay", "-listen", relayAddr, "-node", "https://"+s.toGate.Addr(), "-client-ca-keys", pki.CAFile,
		"-prefix", fixture.Prefix, "-cache", filepath.Join(b.TempDir(), "relay.json"), "-metrics-addr", relayMetrics, "-log-level", "warn")
	s.toAgent = etcdtest.NewFaultProxy(b, relayAddr)
	agentMetrics := free()
	s.metrics["agent"], s.agentOut = agentMetrics, b.TempDir()
	start("agent", "agent", "-confdir", dir, "-node", s.toAgent.URL(), "-dest-root", s.agentOut,
		"-state-dir", b.TempDir(), "-metrics-addr", agentMetrics, "-log-level", "warn")
	deadline := time.Now().Add(5 * time.Minute)
	for !agentReady(agentMetrics) {
		if time.Now().After(deadline) {
			b.Fatal("the agent never rendered everything through mirror, gate and relay")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return s
}

// write changes a pool host on the master about 20 times a second.
func (s *soakSite) write(ctx context.Context, st *soakStats) {
	keys := s.master.Client()
	for i := 0; ctx.Err() == nil; i++ {
		pool := s.pools[rand.IntN(len(s.pools))]
		hosts := s.tree.Under(fixture.Prefix + pool)
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := keys.Set(wctx, hosts[rand.IntN(len(hosts))], fixture.NodeValue(i%100, "yes"), nil)
		cancel()
		if err == nil {
			st.writes.Add(1)
		}
		sleepCtx(ctx, 50*time.Millisecond)
	}
}

// watch runs n pybal-like watchers on the relay: a recursive GET of a
// pool, then long polls from the next index, re-reading on 401.
func (s *soakSite) watch(ctx context.Context, n int, st *soakStats) {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pool := "/v2/keys" + fixture.Prefix + s.pools[rand.IntN(len(s.pools))]
			c := &http.Client{}
			var next uint64
			for ctx.Err() == nil {
				if next == 0 {
					next = s.index(ctx, c, pool)
					if next == 0 {
						sleepCtx(ctx, time.Second)
						continue
					}
					next++
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet,
					fmt.Sprintf("%s%s?wait=true&recursive=true&waitIndex=%d", s.relayURL, pool, next), nil)
				resp, err := c.Do(req)
				if err != nil {
					sleepCtx(ctx, time.Second)
					continue
				}
				var ev struct {
					ErrorCode int `json:"errorCode"`
					Node      struct {
						ModifiedIndex uint64 `json:"modifiedIndex"`
					} `json:"node"`
				}
				json.NewDecoder(resp.Body).Decode(&ev)
				resp.Body.Close()
				switch {
				case ev.ErrorCode == 401:
					st.rereads.Add(1)
					next = 0
				case ev.Node.ModifiedIndex >= next:
					st.events.Add(1)
					next = ev.Node.ModifiedIndex + 1
				}
			}
		}()
	}
	wg.Wait()
}

// index reads a pool and returns X-Etcd-Index, 0 on failure.
func (s *soakSite) index(ctx context.Context, c *http.Client, pool string) uint64 {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.relayURL+pool+"?recursive=true", nil)
	resp, err := c.Do(req)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	idx, _ := strconv.ParseUint(resp.Header.Get("X-Etcd-Index"), 10, 64)
	return idx
}

// read sends about 50 GETs a second to the relay and 10 to the gate.
func (s *soakSite) read(ctx context.Context, st *soakStats) {
	c := &http.Client{Timeout: 5 * time.Second}
	for i := 0; ctx.Err() == nil; i++ {
		url, cl := s.relayURL, c
		if i%6 == 5 {
			url, cl = s.gateURL, s.gateClient
		}
		pool := s.pools[rand.IntN(len(s.pools))]
		resp, err := cl.Get(url + "/v2/keys" + fixture.Prefix + pool + "?recursive=true")
		st.gets.Add(1)
		if err != nil {
			st.getErrors.Add(1)
		} else {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				st.getErrors.Add(1)
			}
		}
		sleepCtx(ctx, 16*time.Millisecond)
	}
}

// playFaults injects a fault every 40s until duration is over and
// returns how many it played.
func (s *soakSite) playFaults(ctx context.Context, duration time.Duration, b *testing.B) int {
	faults := []struct {
		name string
		do   func()
	}{
		{"master leader killed", func() {
			l := s.master.Leader(b)
			s.master.Kill(l)
			time.Sleep(10 * time.Second)
			s.master.Start(b, l)
		}},
		{"replica hung", func() {
			s.replica.Pause(0)
			time.Sleep(8 * time.Second)
			s.replica.Resume(0)
		}},
		{"connections reset", func() {
			s.toAgent.ResetConnections()
			s.toGate.ResetConnections()
		}},
		{"relay's upstream blackholed", func() {
			s.toGate.Blackhole()
			time.Sleep(15 * time.Second)
			s.toGate.PassThrough()
		}},
		{"replica down", func() {
			s.replica.Stop(0)
			time.Sleep(15 * time.Second)
			s.replica.Start(b, 0)
		}},
		{"slow network to the agent", func() {
			s.toAgent.Drip(2000)
			time.Sleep(10 * time.Second)
			s.toAgent.PassThrough()
		}},
	}
	end := time.Now().Add(duration)
	n := 0
	for time.Now().Before(end) {
		f := faults[n%len(faults)]
		b.Logf("%s: %s", time.Now().Format("15:04:05"), f.name)
		f.do()
		n++
		sleepCtx(ctx, min(40*time.Second, time.Until(end)))
	}
	return n
}

// converge waits until the mirror has caught up and the relay and the
// agent show what the master holds.
func (s *soakSite) converge(b *testing.B) {
	deadline := time.Now().Add(3 * time.Minute)
	wait := func(what string, ok func() bool) {
		for !ok() {
			if time.Now().After(deadline) {
				b.Fatalf("soak: %s never converged", what)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	wait("the mirror's lag", func() bool {
		resp, err := http.Get("http://" + s.metrics["mirror"] + "/lag")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		return strings.TrimSpace(line) == "0"
	})
	keys := s.master.Client()
	for _, pool := range s.pools[:20] {
		want, err := keys.Get(context.Background(), fixture.Prefix+pool, &client.GetOptions{Recursive: true, Sort: true})
		if err != nil {
			b.Fatal(err)
		}
		wait("the relay's "+pool, func() bool {
			resp, err := http.Get(s.relayURL + "/v2/keys" + fixture.Prefix + pool + "?recursive=true&sorted=true")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			var got client.Response
			json.NewDecoder(resp.Body).Decode(&got)
			return got.Node != nil && sameLeaves(got.Node, want.Node)
		})
	}
	wait("the agent", func() bool {
		resp, err := http.Get("http://" + s.metrics["agent"] + "/status")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct {
			Ready     bool
			Resources []struct{ Healthy bool }
			Watch     struct{ Index uint64 }
		}
		json.NewDecoder(resp.Body).Decode(&st)
		for _, r := range st.Resources {
			if !r.Healthy {
				return false
			}
		}
		return st.Ready
	})
}

func sameLeaves(a, b *client.Node) bool {
	la, lb := map[string]string{}, map[string]string{}
	var walk func(n *client.Node, m map[string]string)
	walk = func(n *client.Node, m map[string]string) {
		if !n.Dir {
			m[n.Key] = n.Value
		}
		for _, c := range n.Nodes {
			walk(c, m)
		}
	}
	walk(a, la)
	walk(b, lb)
	if len(la) != len(lb) {
		return false
	}
	for k, v := range la {
		if lb[k] != v {
			return false
		}
	}
	return true
}

type procSample struct {
	rssMiB     float64
	goroutines int
	fds        int
}

func (s *soakSite) sample(b *testing.B) map[string]procSample {
	out := map[string]procSample{}
	for _, d := range soakDaemons {
		pid := s.procs[d].Process.Pid
		var ps procSample
		if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
			for _, line := range strings.Split(string(raw), "\n") {
				if strings.HasPrefix(line, "VmRSS:") {
					kb, _ := strconv.Atoi(strings.Fields(line)[1])
					ps.rssMiB = float64(kb) / 1024
				}
			}
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		ps.fds = len(fds)
		ps.goroutines = goroutines(s.metrics[d])
		out[d] = ps
	}
	return out
}

// goroutines reads go_goroutines from a daemon's /metrics.
func goroutines(addr string) int {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return -1
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
