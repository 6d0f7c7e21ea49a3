// Package watch keeps an in-memory tree of each watched root current, with
// the list-watch-resync shape of Kubernetes' reflector: one recursive GET
// per root (a snapshot at its X-Etcd-Index), then one recursive long poll at
// a time from index+1, shared by everyone interested in that root.
//
// It never misses an update: each poll resumes at the last index + 1; an
// empty answer is retried; etcd's error 401 (history cleared), an index that
// goes backwards or a changed cluster ID trigger a re-read of the root and a
// diff against what was known; a quiet root's resume index follows the
// cluster (see etcd.PollResult.QuietThrough) so it stays inside etcd's
// 1000-event history; and a periodic full resync catches anything else.
// Without etcd, or in interval mode, each root is re-read on a timer.
package watch

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcd"
	client "go.etcd.io/etcd/client/v2"
)

// Update reports a new snapshot of a root.
type Update struct {
	Root     string
	Snapshot *backends.Snapshot
	// Changed lists the keys whose value changed since the previous
	// snapshot of this root. It is nil for the first snapshot, when every
	// key counts as new.
	Changed []string
	// Reason says why: initial, event, resync, cache.
	Reason string
}

// Config describes a Watcher.
type Config struct {
	// Source reads roots. When it is an *etcd.Client and Interval is 0, the
	// roots are watched; otherwise they are re-read every Interval.
	Source backends.Source
	// Interval, when positive, selects interval mode.
	Interval time.Duration
	// ResyncInterval is the period of full re-reads in watch mode
	// (default 10m; negative disables).
	ResyncInterval time.Duration
	// PollTimeout bounds one long poll (default 10s; each poll gets up to
	// 20% jitter so many watchers do not reconnect in lockstep).
	PollTimeout time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failure
	// (defaults 500ms and 30s); delays double with jitter.
	MinBackoff, MaxBackoff time.Duration
	// OnUpdate receives every new snapshot. It is called from the roots'
	// goroutines, one call at a time per root, and must not block long.
	OnUpdate func(Update)
	// Observer, if set, hears about resyncs, restarts and errors (metrics).
	Observer Observer
	Logger   *slog.Logger
}

// Observer is told what the watcher does, for metrics.
type Observer interface {
	Resync(root, reason string)
	WatchRestart(root string, err error)
	FetchError(root string, err error)
}

type nopObserver struct{}

func (nopObserver) Resync(string, string)      {}
func (nopObserver) WatchRestart(string, error) {}
func (nopObserver) FetchError(string, error)   {}

// RootStatus is what is known about one root.
type RootStatus struct {
	Root      string    `json:"root"`
	Index     uint64    `json:"etcd_index"`
	ClusterID string    `json:"cluster_id,omitempty"`
	Keys      int       `json:"keys"`
	Connected bool      `json:"connected"`
	FromCache bool      `json:"from_cache"`
	LastSync  time.Time `json:"last_sync"`
	LastError string    `json:"last_error,omitempty"`
}

// Age is how old the data may be: zero while the root is connected and
// current, else the time since it last was.
func (s RootStatus) Age(now time.Time) time.Duration {
	if s.Connected || s.LastSync.IsZero() {
		if s.LastSync.IsZero() && !s.Connected {
			return -1
		}
		return 0
	}
	return now.Sub(s.LastSync)
}

// Watcher runs one loop per root.
type Watcher struct {
	cfg    Config
	mu     sync.Mutex
	roots  map[string]*rootLoop
	ctx    context.Context
	wg     sync.WaitGroup
	logger *slog.Logger
}

