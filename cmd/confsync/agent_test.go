package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/confsync/confsync/agent"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
)

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// bigPool writes n hosts under /pool, each with a long value, so that a
// render takes long enough to be killed in the middle.
const bigTemplate = `{{range gets "/pool/*"}}{{base .Key}} {{.Value}}
{{end}}{{range seq 1 20000}}padding line {{.}} to make the file large
{{end}}END
`

// kill -9 of the agent at any point of its work never leaves a partial
// destination, and the next agent removes the stage files left behind.
func TestAgentKilledDuringRendersLeavesNoPartialFile(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/h", "0")
	files := map[string]string{"templates/big.tmpl": bigTemplate}
	for i := 0; i < 4; i++ {
		files[fmt.Sprintf("conf.d/big%d.toml", i)] = fmt.Sprintf("[template]\nsrc = \"big.tmpl\"\ndest = \"{{out}}/big%d\"\nkeys = [\"/pool\"]\n", i)
	}
	dir, out := writeConfdir(t, files)
	state := t.TempDir()
	args := []string{"agent", "-confdir", dir, "-node", srv.URL(), "-state-dir", state, "-metrics-addr", "", "-log-level", "error"}
	stopWriter := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for i := 1; ; i++ {
			select {
			case <-stopWriter:
				return
			default:
			}
			srv.Client().Set(context.Background(), "/pool/h", fmt.Sprint(i), nil)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	leftovers := 0
	for round := 0; round < 8; round++ {
		cmd := confsyncProcess(t, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(300+round*150) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		for i := 0; i < 4; i++ {
			checkComplete(t, filepath.Join(out, fmt.Sprintf("big%d", i)))
		}
		leftovers += len(stageFiles(t, out))
	}
	t.Logf("stage files left by the kills (swept by the next agent): %d", leftovers)
	close(stopWriter)
	<-writerDone
	// A last agent converges and sweeps up.
	cmd := confsyncProcess(t, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	last, _ := srv.Client().Get(context.Background(), "/pool/h", nil)
	testutil.Eventually(t, "the last value everywhere", func() bool {
		for i := 0; i < 4; i++ {
			b, _ := os.ReadFile(filepath.Join(out, fmt.Sprintf("big%d", i)))
			if !strings.HasPrefix(string(b), "h "+last.Node.Value+"\n") {
				return false
			}
		}
		return true
	})
	testutil.Eventually(t, "no stage files", func() bool { return len(stageFiles(t, out)) == 0 })
}

// checkComplete fails unless path is missing or a whole rendered file.
func checkComplete(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(b), "\nEND\n") || !strings.HasPrefix(string(b), "h ") {
		t.Fatalf("%s is partial: %d bytes, ends %q", path, len(b), tail(string(b)))
	}
}

func tail(s string) string {
	if len(s) > 40 {
		return s[len(s)-40:]
	}
	return s
}

// SIGTERM: a running reload finishes, the agent exits 0.
func TestAgentSIGTERMExitsZeroAfterRunningCommand(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/a.toml":    "[template]\nsrc = \"a.tmpl\"\ndest = \"{{out}}/a\"\nkeys = [\"/pool\"]\nreload_cmd = \"touch {{out}}/started; sleep 2; touch {{out}}/finished\"\n",
		"templates/a.tmpl": `{{getv "/pool/a"}}`,
	})
	cmd := confsyncProcess(t, "agent", "-confdir", dir, "-node", srv.URL(), "-state-dir", "", "-metrics-addr", "")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the reload to start", func() bool { _, err := os.Stat(out + "/started"); return err == nil })
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	if err != nil {
		t.Fatalf("agent exited with %v after SIGTERM", err)
	}
	if _, err := os.Stat(out + "/finished"); err != nil {
		t.Fatal("SIGTERM killed the running reload")
	}
}

