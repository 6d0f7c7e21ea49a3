package relay_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testpki"
	"github.com/confsync/confsync/internal/testutil"
	"github.com/confsync/confsync/relay"
)

// tlsRelay runs a relay of /site over TLS in front of a fresh etcd seeded
// with a pool.
func tlsRelay(t *testing.T) (*etcdtest.Server, *testRelay, *testpki.PKI) {
	t.Helper()
	srv := etcdtest.New(t)
	srv.Set(t, "/site/pool/a", "1")
	srv.Set(t, "/site/pool/b", "2")
	pki := testpki.New(t)
	r := startRelay(t, []string{srv.URL()}, "/site", func(c *relay.RunConfig) {
		c.TLSCertFile, c.TLSKeyFile = pki.ServerCert, pki.ServerKey
	})
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(false)}}
	testutil.Eventually(t, "the relay serving /site over TLS", func() bool {
		a := do(client, http.MethodGet, r.URL+"/health", nil, 5*time.Second)
		return a.status == http.StatusOK
	})
	return srv, r, pki
}

// TestEtcdctlThroughTheRelay runs Debian's etcdctl (v2) against a TLS
// relay without --no-sync: it reads /v2/members first and then talks to
// the client URLs listed there, which must be the relay's. get, ls -r,
// watch and exec-watch work; set is refused as read-only.
func TestEtcdctlThroughTheRelay(t *testing.T) {
	bin, err := exec.LookPath("etcdctl")
	if err != nil {
		t.Fatal("etcdctl not on PATH: apt-get install etcd-client")
	}
	srv, r, pki := tlsRelay(t)
	etcdctl := func(ctx context.Context, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, bin, append([]string{"--endpoints", r.URL, "--ca-file", pki.CAFile}, args...)...)
		cmd.Env = append(os.Environ(), "ETCDCTL_API=2")
		return cmd
	}
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := etcdctl(ctx, args...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := run("get", "/site/pool/a"); err != nil || out != "1" {
		t.Fatalf("etcdctl get: %q %v", out, err)
	}
	if out, err := run("ls", "-r", "/site"); err != nil || out != "/site/pool\n/site/pool/a\n/site/pool/b" {
		t.Errorf("etcdctl ls -r: %q %v", out, err)
	}
	if out, err := run("set", "/site/pool/a", "x"); err == nil || !strings.Contains(out, "read-only") {
		t.Errorf("etcdctl set through a read-only relay: %v\n%s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	watch := startLines(t, etcdctl(ctx, "watch", "/site/pool/a"))
	execWatch := startLines(t, etcdctl(ctx, "exec-watch", "--recursive", "/site/pool", "--", "sh", "-c", `echo "$ETCD_WATCH_ACTION $ETCD_WATCH_KEY $ETCD_WATCH_VALUE"`))
	waitForWatchers(t, r, 2)
	srv.Set(t, "/site/pool/a", "3")
	if line := watch.next(t); line != "3" {
		t.Errorf("etcdctl watch printed %q, want 3", line)
	}
	if line := execWatch.next(t); line != "set /site/pool/a 3" {
		t.Errorf("etcdctl exec-watch ran with %q", line)
	}
	srv.Set(t, "/site/pool/b", "4")
	if line := execWatch.next(t); line != "set /site/pool/b 4" {
		t.Errorf("etcdctl exec-watch ran with %q", line)
	}
}

// lines reads a command's output line by line.
type lines struct {
	ch chan string
}

func startLines(t *testing.T, cmd *exec.Cmd) *lines {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	l := &lines{ch: make(chan string, 100)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			l.ch <- sc.Text()
		}
		close(l.ch)
	}()
	return l
}

func (l *lines) next(t *testing.T) string {
	t.Helper()
	select {
	case line, ok := <-l.ch:
		if !ok {
			t.Fatal("the command ended")
		}
		return line
	case <-time.After(time.Minute):
		t.Fatal("no output within a minute")
	}
	return ""
}

// waitForWatchers waits until at least n watches wait in the relay.
func waitForWatchers(t *testing.T, r *testRelay, n int) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	testutil.Eventually(t, fmt.Sprintf("%d watches waiting in the relay", n), func() bool {
		return metric(t, client, r.URL, `confsync_relay_watchers{mode="long-poll"}`)+
			metric(t, client, r.URL, `confsync_relay_watchers{mode="stream"}`) >= float64(n)
	})
}

