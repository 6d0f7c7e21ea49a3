package demo

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/testutil"
)

// The whole story plays end to end, twice in the same output directory,
// and everything it started is stopped when it returns.
func TestDemoPlaysTheStoryTwice(t *testing.T) {
	out := filepath.Join(t.TempDir(), "demo-out")
	for run := 1; run <= 2; run++ {
		var buf bytes.Buffer
		if err := Run(context.Background(), Options{Out: out, Keys: 600, Stdout: &buf}); err != nil {
			t.Fatalf("run %d: %v\n%s", run, err, buf.String())
		}
		story := buf.String()
		for _, want := range []string{
			"copied the whole master into the replica",
			"rendered 15 files",
			"-{ 'host': 'mw1105.eqiad.wmnet'",
			"-mw1105.eqiad.wmnet",
			"+10.2.1.1 => UP/300",
			"403 Forbidden",
			`"errorCode":107`,
			"backend_up=false",
			"from its last-known-good cache",
			"-{ 'host': 'mw1106.eqiad.wmnet'",
			"The story is over",
		} {
			if !strings.Contains(story, want) {
				t.Errorf("run %d: the story lacks %q:\n%s", run, want, story)
			}
		}
		// Each step's diff shows what that step changed and nothing else:
		// the agent started on the whole copy, not on part of it.
		for _, step := range []struct{ from, to, host string }{
			{"Step 1.", "Step 2.", "mw1105"},
			{"Step 7.", "The story is over", "mw1106"},
		} {
			if err := diffOnlyTouches(story, step.from, step.to, step.host); err != nil {
				t.Errorf("run %d: %v\n%s", run, err, story)
			}
		}
		if t.Failed() {
			return
		}
		if run == 1 {
			t.Logf("story:\n%s", story)
		}
	}
	if entries, _ := os.ReadDir(out); len(entries) < 2 {
		t.Fatalf("rendered files removed at exit: %v", entries)
	}
}

// diffOnlyTouches checks that the diff lines printed between the markers
// from and to all name host, and that there is at least one.
func diffOnlyTouches(story, from, to, host string) error {
	_, section, ok := strings.Cut(story, from)
	if !ok {
		return fmt.Errorf("no %q in the story", from)
	}
	section, _, _ = strings.Cut(section, to)
	changed := 0
	for _, line := range strings.Split(section, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "+++") || strings.HasPrefix(line, "---") ||
			!strings.HasPrefix(line, "+") && !strings.HasPrefix(line, "-") {
			continue
		}
		changed++
		if !strings.Contains(line, host) {
			return fmt.Errorf("%s's diff changes %q, which is not about %s", strings.TrimSuffix(from, "."), line, host)
		}
	}
	if changed == 0 {
		return fmt.Errorf("%s shows no diff", strings.TrimSuffix(from, "."))
	}
	return nil
}

// With Keep, the demo runs until its context ends (Ctrl-C), then stops.
func TestDemoKeepStopsOnCancel(t *testing.T) {
	var buf testutil.SyncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Out: filepath.Join(t.TempDir(), "o"), Keys: 500, Keep: true, Stdout: &buf})
	}()
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(buf.String(), "press Ctrl-C") {
		if time.Now().After(deadline) {
			t.Fatalf("demo never reached -keep:\n%s", buf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{"master etcd (v2)", "gate (read-only, TLS)", "/lag", "/status"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("endpoints lack %q", want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("stop: %v", err)
	}
}

func TestOutputDirectoryOfSomeoneElseIsRefused(t *testing.T) {
	out := t.TempDir()
	os.WriteFile(filepath.Join(out, "precious"), []byte("x"), 0o644)
	err := Run(context.Background(), Options{Out: out, Stdout: &bytes.Buffer{}})
	if err == nil || !strings.Contains(err.Error(), "not a demo output directory") {
		t.Fatalf("err %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "precious")); err != nil {
		t.Fatal("someone else's file was removed")
	}
}
