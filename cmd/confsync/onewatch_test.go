package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/confsync/confsync/agent"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testpki"
	"github.com/confsync/confsync/internal/testutil"
	client "go.etcd.io/etcd/client/v2"
)

// fleetSite is a conftool-like tree for the one-watch tests: 60 clusters
// of 2 services of 3 hosts, and a confdir of 200 resources over 110
// distinct roots: 160 pool files over 100 pools (clusters c10-c59) and 40
// cluster-wide files over clusters c0-c9.
type fleetSite struct {
	dir, out string
}

const (
	poolsPrefix   = "/conftool/v1/pools/eqiad"
	fleetPoolTmpl = "{{range gets \"/*\"}}{{base .Key}}={{.Value}}\n{{end}}"
	fleetClusTmpl = "{{range gets \"/*/*\"}}{{.Key}}={{.Value}}\n{{end}}"
)

func hostKey(cluster, svc, host int) string {
	return fmt.Sprintf("%s/c%d/s%d/h%d", poolsPrefix, cluster, svc, host)
}

func seedFleet(t *testing.T, keys client.KeysAPI) {
	t.Helper()
	for c := 0; c < 60; c++ {
		for s := 0; s < 2; s++ {
			for h := 0; h < 3; h++ {
				if _, err := keys.Set(context.Background(), hostKey(c, s, h), "pooled", nil); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

func newFleetSite(t *testing.T) *fleetSite {
	t.Helper()
	files := map[string]string{"templates/pool.tmpl": fleetPoolTmpl, "templates/cluster.tmpl": fleetClusTmpl}
	for i := 0; i < 200; i++ {
		src, prefix := "pool.tmpl", fmt.Sprintf("%s/c%d/s%d", poolsPrefix, 10+(i%100)/2, i%2)
		if i >= 160 {
			src, prefix = "cluster.tmpl", fmt.Sprintf("%s/c%d", poolsPrefix, i%10)
		}
		files[fmt.Sprintf("conf.d/r%03d.toml", i)] = fmt.Sprintf(
			"[template]\nsrc = %q\ndest = \"{{out}}/r%03d\"\nprefix = %q\nkeys = [\"/\"]\n", src, i, prefix)
	}
	dir, out := writeConfdir(t, files)
	return &fleetSite{dir: dir, out: out}
}

// runningAgent is the confsync binary running as an agent.
type runningAgent struct {
	cmd     *exec.Cmd
	metrics string
	logs    *testutil.SyncBuffer
}

func startAgentProcess(t *testing.T, args ...string) *runningAgent {
	t.Helper()
	a := &runningAgent{metrics: freeAddr(t), logs: &testutil.SyncBuffer{}}
	a.cmd = confsyncProcess(t, append([]string{"agent", "-metrics-addr", a.metrics, "-state-dir", t.TempDir(),
		"-log-level", "info"}, args...)...)
	a.cmd.Stderr = a.logs
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.cmd.Process.Signal(syscall.SIGCONT)
		a.cmd.Process.Signal(syscall.SIGTERM)
		a.cmd.Wait()
		if t.Failed() {
			t.Logf("agent log:\n%s", a.logs.String())
		}
	})
	return a
}

func (a *runningAgent) status(t *testing.T) agent.Status {
	t.Helper()
	var st agent.Status
	resp, err := http.Get("http://" + a.metrics + "/status")
	if err != nil {
		return st
	}
	defer resp.Body.Close()
	json.NewDecoder(resp.Body).Decode(&st)
	return st
}

// connsTo counts pid's established TCP connections to the given host:port
// addresses, from the sockets among its file descriptors.
func connsTo(t *testing.T, pid int, addrs []string) int {
	t.Helper()
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	ports := map[int64]bool{}
	for _, a := range addrs {
		_, p, _ := strings.Cut(a, ":")
		n, _ := strconv.ParseInt(p, 10, 64)
		ports[n] = true
	}
	n := 0
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "01" || !inodes[fields[9]] {
				continue
			}
			_, hexPort, _ := strings.Cut(fields[2], ":")
			if port, err := strconv.ParseInt(hexPort, 16, 64); err == nil && ports[port] {
				n++
			}
		}
		f.Close()
	}
	return n
}

func hostsOf(endpoints []string) []string {
	var out []string
	for _, e := range endpoints {
		u, _ := url.Parse(e)
		out = append(out, u.Host)
	}
	return out
}

// connSampler records the most connections pid held at once, sampled
// every 20ms for the whole test.
type connSampler struct {
	mu   sync.Mutex
	max  int
	stop chan struct{}
	done chan struct{}
}

