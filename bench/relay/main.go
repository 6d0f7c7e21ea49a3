// Command relay measures what N long-poll watchers cost when they wait on
// etcd directly and when they wait on a confsync relay in front of it, in
// one run on this machine (issue "confsync relay", Benchmarks).
//
//	go run ./bench/relay                      # 10,000 watchers, 20 writes
//	go run ./bench/relay -n 1000 -writes 10   # quicker
//
// What runs, all on loopback, each a process of its own: Debian's etcd 3.4
// (data in /dev/shm), the confsync binary built from this tree running
// `confsync relay`, and this program again as the load generator
// (`relay watchers ...`), whose goroutines hold N watchers, one connection
// each, re-issuing GET <pool>?wait=true&recursive=true&waitIndex=<last+1>
// after every event, as pybal and confd do.
//
// For each setup (no watchers, N watchers on etcd, N watchers on the
// relay) it makes spaced writes to one pool key and measures: etcd's CPU
// per write (from /proc, including the watchers' re-registration), PUT
// latency, and the time from the PUT being sent to each watcher having
// the event (p50 and max over the watchers, median over the writes); for
// the relay also its CPU per write and its resident memory; and how many
// watchers etcd holds (/v2/stats/store). "Having the event" is the
// kernel's receive timestamp (SO_TIMESTAMPNS) of the answer on the
// watcher's socket, so the load generator's own scheduling is not
// counted. Then GET throughput (wrk) of etcd and of the relay, taking
// turns over -rounds rounds, medians. The table goes to stdout, progress
// to stderr.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "watchers" {
		os.Exit(runWatchers(os.Args[2:]))
	}
	os.Exit(runBench(os.Args[1:]))
}

type benchFlags struct {
	n, writes, keys int
	rounds          int
	spacing         time.Duration
	wrkDuration     string
	etcdBin         string
	loadIdle        bool
	noIOURing       bool
}

func runBench(args []string) int {
	var f benchFlags
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.IntVar(&f.n, "n", 10000, "watchers")
	fs.IntVar(&f.writes, "writes", 20, "writes per setup")
	fs.IntVar(&f.keys, "keys", 50, "keys in the watched pool")
	fs.DurationVar(&f.spacing, "spacing", 300*time.Millisecond, "pause between a write's last delivery and the next write")
	fs.StringVar(&f.wrkDuration, "wrk-duration", "10s", "duration of each wrk run")
	fs.IntVar(&f.rounds, "rounds", 3, "wrk rounds (etcd and the relay take turns; medians are reported)")
	fs.StringVar(&f.etcdBin, "etcd", "/usr/bin/etcd", "etcd binary (3.4, v2 API)")
	fs.BoolVar(&f.loadIdle, "load-idle", false, "run the load generator under SCHED_IDLE (chrt --idle), standing in for clients on hosts of their own: it gets only the CPU etcd and the relay leave")
	fs.BoolVar(&f.noIOURing, "no-io-uring", false, "run the relay with -no-io-uring: a write(2) per answer")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	b, err := newBench(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay bench:", err)
		return 1
	}
	defer b.close()
	if err := b.run(); err != nil {
		fmt.Fprintln(os.Stderr, "relay bench:", err)
		return 1
	}
	return 0
}

type bench struct {
	f        benchFlags
	dir      string
	self     string // this program, for the load process
	binary   string // confsync
	etcd     *proc
	etcdURL  string
	relay    *proc
	relayURL string
	procs    []*proc
}

// proc is a child process.
type proc struct {
	cmd  *exec.Cmd
	name string
}

func newBench(f benchFlags) (*bench, error) {
	base := "/dev/shm"
	if st, err := os.Stat(base); err != nil || !st.IsDir() {
		base = os.TempDir()
	}
	dir, err := os.MkdirTemp(base, "relay-bench-")
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return &bench{f: f, dir: dir, self: self}, nil
}

func (b *bench) close() {
	for _, p := range b.procs {
		p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
		}
	}
	os.RemoveAll(b.dir)
}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

