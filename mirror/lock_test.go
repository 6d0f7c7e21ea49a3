package mirror

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/internal/etcdtest"
)

// lockConfig is baseConfig with a short lock TTL, so that takeovers happen
// within seconds.
func lockConfig(t testing.TB, src, dst *etcdtest.Server, dstAPI string) Config {
	cfg := baseConfig(t, src, dst)
	cfg.LockTTL = 3 * time.Second
	cfg.DestinationAPI = dstAPI
	return cfg
}

// A second mirror on a destination a live mirror holds exits with a
// message naming the holder; the first goes on replicating.
func TestSecondMirrorExitsNamingTheHolder(t *testing.T) {
	for _, api := range []string{apiV2, apiV3} {
		t.Run("dst-"+api, func(t *testing.T) {
			src, dst := newPair(t)
			cfg := lockConfig(t, src, dst, api)
			cfg.Reload = true
			cfg.Version = "1.2.3-test"
			first := startMirror(t, cfg)
			first.waitApplied(t, sentinel(t, src, "/src"))

			cfg.Reload = false
			second := startMirror(t, cfg)
			err := second.wait(t, 30*time.Second)
			var locked *LockedError
			if !errors.As(err, &locked) {
				t.Fatalf("second mirror: %v, want a *LockedError", err)
			}
			host, _ := os.Hostname()
			for _, want := range []string{"/__replication/replica.lock", host, fmt.Sprintf("pid %d", os.Getpid()), "1.2.3-test", "--standby"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("message lacks %q: %v", want, err)
				}
			}
			first.waitApplied(t, sentinel(t, src, "/src"))
			if first.exited() {
				t.Fatalf("first mirror stopped: %v", first.err)
			}
		})
	}
}

// A standby waits while the holder runs, reports itself as standing by,
// and takes over as soon as the holder stops and releases the lock.
func TestStandbyTakesOverWhenTheHolderStops(t *testing.T) {
	for _, api := range []string{apiV2, apiV3} {
		t.Run("dst-"+api, func(t *testing.T) {
			src, dst := newPair(t)
			cfg := lockConfig(t, src, dst, api)
			cfg.Reload = true
			first := startMirror(t, cfg)
			first.waitApplied(t, sentinel(t, src, "/src"))

			cfg.Reload, cfg.Standby = false, true
			standby := startMirror(t, cfg)
			waitFor(t, 30*time.Second, "the standby to stand by", func() bool { return standby.Status().Phase == phaseStandby })
			r := src.Set(t, "/src/while-standing-by", "x")
			first.waitApplied(t, r.Index)
			if s := standby.Status(); s.AppliedIndex != 0 || !s.Healthy {
				t.Fatalf("standby applied or is unhealthy: %+v", s)
			}
			if err := first.stop(t); err != nil {
				t.Fatal(err)
			}
			standby.waitApplied(t, sentinel(t, src, "/src"))
			waitVerified(t, cfg)
		})
	}
}

// A holder killed with SIGKILL never releases its lock; a standby takes
// over when it expires and replicates what happened meanwhile.
func TestStandbyTakesOverAfterKill9(t *testing.T) {
	for _, api := range []string{apiV2, apiV3} {
		t.Run("dst-"+api, func(t *testing.T) {
			src, dst := newPair(t)
			args := []string{"--src-prefix", "/src", "--dst-prefix", "/replica", "--poll-timeout", "2s",
				"--lock-ttl", "3s", "--dst-api", api, src.URL(), dst.URL()}
			holder := startProcess(t, append([]string{"--reload"}, args...)...)
			last := sentinel(t, src, "/src")
			waitFor(t, 60*time.Second, "the holder to replicate", func() bool {
				if !holder.running() {
					t.Fatalf("holder exited:\n%s", holder.output)
				}
				return destinationIndex(t, dst, api, "/__replication/replica") >= last
			})

			cfg := lockConfig(t, src, dst, api)
			cfg.Standby = true
			standby := startMirror(t, cfg)
			waitFor(t, 30*time.Second, "the standby to stand by", func() bool { return standby.Status().Phase == phaseStandby })
			holder.cmd.Process.Kill()
			<-holder.done
			killed := time.Now()
			src.Set(t, "/src/after-kill", "y")
			standby.waitApplied(t, sentinel(t, src, "/src"))
			t.Logf("standby took over %s after the kill (lock TTL 3s)", time.Since(killed).Round(time.Millisecond))
			waitVerified(t, cfg)
		})
	}
}