func sampleConns(t *testing.T, pid int, addrs []string) *connSampler {
	s := &connSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			n := connsTo(t, pid, addrs)
			s.mu.Lock()
			s.max = max(s.max, n)
			s.mu.Unlock()
			select {
			case <-s.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { close(s.stop); <-s.done })
	return s
}

func (s *connSampler) most() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.max
}

// oneWatcher waits until the cluster's running members hold exactly one v2
// watcher between them, and checks it stays so for a moment.
func oneWatcher(t *testing.T, c *etcdtest.ProcessCluster, when string) {
	t.Helper()
	count := func() int {
		n := 0
		for i := 0; i < c.Size(); i++ {
			if c.Running(i) {
				n += c.WatcherCount(t, i)
			}
		}
		return n
	}
	testutil.Eventually(t, "one etcd watcher "+when, func() bool { return count() == 1 })
	for i := 0; i < 10; i++ {
		time.Sleep(50 * time.Millisecond)
		if n := count(); n != 1 {
			t.Fatalf("%s: etcd holds %d watchers", when, n)
		}
	}
}

func (s *fleetSite) fileHas(name, line string) func() bool {
	return func() bool {
		b, _ := os.ReadFile(filepath.Join(s.out, name))
		return strings.Contains(string(b), line)
	}
}

// 200 resources over 110 roots are followed with one connection to etcd
// and one watcher in it, through the failover to another member, a
// restart of every member, and a forced 401; no update is missed.
func TestAgentHoldsOneConnectionAndOneWatcher(t *testing.T) {
	cluster := etcdtest.NewProcessCluster(t, 3)
	endpoints := cluster.Endpoints()
	followThroughFaults(t, cluster, endpoints, nil, faults{
		fail: func(used int) (restore func()) {
			cluster.Kill(used)
			return func() { cluster.Start(t, used) }
		},
		// The agent is stopped while thousands of big events fill its
		// stream, so etcd drops the watcher and the index leaves the
		// history.
		outage: func(a *runningAgent, write func(n, size int)) {
			a.cmd.Process.Signal(syscall.SIGSTOP)
			write(3000, 2048)
			a.cmd.Process.Signal(syscall.SIGCONT)
		},
	})
}

// The same through two read-only TLS gates, each in front of the whole
// cluster: the agent holds one connection (to a gate), etcd one watcher,
// and the agent moves to the other gate when the one it uses dies.
func TestAgentHoldsOneWatchThroughTheGate(t *testing.T) {
	cluster := etcdtest.NewProcessCluster(t, 3)
	pki := testpki.New(t)
	gates := []*gateProcess{startGate(t, pki, cluster.Endpoints(), ""), nil}
	gates[1] = startGate(t, pki, cluster.Endpoints(), "")
	endpoints := []string{gates[0].url, gates[1].url}
	followThroughFaults(t, cluster, endpoints, []string{"-client-ca-keys", pki.CAFile}, faults{
		fail: func(used int) (restore func()) {
			gates[used].stop()
			return func() { gates[used] = startGate(t, pki, cluster.Endpoints(), gates[used].addr) }
		},
		// Both gates are down while more events than etcd's history holds
		// are written.
		outage: func(_ *runningAgent, write func(n, size int)) {
			for _, g := range gates {
				g.stop()
			}
			write(1100, 16)
			for i, g := range gates {
				gates[i] = startGate(t, pki, cluster.Endpoints(), g.addr)
			}
		},
	})
	// A write through a read-only gate is refused.
	req, _ := http.NewRequest(http.MethodPut, gates[1].url+"/v2/keys"+hostKey(1, 1, 1), strings.NewReader("value=x"))
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(false)}}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("write through the read-only gate: %s", resp.Status)
	}
}

// gateProcess is confsync gate running as its own process.
type gateProcess struct {
	cmd       *exec.Cmd
	addr, url string
}

func startGate(t *testing.T, pki *testpki.PKI, upstreams []string, addr string) *gateProcess {
	t.Helper()
	if addr == "" {
		addr = freeAddr(t)
	}
	g := &gateProcess{addr: addr, url: "https://" + addr}
	g.cmd = confsyncProcess(t, "gate", "-listen", addr, "-upstream", strings.Join(upstreams, ","),
		"-tls-cert", pki.ServerCert, "-tls-key", pki.ServerKey, "-read-only", "-access-log", "off", "-log-level", "warn")
	logs := &testutil.SyncBuffer{}
	g.cmd.Stderr = logs
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.stop()
		if t.Failed() {
			t.Logf("gate %s log:\n%s", addr, tail(logs.String()))
		}
	})
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(false)}}
	testutil.Eventually(t, "the gate at "+addr, func() bool {
		resp, err := c.Get(g.url + "/version")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == http.StatusOK
	})
	return g
}

