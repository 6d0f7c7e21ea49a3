package mirror

import (
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Benchmarks of the v3 destination (run without -race):
//
//	go test -run '^$' -bench 'BenchmarkV3CatchUp' -benchtime 5x ./mirror/
//
// Each round writes a backlog of catchUpEvents changes (200 keys, 4-5
// changes each) to the stopped mirror's source, then times the catch-up,
// and measures the destination's own sequential write rate (one v3 put
// after another) in the same round. etcdctl-make-mirror replays the same
// backlog with Debian's etcdctl (ETCDCTL_API=3): it is frozen (SIGSTOP)
// while the backlog is written and timed from SIGCONT until the last
// change is on the destination.

func BenchmarkV3CatchUp(b *testing.B) {
	for _, c := range []struct {
		name  string
		fsync bool
		run   func(b *testing.B, src, dst *etcdtest.Server)
	}{
		{"v3-to-v3", false, func(b *testing.B, src, dst *etcdtest.Server) { benchV3Mirror(b, src, dst, apiV3) }},
		{"v2-to-v3", false, func(b *testing.B, src, dst *etcdtest.Server) { benchV3Mirror(b, src, dst, apiV2) }},
		{"etcdctl-make-mirror", false, benchMakeMirror},
		{"fsync/v3-to-v3", true, func(b *testing.B, src, dst *etcdtest.Server) { benchV3Mirror(b, src, dst, apiV3) }},
		{"fsync/etcdctl-make-mirror", true, benchMakeMirror},
	} {
		b.Run(c.name, func(b *testing.B) {
			src := etcdtest.New(b, etcdtest.Options{Fsync: c.fsync})
			dst := etcdtest.New(b, etcdtest.Options{Fsync: c.fsync})
			c.run(b, src, dst)
		})
	}
}

// backlog writes catchUpEvents changes to the source and returns the
// index or revision of the last one.
func backlog(b *testing.B, src *etcdtest.Server, api string, round int) uint64 {
	ctx := context.Background()
	var last uint64
	if api == apiV2 {
		keys := src.Client()
		for i := range catchUpEvents {
			r, err := keys.Set(ctx, fmt.Sprintf("/src/pool/k%d", i%200), fmt.Sprintf("round %d value %d", round, i), nil)
			if err != nil {
				b.Fatal(err)
			}
			last = r.Index
		}
		return last
	}
	cli := benchV3Client(b, src.URL())
	for i := range catchUpEvents {
		r, err := cli.Put(ctx, fmt.Sprintf("/src/pool/k%d", i%200), fmt.Sprintf("round %d value %d", round, i))
		if err != nil {
			b.Fatal(err)
		}
		last = uint64(r.Header.Revision)
	}
	return last
}

// dstSequentialRate is the destination's own rate of one v3 put after
// another, measured now.
func dstSequentialRate(b *testing.B, dst *etcdtest.Server) time.Duration {
	cli := benchV3Client(b, dst.URL())
	start := time.Now()
	for i := range catchUpEvents {
		if _, err := cli.Put(context.Background(), fmt.Sprintf("/scratch/k%d", i%200), strconv.Itoa(i)); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

func benchV3Client(b *testing.B, url string) *clientv3.Client {
	cli, err := newV3Client(etcdConfigOf(url))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cli.Close() })
	return cli
}

func benchV3Mirror(b *testing.B, src, dst *etcdtest.Server, srcAPI string) {
	cfg := Config{
		Source: etcdConfigOf(src.URL()), Destination: etcdConfigOf(dst.URL()),
		SourceAPI: srcAPI, DestinationAPI: apiV3,
		SourcePrefix: "/src", DestinationPrefix: "/replica", PollTimeout: 2 * time.Second,
		Logger: slog.New(slog.DiscardHandler), Reload: true,
	}
	init := backlog(b, src, srcAPI, -1)
	runUntil(b, cfg, init)()
	cfg.Reload = false
	var mirrorTime, dstTime time.Duration
	events := 0
	b.ResetTimer()
	for round := range b.N {
		b.StopTimer()
		dstTime += dstSequentialRate(b, dst)
		last := backlog(b, src, srcAPI, round)
		b.StartTimer()
		start := time.Now()
		stop := runUntil(b, cfg, last)
		mirrorTime += time.Since(start)
		b.StopTimer()
		stopped := time.Now()
		stop()
		if d := time.Since(stopped); d > time.Second {
			b.Logf("stopping the mirror took %s", d)
		}
		events += catchUpEvents
	}
	reportRates(b, events, mirrorTime, dstTime)
}

func reportRates(b *testing.B, events int, mirrorTime, dstTime time.Duration) {
	mirrorRate := float64(events) / mirrorTime.Seconds()
	dstRate := float64(events) / dstTime.Seconds()
	b.ReportMetric(mirrorRate, "events/s")
	b.ReportMetric(dstRate, "dst-seq-writes/s")
	b.ReportMetric(mirrorRate/dstRate, "ratio")
}

func benchMakeMirror(b *testing.B, src, dst *etcdtest.Server) {
	if _, err := exec.LookPath("etcdctl"); err != nil {
		b.Skip("etcdctl not installed (apt-get install etcd-client)")
	}
	cmd := exec.Command("etcdctl", "--endpoints", src.URL(), "make-mirror", "--prefix", "/src", "--dest-prefix", "/replica/src", dst.URL())
	cmd.Env = append(cmd.Environ(), "ETCDCTL_API=3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
	})
	dcli := benchV3Client(b, dst.URL())
	waitValue := func(key, value string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		w := dcli.Watch(ctx, key)
		if r, err := dcli.Get(ctx, key); err == nil && len(r.Kvs) > 0 && string(r.Kvs[0].Value) == value {
			return
		}
		for resp := range w {
			for _, e := range resp.Events {
				if string(e.Kv.Value) == value {
					return
				}
			}
		}
		b.Fatalf("make-mirror did not deliver %s=%s", key, value)
	}
	ready := time.Now().String()
	benchV3Client(b, src.URL()).Put(context.Background(), "/src/ready", ready)
	waitValue("/replica/src/ready", ready) // the base copy is done; it watches now

	var mirrorTime, dstTime time.Duration
	events := 0
	b.ResetTimer()
	for round := range b.N {
		b.StopTimer()
		dstTime += dstSequentialRate(b, dst)
		cmd.Process.Signal(syscall.SIGSTOP)
		backlog(b, src, apiV3, round)
		lastKey := fmt.Sprintf("/replica/src/pool/k%d", (catchUpEvents-1)%200)
		lastValue := fmt.Sprintf("round %d value %d", round, catchUpEvents-1)
		b.StartTimer()
		start := time.Now()
		cmd.Process.Signal(syscall.SIGCONT)
		waitValue(lastKey, lastValue)
		mirrorTime += time.Since(start)
		b.StopTimer()
		events += catchUpEvents
	}
	reportRates(b, events, mirrorTime, dstTime)
}
