package mirror

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
	client "go.etcd.io/etcd/client/v2"
)

// Benchmarks (run without -race):
//
//	go test -run '^$' -bench . -benchtime 5x ./mirror/
//
// BenchmarkCatchUp replays a backlog of events from the source's history and
// compares the rate with the destination's own sequential write rate,
// measured in the same round on the same cluster. BenchmarkSteadyStateLag
// writes 100 events/s and measures how long each takes to appear on the
// destination. BenchmarkMemory runs 100k events through a mirror process
// and samples its RSS.

const catchUpEvents = 900 // stays inside etcd's 1000-event history

func benchConfig(src, dst *etcdtest.Server, concurrency int) Config {
	return Config{
		Source:            etcd.Config{Endpoints: []string{src.URL()}},
		Destination:       etcd.Config{Endpoints: []string{dst.URL()}},
		SourcePrefix:      "/src",
		DestinationPrefix: "/replica",
		Concurrency:       concurrency,
		PollTimeout:       2 * time.Second,
		Logger:            slog.New(slog.DiscardHandler),
	}
}

// runUntil starts a mirror and returns once it has applied index idx.
func runUntil(b *testing.B, cfg Config, idx uint64) (stop func()) {
	m, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	for m.Status().AppliedIndex < idx {
		select {
		case err := <-done:
			b.Fatalf("mirror stopped: %v", err)
		default:
		}
		time.Sleep(200 * time.Microsecond)
	}
	return func() {
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		m.Close()
	}
}

func BenchmarkCatchUp(b *testing.B) {
	for _, c := range []struct {
		name        string
		fsync       bool
		srcDelay    time.Duration
		concurrency int // 0: the etcdmirror-style loop
	}{
		{"etcdmirror-style", false, 0, 0},
		{"concurrency=1", false, 0, 1},
		{"concurrency=16", false, 0, 16},
		{"fsync/etcdmirror-style", true, 0, 0},
		{"fsync/concurrency=1", true, 0, 1},
		{"fsync/concurrency=16", true, 0, 16},
		{"remote-source-rtt2ms/etcdmirror-style", false, 2 * time.Millisecond, 0},
		{"remote-source-rtt2ms/concurrency=16", false, 2 * time.Millisecond, 16},
	} {
		b.Run(c.name, func(b *testing.B) { benchCatchUp(b, c.fsync, c.srcDelay, c.concurrency) })
	}
}

func benchCatchUp(b *testing.B, fsync bool, srcDelay time.Duration, concurrency int) {
	src := etcdtest.New(b, etcdtest.Options{Fsync: fsync})
	dst := etcdtest.New(b, etcdtest.Options{Fsync: fsync})
	ctx := context.Background()
	sk, dk := src.Client(), dst.Client()
	cfg := benchConfig(src, dst, max(concurrency, 1))
	if srcDelay > 0 {
		cfg.Source.Endpoints = []string{"http://" + latencyLine(b, src.Addr(), srcDelay/2)}
	}
	cfg.Reload = true
	from := src.Set(b, "/src/init", "x").Index
	runUntil(b, cfg, from)()
	cfg.Reload = false

	var mirrorTime, dstTime time.Duration
	events := 0
	b.ResetTimer()
	for round := 0; round < b.N; round++ {
		b.StopTimer()
		// The destination's own sequential write rate, now.
		start := time.Now()
		for i := range catchUpEvents {
			if _, err := dk.Set(ctx, fmt.Sprintf("/scratch/k%d", i%200), strconv.Itoa(i), nil); err != nil {
				b.Fatal(err)
			}
		}
		dstTime += time.Since(start)
		// A backlog on the source: 200 keys changed 4-5 times each.
		var last uint64
		for i := range catchUpEvents {
			r, err := sk.Set(ctx, fmt.Sprintf("/src/pool/k%d", i%200), fmt.Sprintf("round %d value %d", round, i), nil)
			if err != nil {
				b.Fatal(err)
			}
			last = r.Index
		}
		b.StartTimer()
		start = time.Now()
		if concurrency == 0 {
			etcdmirrorLoop(b, cfg, from+1, last)
		} else {
			runUntil(b, cfg, last)()
		}
		mirrorTime += time.Since(start)
		b.StopTimer()
		from = last
		events += catchUpEvents
	}
	mirrorRate := float64(events) / mirrorTime.Seconds()
	dstRate := float64(events) / dstTime.Seconds()
	b.ReportMetric(mirrorRate, "events/s")
	b.ReportMetric(dstRate, "dst-seq-writes/s")
	b.ReportMetric(mirrorRate/dstRate, "ratio")
}

// etcdmirrorLoop replays events the way etcdmirror does, for comparison:
// one long poll, one write and one index write per event, in sequence.
func etcdmirrorLoop(b *testing.B, cfg Config, next, last uint64) {
	ctx := context.Background()
	src, err := etcd.New(ctx, cfg.Source)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	dst, err := etcd.New(ctx, cfg.Destination)
	if err != nil {
		b.Fatal(err)
	}
	defer dst.Close()
	poller, err := src.NewPoller(cfg.SourcePrefix)
	if err != nil {
		b.Fatal(err)
	}
	for next <= last {
		res, err := poller.Poll(ctx, next, 5*time.Second)
		if err != nil || res.Event == nil {
			b.Fatalf("poll %d: %v", next, err)
		}
		ev := res.Event
		if _, err := dst.Keys().Set(ctx, "/replica"+ev.Node.Key, ev.Node.Value, nil); err != nil {
			b.Fatal(err)
		}
		idx := ev.Node.ModifiedIndex
		if _, err := dst.Keys().Set(ctx, "/__replication/baseline", strconv.FormatUint(idx, 10), nil); err != nil {
			b.Fatal(err)
		}
		next = idx + 1
	}
}

