package command

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestSuccessAndFailure(t *testing.T) {
	res, err := Run(context.Background(), "echo hello", time.Minute, nil)
	if err != nil || strings.TrimSpace(res.Output) != "hello" || res.ExitCode != 0 {
		t.Fatalf("echo: %+v %v", res, err)
	}
	_, err = Run(context.Background(), "echo broken config >&2; exit 3", time.Minute, nil)
	if err == nil || !strings.Contains(err.Error(), "status 3") || !strings.Contains(err.Error(), "broken config") {
		t.Fatalf("failure error %v should carry status and output", err)
	}
}

// A hung command and the children it spawned die at the timeout.
func TestTimeoutKillsTheWholeGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	line := "sleep 300 & echo $! > " + pidFile + "; wait"
	_, err := Run(context.Background(), line, 500*time.Millisecond, nil)
	var te *TimeoutError
	if !errors.As(err, &te) {
		t.Fatalf("want TimeoutError, got %v", err)
	}
	raw, readErr := os.ReadFile(pidFile)
	if readErr != nil {
		t.Fatal(readErr)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %d survived the timeout", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCancelKillsCommand(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	started := filepath.Join(t.TempDir(), "started")
	go func() {
		// Cancel once the command is running, not before it starts.
		for {
			if _, err := os.Stat(started); err == nil {
				cancel()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	_, err := Run(ctx, "touch "+started+"; sleep 300", time.Hour, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want cancellation, got %v", err)
	}
}

func TestOutputIsBounded(t *testing.T) {
	res, err := Run(context.Background(), "head -c 100000 /dev/zero | tr '\\0' x", time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Output) > maxOutput+100 || !strings.Contains(res.Output, "more bytes") {
		t.Fatalf("output of %d bytes not truncated", len(res.Output))
	}
}
