package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
)

// TestMain lets a test run this binary as the confsync command, so that a
// test can kill a real confsync process.
func TestMain(m *testing.M) {
	if args := os.Getenv("CONFSYNC_TEST_ARGS"); args != "" {
		var argv []string
		json.Unmarshal([]byte(args), &argv)
		os.Exit(runMain(argv))
	}
	os.Exit(m.Run())
}

// confsyncProcess starts this test binary as `confsync args...`.
func confsyncProcess(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	raw, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "CONFSYNC_TEST_ARGS="+string(raw))
	return cmd
}

// A render killed with SIGKILL at any moment leaves the destination either
// as it was or completely new, never partial; the next run removes the
// stage file the killed one left.
func TestKillDuringWriteNeverLeavesPartialFile(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Set(t, "/big/word", "v0")
	dir, out := writeConfdir(t, map[string]string{
		"conf.d/big.toml":    "[template]\nsrc = \"big.tmpl\"\ndest = \"{{out}}/big\"\nkeys = [\"/big\"]\n",
		"templates/big.tmpl": `{{$w := getv "/big/word"}}{{range seq 1 40000}}{{$w}} line {{.}} of a large generated file{{"\n"}}{{end}}END {{$w}}` + "\n",
	})
	dest := filepath.Join(out, "big")
	args := []string{"render", "-confdir", dir, "-node", srv.URL(), "-log-level", "error"}

	// Time one whole run, then kill runs at points spread over that time:
	// early kills land in fetch and render, later ones in stage and rename.
	start := time.Now()
	if err := confsyncProcess(t, args...).Run(); err != nil {
		t.Fatal(err)
	}
	full := time.Since(start)
	const rounds = 12
	outcomes := map[string]int{}
	for round := 0; round < rounds; round++ {
		word := fmt.Sprintf("v%d", round+1)
		srv.Set(t, "/big/word", word)
		cmd := confsyncProcess(t, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(full * time.Duration(round) / rounds)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		got, err := os.ReadFile(dest)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(string(got), "\n"), "\n")
		last := lines[len(lines)-1]
		if len(lines) != 40001 || !strings.HasPrefix(last, "END v") {
			t.Fatalf("round %d: partial destination: %d lines, last %q", round, len(lines), last)
		}
		if last == "END "+word {
			outcomes["replaced"]++
		} else {
			outcomes["kept"]++
		}
	}
	t.Logf("run takes %v; after kills: %v", full, outcomes)
	if outcomes["kept"] == 0 {
		t.Fatal("no kill landed before the rename; the test did not exercise anything")
	}
	// A clean run replaces whatever is there and sweeps up stage files.
	if res := runCmd(t, "render", "-confdir", dir, "-node", srv.URL()); res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	assertNoStageFiles(t, out)
}