// BenchmarkSteadyStateLag writes 100 events/s to the source for 10s and
// measures, for each, the time from the start of the source write to its
// arrival on the destination, seen by a watcher of the destination.
func BenchmarkSteadyStateLag(b *testing.B) {
	src, dst := etcdtest.New(b), etcdtest.New(b)
	cfg := benchConfig(src, dst, 16)
	cfg.Reload = true
	stop := runUntil(b, cfg, src.Set(b, "/src/init", "x").Index)
	defer stop()

	const rate, count = 100, 1000
	sent := make([]time.Time, count)
	seen := make([]time.Time, count)
	var mu sync.Mutex
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watcher := dst.Client().Watcher("/replica/src/lag", &client.WatcherOptions{AfterIndex: dst.Index(b), Recursive: true})
	got := make(chan struct{})
	go func() {
		n := 0
		for n < count {
			r, err := watcher.Next(ctx)
			if err != nil {
				return
			}
			i, err := strconv.Atoi(r.Node.Value)
			if err != nil {
				continue
			}
			mu.Lock()
			seen[i] = time.Now()
			mu.Unlock()
			n++
		}
		close(got)
	}()
	b.ResetTimer()
	for range b.N {
		tick := time.NewTicker(time.Second / rate)
		for i := range count {
			<-tick.C
			mu.Lock()
			sent[i] = time.Now()
			mu.Unlock()
			if _, err := src.Client().Set(ctx, fmt.Sprintf("/src/lag/k%d", i%50), strconv.Itoa(i), nil); err != nil {
				b.Fatal(err)
			}
		}
		tick.Stop()
		select {
		case <-got:
		case <-time.After(30 * time.Second):
			b.Fatal("not every write reached the destination")
		}
	}
	b.StopTimer()
	lags := make([]float64, count)
	for i := range count {
		lags[i] = seen[i].Sub(sent[i]).Seconds() * 1000
	}
	slices.Sort(lags)
	b.ReportMetric(lags[count/2], "p50-ms")
	b.ReportMetric(lags[count*99/100], "p99-ms")
	b.ReportMetric(lags[count-1], "max-ms")
}

// BenchmarkMemory runs 100k source events through a mirror process (the
// test binary re-executed) and samples its resident set size every 10k.
func BenchmarkMemory(b *testing.B) {
	for range b.N {
		benchMemory(b)
	}
}

func benchMemory(b *testing.B) {
	src, dst := etcdtest.New(b), etcdtest.New(b)
	raw := fmt.Sprintf(`["--reload","--port","-1","--src-prefix","/src","%s","%s"]`, src.URL(), dst.URL())
	cmd := helperCommand(raw)
	logs := &testutil.SyncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}()
	// Writers stay at most 500 events ahead, so that the mirror replays
	// every event instead of resynchronising.
	const total, sample, batch, writers = 100_000, 10_000, 500, 4
	ctx := context.Background()
	var rss []int
	for written := 0; written < total; written += batch {
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				keys := src.Client()
				for i := w; i < batch; i += writers {
					if _, err := keys.Set(ctx, fmt.Sprintf("/src/k%d", (written+i)%500), strconv.Itoa(written+i), nil); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		last := src.Index(b)
		deadline := time.Now().Add(60 * time.Second)
		for indexKeyOf(dst, "/__replication/replica") < last {
			if time.Now().After(deadline) {
				b.Fatalf("mirror did not catch up to %d; its log ends:\n%s", last, lastLines(logs.String(), 30))
			}
			time.Sleep(5 * time.Millisecond)
		}
		if (written+batch)%sample == 0 {
			rss = append(rss, residentKB(b, cmd.Process.Pid))
		}
	}
	if strings.Contains(logs.String(), "resynchronising reason=history_cleared") {
		b.Error("the mirror fell out of the history window and resynchronised")
	}
	b.ReportMetric(float64(rss[0])/1024, "rss-MB-at-10k")
	b.ReportMetric(float64(rss[len(rss)-1])/1024, "rss-MB-at-100k")
	b.ReportMetric(float64(slices.Max(rss))/1024, "rss-MB-max")
	b.Logf("RSS per 10k events (kB): %v", rss)
}

func indexKeyOf(s *etcdtest.Server, key string) uint64 {
	resp, err := s.Client().Get(context.Background(), key, nil)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(resp.Node.Value, 10, 64)
	return n
}

func residentKB(b *testing.B, pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.Fields(rest)[0])
			return kb
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// latencyLine relays TCP connections to target, delivering every chunk of
// bytes oneWay after it was sent in either direction: a long network link,
// as between two datacenters. It returns the address to dial.
func latencyLine(b *testing.B, target string, oneWay time.Duration) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go delayCopy(up, c, oneWay)
			go delayCopy(c, up, oneWay)
		}
	}()
	return ln.Addr().String()
}

func delayCopy(dst, src net.Conn, delay time.Duration) {
	type chunk struct {
		data []byte
		due  time.Time
	}
	chunks := make(chan chunk, 1024)
	go func() {
		defer close(chunks)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				chunks <- chunk{buf[:n], time.Now().Add(delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range chunks {
		time.Sleep(time.Until(c.due))
		if _, err := dst.Write(c.data); err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}