func (b *bench) run() error {
	raiseFileLimit()
	logf("building confsync")
	b.binary = filepath.Join(b.dir, "confsync")
	build := exec.Command("go", "build", "-o", b.binary, "./cmd/confsync")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/confsync (run from the repository root): %w", err)
	}
	if err := b.startEtcd(); err != nil {
		return err
	}
	for i := 0; i < b.f.keys; i++ {
		if _, err := put(b.etcdURL, poolKey(i), `{"weight":10,"pooled":"yes"}`); err != nil {
			return err
		}
	}
	if err := b.startRelay(); err != nil {
		return err
	}

	var results []result
	logf("no watchers: %d writes", b.f.writes)
	r, err := b.measure("etcd, no watchers", "", 0)
	if err != nil {
		return err
	}
	results = append(results, r)
	for _, target := range []struct{ name, url string }{{"etcd direct", b.etcdURL}, {"relay", b.relayURL}} {
		logf("%d watchers on %s: %d writes", b.f.n, target.name, b.f.writes)
		r, err := b.measure(fmt.Sprintf("%d watchers on %s", b.f.n, target.name), target.url, b.f.n)
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	printResults(results)

	logf("GET throughput (wrk, %d rounds)", b.f.rounds)
	var gets []getResult
	for _, q := range []struct{ what, path string }{
		{"one key", "/v2/keys" + poolKey(1)},
		{"the pool, recursive", "/v2/keys/bench/pool?recursive=true"},
	} {
		for _, target := range []struct{ name, url string }{{"etcd direct", b.etcdURL}, {"relay", b.relayURL}} {
			gets = append(gets, getResult{what: q.what, target: target.name})
		}
	}
	runs := make([][]getResult, len(gets))
	for round := 0; round < b.f.rounds; round++ {
		for i := range gets {
			base := b.etcdURL
			if gets[i].target == "relay" {
				base = b.relayURL
			}
			path := "/v2/keys" + poolKey(1)
			if gets[i].what != "one key" {
				path = "/v2/keys/bench/pool?recursive=true"
			}
			g, err := b.wrk(base + path)
			if err != nil {
				return err
			}
			logf("  round %d, %s, %s: %.0f req/s %s", round+1, gets[i].target, gets[i].what, g.rps, g.errors)
			runs[i] = append(runs[i], g)
		}
	}
	for i := range gets {
		sort.Slice(runs[i], func(a, b int) bool { return runs[i][a].rps < runs[i][b].rps })
		m := runs[i][len(runs[i])/2]
		m.what, m.target = gets[i].what, gets[i].target
		gets[i] = m
	}
	printGets(gets)
	return nil
}

func poolKey(i int) string { return fmt.Sprintf("/bench/pool/host%04d", i) }

func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (b *bench) start(name string, args ...string) (*proc, error) {
	logFile, err := os.Create(filepath.Join(b.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, name: name}
	b.procs = append(b.procs, p)
	return p, nil
}

func (b *bench) startEtcd() error {
	cp, err := freePort()
	if err != nil {
		return err
	}
	pp, err := freePort()
	if err != nil {
		return err
	}
	b.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", cp)
	peer := fmt.Sprintf("http://127.0.0.1:%d", pp)
	b.etcd, err = b.start("etcd", b.f.etcdBin, "--enable-v2=true", "--name", "bench", "--data-dir", filepath.Join(b.dir, "etcd"),
		"--listen-client-urls", b.etcdURL, "--advertise-client-urls", b.etcdURL,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "bench="+peer)
	if err != nil {
		return err
	}
	return waitHealthy(b.etcdURL + "/health")
}

func (b *bench) startRelay() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	b.relayURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	args := []string{b.binary, "relay", "-listen", fmt.Sprintf("127.0.0.1:%d", port), "-node", b.etcdURL, "-prefix", "/bench", "-log-level", "warn"}
	if b.f.noIOURing {
		args = append(args, "-no-io-uring")
	}
	b.relay, err = b.start("relay", args...)
	if err != nil {
		return err
	}
	return waitHealthy(b.relayURL + "/health")
}

func waitHealthy(u string) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(u); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not healthy within 60s", u)
}