// New prepares a watcher; Start launches it.
func New(cfg Config) *Watcher {
	if cfg.ResyncInterval == 0 {
		cfg.ResyncInterval = 10 * time.Minute
	}
	if cfg.PollTimeout == 0 {
		cfg.PollTimeout = 10 * time.Second
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.OnUpdate == nil {
		cfg.OnUpdate = func(Update) {}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Watcher{cfg: cfg, roots: map[string]*rootLoop{}, logger: logger}
}

// Start runs the watcher until ctx is done. Seed, when not nil, gives
// snapshots to start from (a persisted cache): they are published at once,
// and each root's first read replaces them.
func (w *Watcher) Start(ctx context.Context, roots []string, seed map[string]*backends.Snapshot) {
	w.mu.Lock()
	w.ctx = ctx
	w.mu.Unlock()
	w.SetRoots(roots, seed)
}

// SetRoots changes the set of watched roots: loops for roots no longer
// wanted stop, new ones start, and the others carry on undisturbed. A new
// root with a seed snapshot starts from it (and reports it with reason
// "cache") until its first read replaces it.
func (w *Watcher) SetRoots(roots []string, seed map[string]*backends.Snapshot) {
	var seeded []Update
	w.mu.Lock()
	want := map[string]bool{}
	for _, r := range roots {
		want[r] = true
	}
	for root, l := range w.roots {
		if !want[root] {
			l.cancel()
			delete(w.roots, root)
		}
	}
	for _, root := range roots {
		if _, ok := w.roots[root]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(w.ctx)
		l := &rootLoop{w: w, root: root, cancel: cancel, resyncNow: make(chan struct{}, 1)}
		l.status.Root = root
		if snap := seed[root]; snap != nil {
			l.snap = snap
			l.status.FromCache, l.status.LastSync = true, snap.FetchedAt
			seeded = append(seeded, Update{Root: root, Snapshot: snap, Reason: "cache"})
		}
		w.roots[root] = l
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			l.run(ctx)
		}()
	}
	w.mu.Unlock()
	// Outside the lock: the listener may call back into the watcher.
	for _, u := range seeded {
		w.cfg.OnUpdate(u)
	}
}

// Wait blocks until every loop has stopped (after ctx is done).
func (w *Watcher) Wait() { w.wg.Wait() }

// Resync asks every root to re-read at once, as SIGHUP or an operator would.
func (w *Watcher) Resync() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, l := range w.roots {
		select {
		case l.resyncNow <- struct{}{}:
		default:
		}
	}
}

// Status reports every root, sorted by root.
func (w *Watcher) Status() []RootStatus {
	w.mu.Lock()
	loops := make([]*rootLoop, 0, len(w.roots))
	for _, l := range w.roots {
		loops = append(loops, l)
	}
	w.mu.Unlock()
	out := make([]RootStatus, 0, len(loops))
	for _, l := range loops {
		out = append(out, l.getStatus())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Root < out[j].Root })
	return out
}

// Snapshots returns the current snapshot of every root that has one.
func (w *Watcher) Snapshots() map[string]*backends.Snapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]*backends.Snapshot{}
	for root, l := range w.roots {
		if s := l.current(); s != nil {
			out[root] = s
		}
	}
	return out
}

// rootLoop keeps one root current.
type rootLoop struct {
	w         *Watcher
	root      string
	cancel    context.CancelFunc
	resyncNow chan struct{}

	mu     sync.Mutex
	snap   *backends.Snapshot
	status RootStatus
}

func (l *rootLoop) current() *backends.Snapshot {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.snap
}

func (l *rootLoop) getStatus() RootStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.status
	if l.snap != nil {
		s.Index, s.ClusterID, s.Keys = l.snap.Index, l.snap.ClusterID, l.snap.Tree.Len()
	}
	return s
}

func (l *rootLoop) setStatus(f func(*RootStatus)) {
	l.mu.Lock()
	f(&l.status)
	l.mu.Unlock()
}