func (g *gateProcess) stop() {
	if g.cmd.ProcessState == nil {
		g.cmd.Process.Kill()
		g.cmd.Wait()
	}
}

// faults are what followThroughFaults plays.
type faults struct {
	// fail makes the endpoint the agent uses fail and returns how to bring
	// it back.
	fail func(used int) (restore func())
	// outage keeps the agent from etcd while write(n, size) writes n events
	// of size bytes, enough to leave etcd's history behind.
	outage func(a *runningAgent, write func(n, size int))
}

// followThroughFaults runs an agent over the fleet site against
// endpoints and plays the faults, checking after each that the agent holds
// one connection and etcd one watcher, and that no update was missed.
func followThroughFaults(t *testing.T, cluster *etcdtest.ProcessCluster, endpoints, extra []string, f faults) {
	keys := cluster.Client()
	seedFleet(t, keys)
	site := newFleetSite(t)
	a := startAgentProcess(t, append([]string{"-confdir", site.dir, "-node", strings.Join(endpoints, ",")}, extra...)...)
	testutil.Eventually(t, "every resource rendered", func() bool { return a.status(t).Ready })
	st := a.status(t)
	if len(st.Roots) <= 100 || st.Watch.Prefix != poolsPrefix {
		t.Fatalf("%d roots, watch on %q; want more than 100 roots under one watch of %s", len(st.Roots), st.Watch.Prefix, poolsPrefix)
	}
	conns := sampleConns(t, a.cmd.Process.Pid, hostsOf(endpoints))
	oneWatcher(t, cluster, "after start")

	change := func(c, s, h int, v string) {
		t.Helper()
		if _, err := keys.Set(context.Background(), hostKey(c, s, h), v, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Streamed once an event came live and the path proved it streams;
	// the next change arrives on the stream.
	change(20, 1, 2, "depooled")
	testutil.Eventually(t, "the first change", site.fileHas("r021", "h2=depooled"))
	testutil.Eventually(t, "a streamed watch", func() bool { return a.status(t).Watch.Mode == "stream" })
	change(20, 1, 2, "pooled-again")
	testutil.Eventually(t, "the second change", site.fileHas("r021", "h2=pooled-again"))

	// Failover: the endpoint in use dies.
	used := -1
	for i, ep := range endpoints {
		if ep == a.status(t).Watch.Endpoint {
			used = i
		}
	}
	restore := f.fail(used)
	change(30, 0, 0, "after-failover")
	testutil.Eventually(t, "the change after the failover", site.fileHas("r040", "h0=after-failover"))
	oneWatcher(t, cluster, "after the failover")
	restore()

	// Every member restarts, one after the other (a rolling upgrade).
	for i := 0; i < cluster.Size(); i++ {
		cluster.Restart(t, i)
		cluster.WaitHealthy(t)
	}
	change(40, 1, 1, "after-restart")
	testutil.Eventually(t, "the change after the restart", site.fileHas("r061", "h1=after-restart"))
	oneWatcher(t, cluster, "after the restart")

	// A forced 401.
	f.outage(a, func(n, size int) {
		big := strings.Repeat("x", size)
		for i := 0; i < n; i++ {
			change(50, 0, 1, fmt.Sprintf("%d-%s", i, big))
		}
		change(50, 0, 1, "after-401")
	})
	testutil.Eventually(t, "the change after the 401", site.fileHas("r080", "h1=after-401"))
	testutil.Eventually(t, "the re-read counted", func() bool {
		resp, err := http.Get("http://" + a.metrics + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "confsync_resyncs_total{") && strings.Contains(sc.Text(), `reason="history-cleared"`) {
				return true
			}
		}
		return false
	})
	oneWatcher(t, cluster, "after the 401")
	if n := conns.most(); n != 1 {
		t.Fatalf("the agent held up to %d connections at once, want 1", n)
	}
	// And every file is what etcd holds.
	for i := 0; i < 160; i += 37 {
		c, s := 10+(i%100)/2, i%2
		resp, err := keys.Get(context.Background(), hostKey(c, s, 0), nil)
		if err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, "r"+fmt.Sprint(i), site.fileHas(fmt.Sprintf("r%03d", i), "h0="+resp.Node.Value))
	}
}
