package relay_test

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/watch"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	"github.com/confsync/confsync/relay"
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// confsyncBinary builds the confsync command once for the tests that run
// it as a client, as a host would.
func confsyncBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "relay-test-confsync-"); buildErr != nil {
			return
		}
		binary = filepath.Join(buildDir, "confsync")
		out, err := exec.Command("go", "build", "-o", binary, "github.com/confsync/confsync/cmd/confsync").CombinedOutput()
		if err != nil {
			buildErr = err
			binary = string(out)
		}
	})
	if buildErr != nil {
		t.Fatalf("go build ./cmd/confsync: %v\n%s", buildErr, binary)
	}
	return binary
}

// TestAgentAndRenderThroughTheRelay: confsync render and a confsync agent,
// unchanged, pointed at a relay: render writes the file from the relay's
// answers, and the agent follows a change through the relay's watch.
func TestAgentAndRenderThroughTheRelay(t *testing.T) {
	bin := confsyncBinary(t)
	srv := etcdtest.New(t)
	srv.Set(t, "/site/pool/a", "1")
	srv.Set(t, "/site/pool/b", "2")
	r := startRelay(t, []string{srv.URL()}, "/site")

	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755)
	os.MkdirAll(filepath.Join(dir, "templates"), 0o755)
	os.MkdirAll(out, 0o755)
	os.WriteFile(filepath.Join(dir, "conf.d", "pool.toml"), []byte("[template]\nsrc = \"pool.tmpl\"\ndest = \""+
		filepath.Join(out, "pool")+"\"\nprefix = \"/site\"\nkeys = [\"/pool\"]\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "templates", "pool.tmpl"),
		[]byte("{{range gets \"/pool/*\"}}{{base .Key}}={{.Value}}\n{{end}}"), 0o644)
	read := func() string {
		b, _ := os.ReadFile(filepath.Join(out, "pool"))
		return string(b)
	}

	cmd := exec.Command(bin, "render", "-confdir", dir, "-node", r.URL)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("confsync render: %v\n%s", err, b)
	}
	if got := read(); got != "a=1\nb=2\n" {
		t.Fatalf("render wrote %q", got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	agent := exec.CommandContext(ctx, bin, "agent", "-confdir", dir, "-node", r.URL,
		"-state-dir", filepath.Join(dir, "state"), "-metrics-addr", "")
	logs := &testutil.SyncBuffer{}
	agent.Stdout, agent.Stderr = logs, logs
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); agent.Wait() }()
	waitForWatchers(t, r, 1)
	srv.Set(t, "/site/pool/c", "3")
	testutil.Eventually(t, "the agent to render the change it saw through the relay", func() bool {
		return read() == "a=1\nb=2\nc=3\n"
	})
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("agent logged errors:\n%s", logs)
	}
}

// TestRelaysChain: a relay fed by another relay serves what etcd holds
// and follows its changes, and etcd holds one watcher for the chain.
func TestRelaysChain(t *testing.T) {
	cluster := etcdtest.NewProcessCluster(t, 1)
	e := cluster.URL(0)
	set(t, e, "/site/pool/a", "1")
	first := startRelay(t, []string{e}, "/site")
	second := startRelay(t, []string{first.URL}, "/site/pool")
	waits := make([]*pending, 20)
	for i := range waits {
		waits[i] = startWatch(t, second.URL+"/v2/keys/site/pool?wait=true&recursive=true", time.Minute)
	}
	ev := set(t, e, "/site/pool/b", "2")
	for _, w := range waits {
		a := w.result()
		if got, err := etcd.DecodeEvent(a.body); err != nil || got.Index() != ev.Index() || *got.Node.Value != "2" {
			t.Fatalf("a wait at the second relay got %v", a)
		}
	}
	if v := value(t, second.URL, "/site/pool/b"); v != "2" {
		t.Errorf("second relay: %q", v)
	}
	testutil.Eventually(t, "etcd holding one watcher for the chain", func() bool { return cluster.WatcherCount(t, 0) == 1 })
}

// TestHandlerServesWithAWatcherItDoesNotOwn builds a relay the way the
// agent's -serve does: New with the agent's own watch.Watcher (with its
// roots) and etcd client, served by an http.Server through Handler.
// Reads, long polls and streams work the same as through Serve.
func TestHandlerServesWithAWatcherItDoesNotOwn(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/site/pool/a", "1")
	client, err := etcd.New(context.Background(), etcd.Config{Endpoints: []string{srv.URL()}})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var w *watch.Watcher
	rs := relay.New(relay.Config{Upstream: client, Status: func() watch.Status { return w.Status() }})
	w = watch.New(watch.Config{Source: client, Listener: rs.Listener(), PollTimeout: 2 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); w.Wait() }()
	if err := w.Start(ctx, []string{"/site/pool", "/site/other"}, nil); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: rs.Handler()}
	go hs.Serve(ln)
	defer func() { rs.CloseWatches(); hs.Close() }()
	base := "http://" + ln.Addr().String()
	testutil.Eventually(t, "the relay serving", func() bool { return get(base+"/health").status == http.StatusOK })

	if v := value(t, base, "/site/pool/a"); v != "1" {
		t.Fatalf("GET through Handler: %q", v)
	}
	long := startWatch(t, base+"/v2/keys/site/pool?wait=true&recursive=true", time.Minute)
	stream := startWatch(t, base+"/v2/keys/site?wait=true&recursive=true&stream=true", 5*time.Second)
	srv.Set(t, "/site/pool/b", "2")
	ev := srv.Set(t, "/site/pool/c", "3")
	if a := long.result(); !strings.Contains(string(a.body), `"key":"/site/pool/b"`) {
		t.Errorf("long poll through Handler: %v", a)
	}
	a := stream.result()
	if !strings.Contains(string(a.body), `"key":"/site/pool/b"`) || !strings.Contains(string(a.body), `"key":"/site/pool/c"`) {
		t.Errorf("stream through Handler: %v", a)
	}
	if a := get(base + "/v2/keys/site?recursive=true"); a.header.Get("X-Etcd-Index") != strconvU(ev.Index) {
		t.Errorf("X-Etcd-Index %s, want %d", a.header.Get("X-Etcd-Index"), ev.Index)
	}
}