// The check plugin reads a real agent's /status: OK, then CRITICAL when
// resources fail, then stale data when etcd goes away.
func TestCheckAgainstARunningAgent(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	dir, _ := writeConfdir(t, map[string]string{
		"conf.d/a.toml":    "[template]\nsrc = \"a.tmpl\"\ndest = \"{{out}}/a\"\nkeys = [\"/pool\"]\n",
		"conf.d/b.toml":    "[template]\nsrc = \"a.tmpl\"\ndest = \"{{out}}/b\"\nkeys = [\"/pool\"]\n",
		"templates/a.tmpl": `{{getv "/pool/a"}}`,
	})
	addr := freeAddr(t)
	cmd := confsyncProcess(t, "agent", "-confdir", dir, "-node", srv.URL(), "-state-dir", t.TempDir(), "-metrics-addr", addr)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, bufio.NewReader(stderr))
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	url := "http://" + addr + "/status"
	testutil.Eventually(t, "readiness", func() bool {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	res := runCmd(t, "check", "-url", url)
	if res.code != 0 || !strings.HasPrefix(res.stdout, "CONFSYNC OK - 2 resources, 0 failing") {
		t.Fatalf("exit %d: %s", res.code, res.stdout)
	}
	srv.Delete(t, "/pool/a") // getv now fails for both resources
	testutil.Eventually(t, "WARNING for both resources", func() bool {
		res = runCmd(t, "check", "-url", url)
		return res.code == 1 && strings.Contains(res.stdout, "2 resources failing")
	})
	if !strings.Contains(res.stdout, "2 resources failing: a.toml (template), b.toml (template)") {
		t.Fatalf("output %s", res.stdout)
	}
	if res := runCmd(t, "check", "-url", url, "-crit-failed", "2"); res.code != 2 {
		t.Fatalf("want CRITICAL at the threshold, got %d: %s", res.code, res.stdout)
	}
	srv.Stop()
	testutil.Eventually(t, "stale data to be reported", func() bool {
		res = runCmd(t, "check", "-url", url, "-warn-failed", "10", "-crit-failed", "10", "-warn-age", "1s", "-crit-age", "1h")
		return res.code == 1 && strings.Contains(res.stdout, "old (etcd unreachable?)")
	})
	if res := runCmd(t, "check", "-url", "http://"+freeAddr(t)+"/status"); res.code != 3 || !strings.HasPrefix(res.stdout, "CONFSYNC UNKNOWN") {
		t.Fatalf("unreachable agent: %d %s", res.code, res.stdout)
	}
}

func TestJudgeThresholds(t *testing.T) {
	now := time.Now()
	f := checkFlags{warnAge: 5 * time.Minute, critAge: 30 * time.Minute, warnFailed: 1, critFailed: 3}
	st := &agent.Status{Started: now.Add(-time.Hour), Resources: []agent.ResourceStatus{{Name: "a.toml", Healthy: true}}}
	st.Roots = []agent.RootStatus{{AgeSeconds: 0}}
	if code, line := judge(st, f, now); code != 0 || !strings.Contains(line, "| resources=1 failing=0;1;3 data_age=0s;300;1800") {
		t.Fatalf("%d %s", code, line)
	}
	st.Roots[0].AgeSeconds = 3600
	if code, _ := judge(st, f, now); code != 2 {
		t.Fatalf("hour-old data: %d", code)
	}
	st.Roots[0].AgeSeconds = -1 // never synced since start an hour ago
	if code, _ := judge(st, f, now); code != 2 {
		t.Fatalf("never-synced data: %d", code)
	}
	st.Roots[0].AgeSeconds = 0
	st.FailedFiles = []agent.FileError{{File: "/etc/confd/conf.d/x.toml", Error: "bad"}}
	if code, line := judge(st, f, now); code != 2 || !strings.Contains(line, "x.toml") {
		t.Fatalf("unloadable file: %d %s", code, line)
	}
}

func TestAgentUsageErrors(t *testing.T) {
	dir, _ := writeConfdir(t, map[string]string{"conf.d/.keep": ""})
	for _, args := range [][]string{
		{"agent", "-confdir", dir, "-watch", "-interval", "5"},
		{"agent", "-confdir", dir, "-wait", "5s:1s"},
		{"agent", "-confdir", dir, "-backend", "env"},
		{"agent", "-confdir", dir, "-metrics-addr", "256.0.0.1:1", "-state-dir", ""},
		{"agent", "-confdir", filepath.Join(dir, "missing"), "-state-dir", "", "-metrics-addr", ""},
	} {
		if res := runCmd(t, args...); res.code != 2 || res.stderr == "" {
			t.Errorf("%v: exit %d stderr %q", args, res.code, res.stderr)
		}
	}
}

func TestAgentOnetimeIsRender(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/pool/a", "1")
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/a.toml":    "[template]\nsrc = \"a.tmpl\"\ndest = \"{{out}}/a\"\nkeys = [\"/pool\"]\n",
		"templates/a.tmpl": `{{getv "/pool/a"}}`,
	})
	if res := runCmd(t, "agent", "-onetime", "-confdir", dir, "-node", srv.URL(), "-state-dir", t.TempDir()); res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if got := readFile(t, out+"/a"); got != "1" {
		t.Fatalf("got %q", got)
	}
}
