package watch

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/keyspace"
	"github.com/confsync/confsync/internal/retry"
)

// fetcher follows a source that cannot be watched by reading the prefix
// every interval, or at once when asked.
type fetcher struct {
	src      backends.Source
	prefix   string
	interval time.Duration
	install  func(s *keyspace.Space, clusterID, reason string)
	backoff  *retry.Backoff
	observer Observer
	logger   *slog.Logger
	resync   chan struct{}

	mu     sync.Mutex
	status etcd.FeedStatus
}

func (f *fetcher) Run(ctx context.Context, _ etcd.FeedHandler) {
	f.mu.Lock()
	f.status.Prefix, f.status.Mode = f.prefix, "interval"
	f.mu.Unlock()
	reason := "initial"
	for {
		snap, err := f.src.Fetch(ctx, f.prefix)
		if ctx.Err() != nil {
			return
		}
		wait := f.interval
		if err != nil {
			f.setStatus(func(s *etcd.FeedStatus) { s.Connected, s.LastError = false, err.Error() })
			f.observer.FetchError(f.prefix, err)
			f.logger.Warn("read failed; keeping the last known data", "prefix", f.prefix, "err", err)
			wait = f.backoff.Next()
		} else {
			f.backoff.Reset()
			f.setStatus(func(s *etcd.FeedStatus) {
				s.Connected, s.LastError, s.LastContact, s.Index = true, "", time.Now(), snap.Index
			})
			f.install(keyspace.FromLeaves(f.prefix, snap.Tree, snap.Index), snap.ClusterID, reason)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
			reason = "interval"
		case <-f.resync:
			reason = "requested"
		}
	}
}

func (f *fetcher) Resync() {
	select {
	case f.resync <- struct{}{}:
	default:
	}
}

func (f *fetcher) Status() etcd.FeedStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

func (f *fetcher) setStatus(fn func(*etcd.FeedStatus)) {
	f.mu.Lock()
	fn(&f.status)
	f.mu.Unlock()
}