// result is one setup's figures.
type result struct {
	name                              string
	etcdCPUPerWrite, relayCPUPerWrite time.Duration
	putP50, putMax                    time.Duration
	deliverP50, deliverMax            time.Duration // medians over writes
	deliverMaxWorst                   time.Duration
	etcdWatchers                      int
	relayRSS, relayHWM                int64
	watchers                          int
}

// measure makes the writes with n watchers on target ("" for none).
func (b *bench) measure(name, target string, n int) (result, error) {
	res := result{name: name, watchers: n, etcdWatchers: -1}
	var load *loadProc
	if n > 0 {
		var err error
		if load, err = b.startLoad(target, n); err != nil {
			return res, err
		}
		defer load.stop()
		if res.etcdWatchers, err = etcdWatchers(b.etcdURL); err != nil {
			return res, err
		}
		logf("  etcd holds %d watchers", res.etcdWatchers)
	}
	var puts, p50s, maxes []time.Duration
	var etcdCPU, relayCPU time.Duration
	for i := 0; i < b.f.writes; i++ {
		time.Sleep(b.f.spacing)
		e0, r0 := cpuTime(b.etcd), cpuTime(b.relay)
		start := time.Now()
		idx, err := put(b.etcdURL, poolKey(i%b.f.keys), fmt.Sprintf(`{"weight":%d,"pooled":"yes"}`, i))
		if err != nil {
			return res, err
		}
		puts = append(puts, time.Since(start))
		if load != nil {
			p50, max, err := load.waitFor(idx)
			if err != nil {
				return res, err
			}
			p50s, maxes = append(p50s, p50.Sub(start)), append(maxes, max.Sub(start))
		}
		etcdCPU += cpuTime(b.etcd) - e0
		relayCPU += cpuTime(b.relay) - r0
	}
	w := time.Duration(b.f.writes)
	res.etcdCPUPerWrite, res.relayCPUPerWrite = etcdCPU/w, relayCPU/w
	res.putP50, res.putMax = median(puts), maxOf(puts)
	if load != nil {
		res.deliverP50, res.deliverMax, res.deliverMaxWorst = median(p50s), median(maxes), maxOf(maxes)
	}
	res.relayRSS, res.relayHWM = memory(b.relay)
	return res, nil
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func maxOf(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// put writes a value and returns the write's index.
func put(base, key, value string) (uint64, error) {
	req, _ := http.NewRequest(http.MethodPut, base+"/v2/keys"+key, strings.NewReader(url.Values{"value": {value}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var ev struct {
		Node struct {
			ModifiedIndex uint64 `json:"modifiedIndex"`
		} `json:"node"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ev); err != nil || resp.StatusCode >= 300 {
		return 0, fmt.Errorf("PUT %s: %s %v", key, resp.Status, err)
	}
	return ev.Node.ModifiedIndex, nil
}

func etcdWatchers(base string) (int, error) {
	resp, err := http.Get(base + "/v2/stats/store")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var st struct {
		Watchers int `json:"watchers"`
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st.Watchers, err
}

// cpuTime is a process's user and system CPU so far, from /proc.
func cpuTime(p *proc) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	rest := string(raw[strings.LastIndexByte(string(raw), ')')+2:])
	fields := strings.Fields(rest)
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticks = 100 // USER_HZ
	return time.Duration(utime+stime) * time.Second / ticks
}

// memory is a process's resident and peak resident memory in bytes.
func memory(p *proc) (rss, hwm int64) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			hwm = kb << 10
		}
	}
	return rss, hwm
}

// loadProc is the load generator process.
type loadProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func (b *bench) startLoad(target string, n int) (*loadProc, error) {
	args := []string{b.self, "watchers", "-url", target + "/v2/keys/bench/pool", "-n", strconv.Itoa(n)}
	if b.f.loadIdle {
		args = append([]string{"chrt", "--idle", "0"}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	l := &loadProc{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	line, err := l.line()
	if err != nil || !strings.HasPrefix(line, "ready") {
		l.stop()
		return nil, fmt.Errorf("load generator did not get ready: %q %v", line, err)
	}
	logf("  %s", line)
	return l, nil
}

func (l *loadProc) line() (string, error) {
	if !l.out.Scan() {
		if err := l.out.Err(); err != nil {
			return "", err
		}
		return "", io.EOF
	}
	return l.out.Text(), nil
}

// waitFor asks the load generator for the moment the median and the last
// watcher had the event at idx (and every watcher is waiting again).
func (l *loadProc) waitFor(idx uint64) (p50, last time.Time, err error) {
	fmt.Fprintf(l.stdin, "wait %d\n", idx)
	line, err := l.line()
	if err != nil {
		return p50, last, err
	}
	var got uint64
	var a, z int64
	if _, err := fmt.Sscanf(line, "done %d %d %d", &got, &a, &z); err != nil || got != idx {
		return p50, last, fmt.Errorf("load generator: %q", line)
	}
	return time.Unix(0, a), time.Unix(0, z), nil
}

func (l *loadProc) stop() {
	l.stdin.Close()
	done := make(chan struct{})
	go func() { l.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		l.cmd.Process.Kill()
		<-done
	}
}

type getResult struct {
	target, what string
	rps          float64
	p50, p99     string
	errors       string
}

var (
	rpsRE     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	latencyRE = regexp.MustCompile(`(?m)^\s+50%\s+(\S+)[\s\S]*^\s+99%\s+(\S+)`)
	errorsRE  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)|Socket errors: .*`)
)

// wrk runs wrk against u.
func (b *bench) wrk(u string) (getResult, error) {
	out, err := exec.Command("wrk", "-t2", "-c64", "-d"+b.f.wrkDuration, "--latency", u).CombinedOutput()
	if err != nil {
		return getResult{}, fmt.Errorf("wrk %s: %v\n%s", u, err, out)
	}
	m := rpsRE.FindSubmatch(out)
	if m == nil {
		return getResult{}, fmt.Errorf("wrk %s: no Requests/sec in\n%s", u, out)
	}
	g := getResult{}
	if e := errorsRE.Find(out); e != nil {
		g.errors = string(e) // reported, not fatal: a loaded etcd times out
	}
	g.rps, _ = strconv.ParseFloat(string(m[1]), 64)
	if l := latencyRE.FindSubmatch(out); l != nil {
		g.p50, g.p99 = string(l[1]), string(l[2])
	}
	return g, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }

func printResults(rs []result) {
	fmt.Println("| setup | etcd watchers | etcd CPU per write | PUT p50 / max | event at every watcher: p50 / max (median over writes; worst) | relay CPU per write | relay RSS (peak) |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, r := range rs {
		watchers, deliver, relayCPU, rss := "0", "-", "-", "-"
		if r.etcdWatchers >= 0 {
			watchers = strconv.Itoa(r.etcdWatchers)
		}
		if r.watchers > 0 {
			deliver = fmt.Sprintf("%s / %s ms (%s)", ms(r.deliverP50), ms(r.deliverMax), ms(r.deliverMaxWorst))
		}
		if strings.Contains(r.name, "relay") {
			relayCPU = ms(r.relayCPUPerWrite) + " ms"
			rss = fmt.Sprintf("%d MB (%d MB)", r.relayRSS>>20, r.relayHWM>>20)
		}
		fmt.Printf("| %s | %s | %s ms | %s / %s ms | %s | %s | %s |\n", r.name, watchers, ms(r.etcdCPUPerWrite),
			ms(r.putP50), ms(r.putMax), deliver, relayCPU, rss)
	}
	fmt.Println()
}

func printGets(gs []getResult) {
	fmt.Println("| GET (wrk -t2 -c64) | req/s | p50 | p99 | errors |")
	fmt.Println("|---|---|---|---|---|")
	for _, g := range gs {
		fmt.Printf("| %s, %s | %.0f | %s | %s | %s |\n", g.target, g.what, g.rps, g.p50, g.p99, g.errors)
	}
}

// runWatchers is the load generator: n watchers of url, each a goroutine
// with its own connection, re-issuing the wait after every event. On
// "wait IDX" from stdin it answers "done IDX P50 MAX" (unix nanoseconds at
// which the median and the last watcher had the event at IDX) once every
// watcher has it and is waiting again.
func runWatchers(args []string) int {
	fs := flag.NewFlagSet("watchers", flag.ContinueOnError)
	target := fs.String("url", "", "the watched key's URL")
	n := fs.Int("n", 1000, "watchers")
	parallel := fs.Int("parallel", 200, "watchers connecting at once")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	raiseFileLimit()
	first, err := currentIndex(*target)
	if err != nil {
		fmt.Fprintln(os.Stderr, "watchers:", err)
		return 1
	}
	u, err := url.Parse(*target)
	if err != nil || u.Scheme != "http" {
		fmt.Fprintln(os.Stderr, "watchers: -url: want http://host:port/v2/keys/...")
		return 2
	}
	g := &gen{host: u.Host, path: u.Path, n: *n, waiting: make(chan int, *n*4), deliveries: make(chan delivery, 1<<16)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sem := make(chan struct{}, *parallel)
	start := time.Now()
	for i := 0; i < *n; i++ {
		go g.watch(ctx, i, first+1, sem)
	}
	for registered := 0; registered < *n; registered++ {
		<-g.waiting
	}
	fmt.Printf("ready: %d watchers waiting after %s\n", *n, time.Since(start).Round(time.Millisecond))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var idx uint64
		if _, err := fmt.Sscanf(in.Text(), "wait %d", &idx); err != nil {
			continue
		}
		p50, last, err := g.waitFor(idx)
		if err != nil {
			fmt.Fprintln(os.Stderr, "watchers:", err)
			return 1
		}
		fmt.Printf("done %d %d %d\n", idx, p50, last)
	}
	return 0
}

type gen struct {
	host, path string
	n          int
	waiting    chan int // a watcher registered (its request's headers came)
	deliveries chan delivery
}

type delivery struct {
	watcher int
	index   uint64
	at      int64
}

func currentIndex(u string) (uint64, error) {
	resp, err := http.Get(u + "?recursive=true")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return strconv.ParseUint(resp.Header.Get("X-Etcd-Index"), 10, 64)
}

// watch is one watcher on a connection of its own: wait, record, wait
// again from the next index. It speaks just enough HTTP/1.1 to do that
// cheaply, so that the load generator takes little of the CPU the servers
// measured here share with it.
func (g *gen) watch(ctx context.Context, id int, next uint64, sem chan struct{}) {
	sem <- struct{}{}
	released := false
	release := func() {
		if !released {
			<-sem
			released = true
		}
	}
	defer release()
	for ctx.Err() == nil {
		conn, err := net.DialTimeout("tcp", g.host, 30*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, "watchers: dial:", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		tc, err := newStampedConn(conn)
		if err != nil {
			fmt.Fprintln(os.Stderr, "watchers:", err)
			conn.Close()
			time.Sleep(100 * time.Millisecond)
			continue
		}
		br := bufio.NewReaderSize(tc, 4096)
		for ctx.Err() == nil {
			req := "GET " + g.path + "?wait=true&recursive=true&waitIndex=" + strconv.FormatUint(next, 10) + " HTTP/1.1\r\nHost: " + g.host + "\r\n\r\n"
			if _, err = io.WriteString(conn, req); err != nil {
				break
			}
			var chunked bool
			var length int
			if chunked, length, err = readHeaders(br); err != nil {
				break
			}
			release()
			g.waiting <- id
			var body []byte
			if body, err = readBody(br, chunked, length); err != nil {
				break
			}
			at := tc.stamp // when the answer reached this socket
			idx := modifiedIndex(body)
			if idx == 0 {
				continue // an empty answer: ask again
			}
			g.deliveries <- delivery{watcher: id, index: idx, at: at}
			next = idx + 1
		}
		conn.Close()
		if ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, "watchers: connection:", err)
		}
	}
}

// stampedConn reads a TCP connection with the kernel's receive timestamp
// (SO_TIMESTAMPNS) of the data it reads: the moment the server's answer
// reached the client's socket, however long the load generator then
// takes to get to it. The time until every watcher has an event is then
// the server's, not the load generator's.
type stampedConn struct {
	net.Conn
	raw   syscall.RawConn
	stamp int64 // unix nanoseconds of the data last read
	oob   []byte
}

func newStampedConn(c net.Conn) (*stampedConn, error) {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return nil, err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("SO_TIMESTAMPNS: %w", serr)
	}
	return &stampedConn{Conn: c, raw: raw, oob: make([]byte, 128)}, nil
}

func (c *stampedConn) Read(p []byte) (int, error) {
	var n, oobn int
	var err error
	if rerr := c.raw.Read(func(fd uintptr) bool {
		n, oobn, _, _, err = syscall.Recvmsg(int(fd), p, c.oob, 0)
		return err != syscall.EAGAIN
	}); rerr != nil {
		return 0, rerr
	}
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	c.stamp = time.Now().UnixNano()
	if msgs, err := syscall.ParseSocketControlMessage(c.oob[:oobn]); err == nil {
		for _, m := range msgs {
			if m.Header.Level == syscall.SOL_SOCKET && m.Header.Type == syscall.SO_TIMESTAMPNS && len(m.Data) >= 16 {
				ts := (*syscall.Timespec)(unsafe.Pointer(&m.Data[0]))
				c.stamp = ts.Nano()
			}
		}
	}
	return n, nil
}

// readHeaders reads a response's status line and headers.
func readHeaders(br *bufio.Reader) (chunked bool, length int, err error) {
	length = -1
	status, err := br.ReadSlice('\n')
	if err != nil {
		return false, 0, err
	}
	if !strings.HasPrefix(string(status), "HTTP/1.1 200") {
		return false, 0, fmt.Errorf("answer %q", strings.TrimSpace(string(status)))
	}
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return false, 0, err
		}
		h := strings.TrimSpace(string(line))
		if h == "" {
			return chunked, length, nil
		}
		name, value, _ := strings.Cut(h, ":")
		switch strings.ToLower(name) {
		case "transfer-encoding":
			chunked = strings.Contains(value, "chunked")
		case "content-length":
			length, _ = strconv.Atoi(strings.TrimSpace(value))
		}
	}
}

// readBody reads a chunked or sized body.
func readBody(br *bufio.Reader, chunked bool, length int) ([]byte, error) {
	if !chunked {
		body := make([]byte, max(length, 0))
		_, err := io.ReadFull(br, body)
		return body, err
	}
	var body []byte
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return nil, err
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(line)), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("chunk size %q", line)
		}
		chunk := make([]byte, n+2)
		if _, err := io.ReadFull(br, chunk); err != nil {
			return nil, err
		}
		if n == 0 {
			return body, nil
		}
		body = append(body, chunk[:n]...)
	}
}