// A holder that hangs (SIGSTOP) longer than its lock's TTL loses the
// lock to a standby. When it wakes up it must not write anything: every
// request it sends to the destination after waking goes through a proxy
// that records it, and none may be a write other than its attempt on
// the lock itself.
func TestPausedHolderNeverWritesAfterLosingTheLock(t *testing.T) {
	src, dst := newPair(t)
	proxy := etcdtest.NewProxy(t, dst.URL())
	args := []string{"--src-prefix", "/src", "--dst-prefix", "/replica", "--poll-timeout", "2s",
		"--lock-ttl", "3s", src.URL(), proxy.URL()}
	holder := startProcess(t, append([]string{"--reload"}, args...)...)
	waitIndexKey(t, dst, "/__replication/replica", sentinel(t, src, "/src"), holder)

	holder.cmd.Process.Signal(syscall.SIGSTOP)
	// While it hangs, the source changes: its open long poll receives the
	// event, which it will try to apply when it wakes up.
	src.Set(t, "/src/during-pause", "1")
	cfg := lockConfig(t, src, dst, apiV2)
	cfg.Standby = true
	standby := startMirror(t, cfg)
	standby.waitApplied(t, sentinel(t, src, "/src"))

	proxy.Reset()
	holder.cmd.Process.Signal(syscall.SIGCONT)
	src.Set(t, "/src/after-pause", "2")
	standby.waitApplied(t, sentinel(t, src, "/src"))
	if code := holder.exitCode(t, 30*time.Second); code != 1 || !strings.Contains(holder.output.String(), "lost the destination lock") {
		t.Fatalf("woken holder: exit %d, want 1 after losing the lock; output:\n%s", code, holder.output)
	}
	for _, r := range proxy.Requests() {
		if r.Method != "GET" && !strings.HasSuffix(r.Path, "/__replication/replica.lock") {
			t.Errorf("the woken holder wrote the destination: %s %s %v", r.Method, r.Path, r.Query)
		}
	}
	if !strings.Contains(holder.output.String(), "another mirror writes this destination") {
		t.Errorf("the woken holder did not name the new holder:\n%s", holder.output)
	}
	waitTreesEqual(t, src, dst, "/src", "/replica/src", nil)
	if standby.exited() {
		t.Fatalf("standby stopped: %v", standby.err)
	}
}

// A mirror whose lock is deleted behind its back (an operator, or a
// destination restored from backup) notices at its next renewal, stops
// writing, and takes the lock again: there is no one else.
func TestLostLockIsTakenAgain(t *testing.T) {
	src, dst := newPair(t)
	cfg := lockConfig(t, src, dst, apiV2)
	cfg.Reload = true
	m := startMirror(t, cfg)
	m.waitApplied(t, sentinel(t, src, "/src"))
	dst.Delete(t, "/__replication/replica.lock")
	waitFor(t, 30*time.Second, "the loss to be noticed", func() bool { return m.Status().LockLosses > 0 })
	m.waitApplied(t, sentinel(t, src, "/src"))
	waitVerified(t, cfg)
}

// destinationIndex reads the index key through the API the destination
// is written with.
func destinationIndex(t *testing.T, dst *etcdtest.Server, api, key string) uint64 {
	t.Helper()
	if api == apiV2 {
		return indexKey(t, dst, key)
	}
	cli, err := newV3Client(etcdConfigOf(dst.URL()))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) == 0 {
		return 0
	}
	n, _ := parseIndex(key, string(resp.Kvs[0].Value))
	return n
}

func etcdConfigOf(urls ...string) etcd.Config {
	return etcd.Config{Endpoints: urls, RequestTimeout: 5 * time.Second}
}

// waitVerified waits until Verify, run by a separate Mirror with cfg's
// mapping, finds the destination equal to the source.
func waitVerified(t testing.TB, cfg Config) {
	t.Helper()
	cfg.Reload, cfg.Standby = false, false
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var last *Comparison
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmp, err := m.Verify(ctx)
		cancel()
		if err == nil && cmp.Equal() {
			return
		}
		if err == nil {
			last = cmp
		}
		if time.Now().After(deadline) {
			if last != nil {
				t.Fatalf("destination does not match the source: %s\n%s", last.Summary(), strings.Join(last.Differences, "\n"))
			}
			t.Fatalf("verify: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
