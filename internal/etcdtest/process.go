package etcdtest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	client "go.etcd.io/etcd/client/v2"
)

// DebianEtcd is the etcd a ProcessCluster runs by default: Debian's
// etcd-server package, etcd 3.4 with the v2 API, the version sites run.
const DebianEtcd = "/usr/bin/etcd"

// ProcessOptions tune a ProcessCluster. The zero value runs DebianEtcd.
type ProcessOptions struct {
	// Binary is the etcd to run. Empty means DebianEtcd, started with
	// --enable-v2=true; any other binary gets only the flags every etcd
	// knows (name, data dir, URLs, initial cluster, timing) and Args.
	Binary string
	// Args are extra flags appended to every member's command line.
	Args []string
}

// ProcessCluster is an etcd cluster whose members are child processes on
// free loopback ports, each with its own data directory. It is what a test
// needs when a separate process matters: a member killed with SIGKILL, one
// that hangs with its connections open (SIGSTOP), statistics read without
// racing the server (WatcherCount).
//
// Members are numbered from 0. Every child is killed when the test ends,
// and by the kernel if the test process dies first.
type ProcessCluster struct {
	binary   string
	args     []string
	token    string
	dir      string
	members  []*process
	launcher *launcher
	http     *statusClient
}

// process is one member: its identity (name, ports, data) outlives its
// processes, so Start after Kill or Stop brings back the same member.
type process struct {
	name      string
	dataDir   string
	logPath   string
	clientURL string
	peerURL   string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited; nil when never started
	paused bool
}

// NewProcessCluster starts an n-member cluster of Debian's etcd (or
// opts.Binary), waits until every member is healthy and a leader is
// elected, and kills it when the test ends. It fails the test when the
// binary is missing.
func NewProcessCluster(tb testing.TB, n int, opts ...ProcessOptions) *ProcessCluster {
	tb.Helper()
	var o ProcessOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	args := append([]string(nil), o.Args...)
	if o.Binary == "" {
		o.Binary = DebianEtcd
		args = append([]string{"--enable-v2=true"}, args...)
	}
	if _, err := os.Stat(o.Binary); err != nil {
		if o.Binary == DebianEtcd {
			tb.Fatalf("etcdtest: %s is missing: apt-get install etcd-server (scripts/test.sh installs it when run as root)", DebianEtcd)
		}
		tb.Fatalf("etcdtest: etcd binary: %v", err)
	}
	if n < 1 {
		tb.Fatalf("etcdtest: a cluster needs at least one member, not %d", n)
	}
	c := &ProcessCluster{
		binary:   o.Binary,
		args:     args,
		dir:      tb.TempDir(),
		launcher: newLauncher(),
		http:     newStatusClient(),
	}
	tb.Cleanup(func() { c.close(tb) })
	// Ports are chosen free but bound only by etcd, so another process can
	// take one in between; then the whole cluster starts again elsewhere.
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = c.boot(n, attempt); err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		tb.Fatalf("etcdtest: start %d-member etcd cluster: %v", n, err)
	}
	return c
}