// modifiedIndex is the event's index: the first modifiedIndex in it, the
// node's (a value cannot hold an unescaped quote).
func modifiedIndex(body []byte) uint64 {
	const field = `"modifiedIndex":`
	i := strings.Index(string(body), field)
	if i < 0 {
		return 0
	}
	rest := body[i+len(field):]
	j := 0
	for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	n, _ := strconv.ParseUint(string(rest[:j]), 10, 64)
	return n
}

// waitFor collects deliveries until every watcher has had idx and is
// waiting again.
func (g *gen) waitFor(idx uint64) (p50, last int64, err error) {
	times := make([]int64, 0, g.n)
	got := make([]bool, g.n)
	timeout := time.After(2 * time.Minute)
	for len(times) < g.n {
		select {
		case d := <-g.deliveries:
			if d.index == idx && !got[d.watcher] {
				got[d.watcher] = true
				times = append(times, d.at)
			}
		case <-timeout:
			return 0, 0, fmt.Errorf("only %d of %d watchers had event %d after 2 minutes", len(times), g.n, idx)
		}
	}
	for registered := 0; registered < g.n; {
		select {
		case <-g.waiting:
			registered++
		case <-timeout:
			return 0, 0, fmt.Errorf("only %d of %d watchers waiting again after event %d", registered, g.n, idx)
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	return times[len(times)/2], times[len(times)-1], nil
}