// publish installs snap and tells the listener what changed. changed nil
// with a previous snapshot means "diff them".
func (l *rootLoop) publish(snap *backends.Snapshot, changed []string, reason string) {
	l.mu.Lock()
	prev := l.snap
	l.snap = snap
	l.mu.Unlock()
	if prev != nil && changed == nil {
		changed = []string{}
		backends.Diff(prev.Tree, snap.Tree, func(k string) { changed = append(changed, k) })
		if len(changed) == 0 {
			return
		}
	}
	l.w.cfg.OnUpdate(Update{Root: l.root, Snapshot: snap, Changed: changed, Reason: reason})
}

func (l *rootLoop) run(ctx context.Context) {
	c, isEtcd := l.w.cfg.Source.(*etcd.Client)
	if !isEtcd || l.w.cfg.Interval > 0 {
		l.runInterval(ctx)
		return
	}
	l.runWatch(ctx, c)
}

// list reads the whole root until it succeeds or ctx ends.
func (l *rootLoop) list(ctx context.Context, reason string) (*backends.Snapshot, bool) {
	b := l.newBackoff()
	for {
		snap, err := l.w.cfg.Source.Fetch(ctx, l.root)
		if err == nil {
			l.setStatus(func(s *RootStatus) {
				s.Connected, s.FromCache, s.LastSync, s.LastError = true, false, time.Now(), ""
			})
			l.publish(snap, nil, reason)
			return snap, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		l.failed(err)
		l.w.cfg.Observer.FetchError(l.root, err)
		if !b.wait(ctx) {
			return nil, false
		}
	}
}

func (l *rootLoop) failed(err error) {
	l.w.logger.Warn("etcd read failed; keeping last known data", "root", l.root, "err", err)
	l.setStatus(func(s *RootStatus) { s.Connected, s.LastError = false, err.Error() })
}

func (l *rootLoop) runInterval(ctx context.Context) {
	interval := l.w.cfg.Interval
	if interval <= 0 {
		interval = l.w.cfg.ResyncInterval
	}
	for {
		if _, ok := l.list(ctx, "resync"); !ok {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		case <-l.resyncNow:
		}
	}
}

func (l *rootLoop) runWatch(ctx context.Context, c *etcd.Client) {
	poller, err := c.NewPoller(l.root)
	if err != nil {
		l.failed(err)
		return
	}
	reason := "initial"
	for ctx.Err() == nil {
		snap, ok := l.list(ctx, reason)
		if !ok {
			return
		}
		if reason != "initial" {
			l.w.cfg.Observer.Resync(l.root, reason)
		}
		reason = l.follow(ctx, poller, snap)
		l.w.logger.Info("re-reading root", "root", l.root, "reason", reason)
	}
}

// Reasons that end following and trigger a re-read of the root.
var (
	errPeriodic  = errors.New("periodic")
	errRequested = errors.New("requested")
)

// follow applies events from snap's index on, until something calls for a
// full re-read; it returns why.
func (l *rootLoop) follow(ctx context.Context, p *etcd.Poller, snap *backends.Snapshot) string {
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go l.interrupt(fctx, cancel)
	next := snap.Index + 1
	tree := snap.Tree
	b := l.newBackoff()
	for {
		res, err := p.Poll(fctx, next, l.pollTimeout())
		switch {
		case ctx.Err() != nil:
			return "stopped"
		case fctx.Err() != nil:
			return context.Cause(fctx).Error()
		case etcd.IsHistoryCleared(err):
			l.w.cfg.Observer.WatchRestart(l.root, err)
			return "history-cleared"
		case err != nil:
			l.failed(err)
			l.w.cfg.Observer.WatchRestart(l.root, err)
			if !b.wait(fctx) {
				if ctx.Err() != nil {
					return "stopped"
				}
				return context.Cause(fctx).Error()
			}
			continue
		}
		b.reset()
		l.setStatus(func(s *RootStatus) { s.Connected, s.LastSync, s.LastError = true, time.Now(), "" })
		if res.Event == nil {
			if res.QuietThrough != 0 {
				if res.QuietThrough+1 < next {
					return "index-went-backwards"
				}
				next = res.QuietThrough + 1
				l.advanceIndex(res.QuietThrough)
			}
			continue
		}
		ev := res.Event
		if id := ev.ClusterID; id != "" && snap.ClusterID != "" && id != snap.ClusterID {
			return "cluster-id-changed"
		}
		if ev.Node.ModifiedIndex+1 < next {
			return "index-went-backwards"
		}
		next = ev.Node.ModifiedIndex + 1
		newTree, relevant := applyEvent(tree, l.root, ev)
		if !relevant {
			l.advanceIndex(ev.Node.ModifiedIndex)
			continue
		}
		tree = newTree
		snap = &backends.Snapshot{Root: l.root, Tree: tree, Index: ev.Node.ModifiedIndex,
			ClusterID: snap.ClusterID, FetchedAt: time.Now()}
		l.publish(snap, nil, "event")
	}
}

// interrupt cancels a follow when the periodic resync is due or a resync
// is requested.
func (l *rootLoop) interrupt(ctx context.Context, cancel context.CancelCauseFunc) {
	var periodic <-chan time.Time
	if l.w.cfg.ResyncInterval > 0 {
		t := time.NewTimer(jitter(l.w.cfg.ResyncInterval, 0.1))
		defer t.Stop()
		periodic = t.C
	}
	select {
	case <-ctx.Done():
	case <-periodic:
		cancel(errPeriodic)
	case <-l.resyncNow:
		cancel(errRequested)
	}
}

// advanceIndex records a newer index for a root whose data did not change.
func (l *rootLoop) advanceIndex(index uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.snap != nil && index > l.snap.Index {
		s := *l.snap
		s.Index = index
		l.snap = &s
	}
}

// applyEvent folds one v2 event into tree. It reports false for events
// that do not touch the root's visible keys: siblings that leak from
// etcd's history scan (a delete of /conf reaches a watcher of /conftool),
// hidden keys (a segment starting with _, which GET never lists), and
// directory-only changes.
func applyEvent(tree *backends.Tree, root string, ev *client.Response) (*backends.Tree, bool) {
	key := backends.CleanKey(ev.Node.Key)
	switch {
	case backends.Covers(root, key):
		if hidden(strings.TrimPrefix(key, root)) {
			return tree, false
		}
	case backends.Covers(key, root):
		// An ancestor of the root went away, and the root with it.
		if isDelete(ev.Action) {
			return &backends.Tree{}, tree.Len() > 0
		}
		return tree, false
	default:
		return tree, false
	}
	if isDelete(ev.Action) {
		return tree.Delete(key), true
	}
	if ev.Node.Dir {
		return tree, false
	}
	return tree.Set(key, ev.Node.Value), true
}

func isDelete(action string) bool {
	return action == "delete" || action == "compareAndDelete" || action == "expire"
}

func hidden(path string) bool {
	for _, seg := range backends.Segments(path) {
		if strings.HasPrefix(seg, "_") {
			return true
		}
	}
	return false
}

func (l *rootLoop) pollTimeout() time.Duration { return jitter(l.w.cfg.PollTimeout, 0.2) }

// jitter returns d plus up to frac*d, at random.
func jitter(d time.Duration, frac float64) time.Duration {
	return d + time.Duration(rand.Float64()*frac*float64(d))
}

// backoff is a capped exponential delay with jitter.
type backoff struct {
	min, max, cur time.Duration
}

func (l *rootLoop) newBackoff() *backoff {
	return &backoff{min: l.w.cfg.MinBackoff, max: l.w.cfg.MaxBackoff}
}

func (b *backoff) reset() { b.cur = 0 }

// wait sleeps for the next delay; false means ctx ended first.
func (b *backoff) wait(ctx context.Context) bool {
	if b.cur == 0 {
		b.cur = b.min
	} else if b.cur *= 2; b.cur > b.max {
		b.cur = b.max
	}
	d := b.cur/2 + time.Duration(rand.Int64N(int64(b.cur/2)+1))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