// metric reads one sample of the relay's /metrics.
func metric(t *testing.T, c *http.Client, base, name string) float64 {
	t.Helper()
	a := do(c, http.MethodGet, base+"/metrics", nil, 10*time.Second)
	for _, line := range strings.Split(string(a.body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// TestPythonEtcdThroughTheRelay reads, reads recursively and watches with
// an index with python3-etcd, over TLS: a watch from a past index is
// answered from the relay's history, one from the next index when the
// write comes.
func TestPythonEtcdThroughTheRelay(t *testing.T) {
	const python = "/usr/bin/python3"
	if err := exec.Command(python, "-c", "import etcd").Run(); err != nil {
		t.Fatal("python3-etcd is missing: apt-get install python3-etcd")
	}
	srv, r, pki := tlsRelay(t)
	past := srv.Set(t, "/site/pool/a", "10").Index
	script := `
import etcd, json, sys
host, port, ca, past = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
c = etcd.Client(host=host, port=port, protocol="https", ca_cert=ca, allow_reconnect=False)
out = {"a": c.read("/site/pool/a").value}
r = c.read("/site/pool", recursive=True)
out["leaves"] = sorted([l.key, l.value] for l in r.leaves)
out["index"] = r.etcd_index
w = c.watch("/site/pool", index=past, recursive=True, timeout=30)
out["past"] = [w.action, w.key, w.value, w.modifiedIndex]
print(json.dumps(out), flush=True)
w = c.watch("/site/pool/b", index=r.etcd_index + 1, timeout=60)
print(json.dumps([w.action, w.key, w.value]), flush=True)
`
	host, port, _ := strings.Cut(strings.TrimPrefix(r.URL, "https://"), ":")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-c", script, host, port, pki.CAFile, strconv.FormatUint(past, 10))
	out := startLines(t, cmd)
	var first struct {
		A      string     `json:"a"`
		Leaves [][]string `json:"leaves"`
		Index  uint64     `json:"index"`
		Past   []any      `json:"past"`
	}
	line := out.next(t)
	if err := json.Unmarshal([]byte(line), &first); err != nil {
		t.Fatalf("python said %q", line)
	}
	if first.A != "10" || fmt.Sprint(first.Leaves) != "[[/site/pool/a 10] [/site/pool/b 2]]" || first.Index < past {
		t.Errorf("python read %+v", first)
	}
	if fmt.Sprint(first.Past) != fmt.Sprintf("[set /site/pool/a 10 %d]", past) {
		t.Errorf("python watch from index %d got %v", past, first.Past)
	}
	waitForWatchers(t, r, 1)
	srv.Set(t, "/site/pool/b", "20")
	if line := out.next(t); line != `["set", "/site/pool/b", "20"]` {
		t.Errorf("python watch of the next index got %s", line)
	}
}

// TestPybalStyleClient plays pybal's etcd client: HTTP/1.0 over TLS, a new
// connection for every request and nothing but Host and User-Agent; a
// recursive GET, then waits from X-Etcd-Index+1 and from the highest
// modifiedIndex+1 after each event; a 401 means re-read. Every answer is
// delimited by closing the connection, and a wait's headers arrive
// before its event.
func TestPybalStyleClient(t *testing.T) {
	srv, r, pki := tlsRelay(t)
	p := &pybal{t: t, addr: strings.TrimPrefix(r.URL, "https://"), tls: pki.ClientTLS(false), key: "/site/pool"}

	status, header, body := p.request("?recursive=true")
	if status != "HTTP/1.0 200 OK" || header.Get("Transfer-Encoding") != "" {
		t.Fatalf("GET: %s %v", status, header)
	}
	pool := p.merge(map[string]string{}, body)
	if fmt.Sprint(pool) != "map[a:1 b:2]" {
		t.Fatalf("pool %v", pool)
	}
	next, _ := strconv.ParseUint(header.Get("X-Etcd-Index"), 10, 64)
	next++

	// A wait: headers first, then the event when it happens.
	w := p.open(fmt.Sprintf("?recursive=true&wait=true&waitIndex=%d", next))
	status, header = w.head()
	if status != "HTTP/1.0 200 OK" || header.Get("Transfer-Encoding") != "" || header.Get("X-Etcd-Index") == "" {
		t.Fatalf("wait: %s %v", status, header)
	}
	ev := srv.Set(t, "/site/pool/a", "depooled")
	pool = p.merge(pool, w.body())
	if pool["a"] != "depooled" {
		t.Fatalf("pool after the event %v", pool)
	}
	next = ev.Index + 1

	// Events that happen between two waits come from the relay's history.
	srv.Set(t, "/site/pool/b", "3")
	srv.Set(t, "/site/pool/c", "4")
	for pool["c"] != "4" {
		_, _, body := p.request(fmt.Sprintf("?recursive=true&wait=true&waitIndex=%d", next))
		pool = p.merge(pool, body)
		next = p.maxIndex(body) + 1
	}
	if fmt.Sprint(pool) != "map[a:depooled b:3 c:4]" {
		t.Errorf("pool %v", pool)
	}

	// Too old: 401, and pybal re-reads.
	status, _, body = p.request("?recursive=true&wait=true&waitIndex=1")
	if status != "HTTP/1.0 400 Bad Request" || !strings.Contains(string(body), `"errorCode":401`) {
		t.Fatalf("wait from index 1: %s %s", status, body)
	}
	_, _, body = p.request("?recursive=true")
	if fmt.Sprint(p.merge(map[string]string{}, body)) != "map[a:depooled b:3 c:4]" {
		t.Errorf("re-read %s", body)
	}
}

// pybal is a client that talks like pybal.
type pybal struct {
	t    *testing.T
	addr string
	tls  *tls.Config
	key  string
}

// pybalConn is one request on a connection of its own.
type pybalConn struct {
	t  *testing.T
	c  *tls.Conn
	br *bufio.Reader
}

func (p *pybal) open(query string) *pybalConn {
	p.t.Helper()
	c, err := tls.Dial("tcp", p.addr, p.tls)
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(time.Minute))
	fmt.Fprintf(c, "GET /v2/keys%s%s HTTP/1.0\r\nHost: %s\r\nUser-Agent: PyBal/1.0\r\n\r\n", p.key, query, p.addr)
	return &pybalConn{t: p.t, c: c, br: bufio.NewReader(c)}
}

// head reads the status line and headers.
func (pc *pybalConn) head() (string, http.Header) {
	pc.t.Helper()
	status, err := pc.br.ReadString('\n')
	if err != nil {
		pc.t.Fatalf("status line: %v", err)
	}
	h := http.Header{}
	for {
		line, err := pc.br.ReadString('\n')
		if err != nil {
			pc.t.Fatalf("headers: %v", err)
		}
		line = strings.TrimSpace(line)
		if line == "" {
			return strings.TrimSpace(status), h
		}
		k, v, _ := strings.Cut(line, ":")
		h.Add(k, strings.TrimSpace(v))
	}
}

// body reads to the end of the connection: HTTP/1.0 answers end there.
func (pc *pybalConn) body() []byte {
	pc.t.Helper()
	b, err := io.ReadAll(pc.br)
	if err != nil {
		pc.t.Fatalf("body: %v", err)
	}
	return b
}

func (p *pybal) request(query string) (string, http.Header, []byte) {
	p.t.Helper()
	pc := p.open(query)
	status, h := pc.head()
	return status, h, pc.body()
}

// merge applies an answer (a GET's tree or a watch's one node) to pool,
// by host name, as pybal does: a node without a value is removed.
func (p *pybal) merge(pool map[string]string, body []byte) map[string]string {
	p.t.Helper()
	var a struct {
		Node node `json:"node"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		p.t.Fatalf("answer %q: %v", body, err)
	}
	var walk func(n node)
	walk = func(n node) {
		if n.Dir {
			for _, c := range n.Nodes {
				walk(c)
			}
			return
		}
		if n.Value == nil {
			delete(pool, filepath.Base(n.Key))
			return
		}
		pool[filepath.Base(n.Key)] = *n.Value
	}
	walk(a.Node)
	return pool
}

func (p *pybal) maxIndex(body []byte) uint64 {
	var a struct {
		Node node `json:"node"`
	}
	json.Unmarshal(body, &a)
	var walk func(n node) uint64
	walk = func(n node) uint64 {
		m := n.ModifiedIndex
		for _, c := range n.Nodes {
			m = max(m, walk(c))
		}
		return m
	}
	return walk(a.Node)
}

type node struct {
	Key           string  `json:"key"`
	Value         *string `json:"value"`
	Dir           bool    `json:"dir"`
	Nodes         []node  `json:"nodes"`
	ModifiedIndex uint64  `json:"modifiedIndex"`
}
