package mirror

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
)

const helperEnv = "CONFSYNC_MIRROR_HELPER_ARGS"

// TestHelperProcess is not a test: it is the mirror run as a separate
// process by tests that need to kill it with SIGKILL or SIGSTOP. It takes
// the arguments of confsync mirror that those tests use (helperConfig).
func TestHelperProcess(t *testing.T) {
	raw := os.Getenv(helperEnv)
	if raw == "" {
		t.Skip("runs only as a subprocess of another test")
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		os.Exit(3)
	}
	cfg, err := helperConfig(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	m, err := New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer m.Close()
	if err := m.Run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "confsync mirror: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// helperConfig reads the subset of confsync mirror's flags that the
// process tests pass (the real command line lives in cmd/confsync).
func helperConfig(args []string) (Config, error) {
	fs := flag.NewFlagSet("helper", flag.ContinueOnError)
	var cfg Config
	var debug bool
	var port int
	fs.StringVar(&cfg.SourcePrefix, "src-prefix", "/", "")
	fs.StringVar(&cfg.DestinationPrefix, "dst-prefix", "/replica", "")
	fs.BoolVar(&cfg.Strip, "strip", false, "")
	fs.StringVar(&cfg.IgnoreKeys, "src-ignore-keys-regex", "", "")
	fs.BoolVar(&cfg.Reload, "reload", false, "")
	fs.IntVar(&port, "port", -1, "")
	fs.BoolVar(&debug, "d", false, "")
	fs.DurationVar(&cfg.PollTimeout, "poll-timeout", 5*time.Second, "")
	fs.DurationVar(&cfg.MaxBackoff, "max-backoff", 500*time.Millisecond, "")
	fs.StringVar(&cfg.SourceAPI, "src-api", "v2", "")
	fs.StringVar(&cfg.DestinationAPI, "dst-api", "v2", "")
	fs.BoolVar(&cfg.Standby, "standby", false, "")
	fs.DurationVar(&cfg.LockTTL, "lock-ttl", 10*time.Second, "")
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return cfg, err
		}
		if fs.NArg() == 0 {
			break
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
	if len(pos) != 2 {
		return cfg, fmt.Errorf("want SRC and DST, got %q", pos)
	}
	cfg.Source = etcd.Config{Endpoints: strings.Split(pos[0], ","), RequestTimeout: 2 * time.Second}
	cfg.Destination = etcd.Config{Endpoints: strings.Split(pos[1], ","), RequestTimeout: 2 * time.Second}
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	return cfg, nil
}

// mirrorProcess is `confsync mirror` running in a child process.
type mirrorProcess struct {
	cmd    *exec.Cmd
	output *testutil.SyncBuffer
	done   chan struct{}
}

func startProcess(t *testing.T, args ...string) *mirrorProcess {
	t.Helper()
	raw, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(raw))
	out := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &mirrorProcess{cmd: cmd, output: out, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *mirrorProcess) exitCode(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("mirror process still running after %s; output:\n%s", timeout, p.output)
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *mirrorProcess) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Repeated kill -9 while the source changes fast: every restart resumes
// from the recorded index, replays what may already be applied, and the
// replica converges without a divergence error or a resync.
func TestKill9DuringWorkloadConverges(t *testing.T) {
	src, dst := newPair(t)
	args := []string{"--src-prefix", "/src", "--dst-prefix", "/replica", "--strip",
		"--src-ignore-keys-regex", "/src/locks(/.*)?", "--port", "-1", "--poll-timeout", "2s", "-d", "--lock-ttl", "3s",
		src.URL(), dst.URL()}
	w := newWorkload(src.Client(), "/src", 42)
	w.run(context.Background(), 100)

	first := startProcess(t, append([]string{"--reload"}, args...)...)
	waitIndexKey(t, dst, "/__replication/replica", w.last.Load(), first)
	first.cmd.Process.Signal(syscall.SIGTERM)
	if code := first.exitCode(t, 30*time.Second); code != 0 {
		t.Fatalf("first run exited %d:\n%s", code, first.output)
	}

	ctx, stopWorkload := context.WithCancel(context.Background())
	workloadDone := make(chan struct{})
	go func() {
		w.runFor(ctx, 400)
		close(workloadDone)
	}()
	rng := rand.New(rand.NewPCG(7, 7))
	var logs []string
	kills := 0
	for round := 0; round < 8; round++ {
		p := startProcess(t, args...)
		// Let it get going, then kill it at a random moment.
		before := indexKey(t, dst, "/__replication/replica")
		waitFor(t, 30*time.Second, "the restarted mirror to record progress", func() bool {
			return !p.running() || indexKey(t, dst, "/__replication/replica") > before
		})
		time.Sleep(time.Duration(rng.IntN(400)) * time.Millisecond)
		if !p.running() {
			t.Fatalf("round %d: mirror exited by itself (%d):\n%s", round, p.cmd.ProcessState.ExitCode(), p.output)
		}
		p.cmd.Process.Kill()
		<-p.done
		kills++
		logs = append(logs, p.output.String())
	}
	stopWorkload()
	<-workloadDone

	final := startProcess(t, args...)
	last := sentinel(t, src, "/src")
	waitIndexKey(t, dst, "/__replication/replica", last, final)
	waitTreesEqual(t, src, dst, "/src", "/replica", mustRegexp(t, "/src/locks(/.*)?"))
	final.cmd.Process.Signal(syscall.SIGTERM)
	if code := final.exitCode(t, 30*time.Second); code != 0 {
		t.Fatalf("final run exited %d:\n%s", code, final.output)
	}
	logs = append(logs, final.output.String())

	all := strings.Join(logs, "\n")
	for _, bad := range []string{"diverged", "refusing", "panic"} {
		if strings.Contains(all, bad) {
			t.Fatalf("a run logged %q:\n%s", bad, tail(all, bad))
		}
	}
	applied := strings.Count(all, "already on the destination")
	past := strings.Count(all, "destination already past")
	replays := applied + past
	resyncs := strings.Count(all, "msg=resynchronised")
	t.Logf("%d kills, %d workload operations; replays: %d found applied, %d found overtaken (replay window); %d automatic resyncs",
		kills, w.ops.Load(), applied, past, resyncs)
	if replays == 0 {
		t.Error("no restart replayed an event: the kills never landed between a write and its index record")
	}
}

func indexKey(t *testing.T, s *etcdtest.Server, key string) uint64 {
	t.Helper()
	resp, err := s.Client().Get(context.Background(), key, nil)
	if err != nil {
		return 0
	}
	var idx uint64
	for _, c := range resp.Node.Value {
		idx = idx*10 + uint64(c-'0')
	}
	return idx
}

func waitIndexKey(t *testing.T, s *etcdtest.Server, key string, idx uint64, p *mirrorProcess) {
	t.Helper()
	waitFor(t, 60*time.Second, "the index key to reach the source index", func() bool {
		if !p.running() {
			t.Fatalf("mirror exited %d before reaching index %d:\n%s", p.cmd.ProcessState.ExitCode(), idx, p.output)
		}
		return indexKey(t, s, key) >= idx
	})
}

// tail returns the lines of log around the first occurrence of word.
func tail(log, word string) string {
	i := strings.Index(log, word)
	start := max(0, i-2000)
	end := min(len(log), i+500)
	return log[start:end]
}

// helperCommand runs the mirror in a child process with args (JSON).
func helperCommand(argsJSON string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+argsJSON)
	return cmd
}