// boot lays out n members on fresh ports and data directories and starts
// them all, killing what it started when the cluster does not come up.
func (c *ProcessCluster) boot(n, attempt int) error {
	c.killAll()
	c.token = "etcdtest-" + randomHex(8)
	members := make([]*process, n)
	var initial []string
	for i := range members {
		clientPort, err := freePort()
		if err != nil {
			return err
		}
		peerPort, err := freePort()
		if err != nil {
			return err
		}
		name := fmt.Sprintf("m%d", i)
		base := filepath.Join(c.dir, fmt.Sprintf("try%d-%s", attempt, name))
		members[i] = &process{
			name:      name,
			dataDir:   base + ".etcd",
			logPath:   base + ".log",
			clientURL: fmt.Sprintf("http://127.0.0.1:%d", clientPort),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		}
		initial = append(initial, name+"="+members[i].peerURL)
	}
	c.members = members
	for _, m := range c.members {
		if err := c.spawn(m, strings.Join(initial, ",")); err != nil {
			c.killAll()
			return err
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for _, m := range c.members {
		if err := c.waitFor(m, deadline, c.http.healthy); err != nil {
			c.killAll()
			return err
		}
	}
	return nil
}

// spawn starts m's process. initialCluster matters only on the first start:
// etcd reads the membership from its data directory afterwards.
func (c *ProcessCluster) spawn(m *process, initialCluster string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.exited != nil {
		select {
		case <-m.exited:
		default:
			return nil // running
		}
	}
	logFile, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logFile, "=== etcdtest: starting %s at %s\n", m.name, time.Now().Format(time.RFC3339Nano))
	args := append([]string{
		"--name", m.name,
		"--data-dir", m.dataDir,
		"--listen-client-urls", m.clientURL,
		"--advertise-client-urls", m.clientURL,
		"--listen-peer-urls", m.peerURL,
		"--initial-advertise-peer-urls", m.peerURL,
		"--initial-cluster", initialCluster,
		"--initial-cluster-token", c.token,
		"--initial-cluster-state", "new",
		"--heartbeat-interval", "50",
		"--election-timeout", "500",
	}, c.args...)
	cmd := exec.Command(c.binary, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// SIGKILL the child when the thread that started it dies, which the
	// launcher makes the same as when the test process dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c.launcher.do(func() { err = cmd.Start() })
	if err != nil {
		logFile.Close()
		return fmt.Errorf("start %s: %w", c.binary, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logFile.Close()
		close(exited)
	}()
	m.cmd, m.exited, m.paused = cmd, exited, false
	return nil
}

// waitFor polls ready(m's client URL) until it holds, failing early with
// the end of m's log when the process exits.
func (c *ProcessCluster) waitFor(m *process, deadline time.Time, ready func(url string) bool) error {
	m.mu.Lock()
	exited := m.exited
	m.mu.Unlock()
	for !ready(m.clientURL) {
		select {
		case <-exited:
			return fmt.Errorf("member %s exited:\n%s", m.name, tail(m.logPath, 15))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("member %s at %s not ready in time; its log ends:\n%s", m.name, m.clientURL, tail(m.logPath, 15))
		}
	}
	return nil
}

// member returns member i, panicking with a clear message when i is out of
// range (a bug in the test).
func (c *ProcessCluster) member(i int) *process {
	if i < 0 || i >= len(c.members) {
		panic(fmt.Sprintf("etcdtest: no member %d in a %d-member cluster", i, len(c.members)))
	}
	return c.members[i]
}

// Size is the number of members.
func (c *ProcessCluster) Size() int { return len(c.members) }

// URL is member i's client URL, for example http://127.0.0.1:41234.
func (c *ProcessCluster) URL(i int) string { return c.member(i).clientURL }

// PeerURL is member i's peer URL.
func (c *ProcessCluster) PeerURL(i int) string { return c.member(i).peerURL }

// Endpoints are every member's client URL, in member order.
func (c *ProcessCluster) Endpoints() []string {
	urls := make([]string, len(c.members))
	for i, m := range c.members {
		urls[i] = m.clientURL
	}
	return urls
}

// LogPath is the file member i's processes write their output to; it
// helps when a test fails (the harness prints its end then).
func (c *ProcessCluster) LogPath(i int) string { return c.member(i).logPath }

// Client is a v2 client that knows every member (useless on etcd 3.6).
func (c *ProcessCluster) Client() client.KeysAPI {
	return v2Client(c.Endpoints(), nil)
}

// Running reports whether member i's process is alive (paused counts).
func (c *ProcessCluster) Running(i int) bool {
	m := c.member(i)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.exited == nil {
		return false
	}
	select {
	case <-m.exited:
		return false
	default:
		return true
	}
}

// Kill sends member i SIGKILL and waits for it to die: a crash or power
// loss. Its connections are reset by the kernel. No-op when not running.
func (c *ProcessCluster) Kill(i int) {
	c.signalAndWait(c.member(i), syscall.SIGKILL, 0)
}

// Stop sends member i SIGTERM and waits for it to exit (a clean shutdown:
// a leader hands over leadership first), killing it after 30s. A paused
// member is resumed so that it can act on the signal.
func (c *ProcessCluster) Stop(i int) {
	c.signalAndWait(c.member(i), syscall.SIGTERM, 30*time.Second)
}

func (c *ProcessCluster) signalAndWait(m *process, sig syscall.Signal, grace time.Duration) {
	m.mu.Lock()
	cmd, exited, paused := m.cmd, m.exited, m.paused
	m.paused = false
	m.mu.Unlock()
	if exited == nil {
		return
	}
	cmd.Process.Signal(sig)
	if paused {
		cmd.Process.Signal(syscall.SIGCONT)
	}
	if grace == 0 {
		<-exited
		return
	}
	select {
	case <-exited:
	case <-time.After(grace):
		cmd.Process.Kill()
		<-exited
	}
}

// Start starts a stopped or killed member i again on the same data and
// ports, and waits until it serves HTTP (not until it has caught up, nor
// for a quorum: use Leader or WaitHealthy for those). No-op when running.
func (c *ProcessCluster) Start(tb testing.TB, i int) {
	tb.Helper()
	m := c.member(i)
	var initial []string
	for _, o := range c.members {
		initial = append(initial, o.name+"="+o.peerURL)
	}
	// The ports are the member's identity; when something else took one
	// while the member was down, wait for it to be let go.
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := c.spawn(m, strings.Join(initial, ","))
		if err == nil {
			err = c.waitFor(m, deadline, c.http.serving)
		}
		if err == nil {
			return
		}
		if !strings.Contains(err.Error(), "address already in use") || time.Now().After(deadline) {
			tb.Fatalf("etcdtest: restart member %d: %v", i, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Restart stops member i cleanly (SIGTERM) and starts it again.
func (c *ProcessCluster) Restart(tb testing.TB, i int) {
	tb.Helper()
	c.Stop(i)
	c.Start(tb, i)
}

// Pause freezes member i with SIGSTOP: a member that hangs with its
// connections open. Requests to it are accepted by the kernel and never
// answered; its peers see it go silent and, if it led, elect another
// leader. Pause returns once every thread of it has stopped. Resume
// thaws it.
func (c *ProcessCluster) Pause(i int) {
	m := c.member(i)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.exited == nil {
		return
	}
	select {
	case <-m.exited:
	default:
		m.cmd.Process.Signal(syscall.SIGSTOP)
		m.paused = true
		waitStopped(m.cmd.Process.Pid)
	}
}

// waitStopped waits (up to 10s) until every thread of process pid has
// stopped: SIGSTOP is delivered asynchronously, and a request sent before
// the last thread stops could still be answered.
func waitStopped(pid int) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && !allThreadsStopped(pid) {
		time.Sleep(time.Millisecond)
	}
}

func allThreadsStopped(pid int) bool {
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(stats) == 0 {
		return false
	}
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		// pid (comm) state ...: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}

// Resume continues a paused member i with SIGCONT.
func (c *ProcessCluster) Resume(i int) {
	m := c.member(i)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil && m.paused {
		m.cmd.Process.Signal(syscall.SIGCONT)
		m.paused = false
	}
}

// Leader waits up to a minute for a leader that a quorum of the members
// acknowledge, through the v3 status API (which etcd 3.4 and 3.6 both
// serve), and returns its index. Paused and stopped members are not
// asked. Right after pausing the leader the others still follow it until
// the election timeout: wait for the change with testutil.Eventually.
func (c *ProcessCluster) Leader(tb testing.TB) int {
	tb.Helper()
	urls := make([]string, len(c.members))
	for i, m := range c.members {
		if c.Running(i) && !c.isPaused(m) {
			urls[i] = m.clientURL
		}
	}
	i, err := c.http.leader(urls, time.Minute)
	if err != nil {
		tb.Fatalf("etcdtest: %v", err)
	}
	return i
}

// WaitHealthy waits up to a minute until every running, unpaused member
// answers /health with true (it sees a leader).
func (c *ProcessCluster) WaitHealthy(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for i, m := range c.members {
		if !c.Running(i) || c.isPaused(m) {
			continue
		}
		if err := c.waitFor(m, deadline, c.http.healthy); err != nil {
			tb.Fatalf("etcdtest: %v", err)
		}
	}
}

// ClusterID is the cluster's ID as etcd's X-Etcd-Cluster-Id header shows
// it (hexadecimal), asked of the first member that answers.
func (c *ProcessCluster) ClusterID(tb testing.TB) string {
	tb.Helper()
	var lastErr error
	for i, m := range c.members {
		if !c.Running(i) || c.isPaused(m) {
			continue
		}
		st, err := c.http.status(m.clientURL)
		if err == nil {
			return st.clusterID
		}
		lastErr = err
	}
	tb.Fatalf("etcdtest: no member tells the cluster ID: %v", lastErr)
	return ""
}

// WatcherCount is the number of v2 watchers member i holds, read from its
// /v2/stats/store. This is how tests count v2 watchers: the statistic is
// read by another process, so it cannot race the server (doing the same on
// an in-process etcd 3.5 is a data race inside etcd). Not for etcd 3.6,
// which has no v2 API.
func (c *ProcessCluster) WatcherCount(tb testing.TB, i int) int {
	tb.Helper()
	n, err := c.http.watchers(c.member(i).clientURL)
	if err != nil {
		tb.Fatalf("etcdtest: member %d: %v", i, err)
	}
	return n
}

func (c *ProcessCluster) isPaused(m *process) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.paused
}

// killAll kills every member's process and waits for them.
func (c *ProcessCluster) killAll() {
	for _, m := range c.members {
		c.signalAndWait(m, syscall.SIGKILL, 0)
	}
}

// close kills everything, shows the members' logs when the test failed,
// and ends the launcher.
func (c *ProcessCluster) close(tb testing.TB) {
	c.killAll()
	if tb.Failed() {
		for _, m := range c.members {
			tb.Logf("etcdtest: end of %s's log (%s):\n%s", m.name, m.logPath, tail(m.logPath, 20))
		}
	}
	c.launcher.close()
	c.http.close()
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// launcher starts child processes from one goroutine locked to its OS
// thread. Linux delivers Pdeathsig when the thread that forked a child
// ends, not the process; Go ends a thread whose locked goroutine returns,
// so a child forked from an arbitrary thread could be killed long before
// the test ends. The launcher's thread lives until close, after which no
// child of it is left.
type launcher struct {
	jobs chan func()
}

func newLauncher() *launcher {
	l := &launcher{jobs: make(chan func())}
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		for job := range l.jobs {
			job()
		}
	}()
	return l
}

// do runs f on the launcher's thread and waits for it.
func (l *launcher) do(f func()) {
	done := make(chan struct{})
	l.jobs <- func() { f(); close(done) }
	<-done
}

func (l *launcher) close() { close(l.jobs) }
