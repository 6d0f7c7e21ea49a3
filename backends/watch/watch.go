// Package watch keeps every root an agent reads current from one watch: a
// single list-watch of the roots' longest common ancestor (or of a chosen
// prefix), whose events are routed in memory into one tree per root. A
// host therefore holds one connection and one etcd watcher however many
// roots its resources read, and an event no root reads costs a tree update
// in memory, never a render.
//
// The copy of the watched prefix (a keyspace.Space, with etcd's indexes)
// is also what the last-known-good cache saves and what a relay serves.
//
// Nothing is missed: see etcd.Feed for how the watch resumes, re-reads
// after etcd's error 401, a changed cluster or a member that is behind, and
// never goes back in time. Sources that cannot be watched (files, the
// environment), and any source in interval mode, are re-read on a timer.
package watch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/keyspace"
	"github.com/confsync/confsync/internal/retry"
)

// Update reports a new snapshot of a root.
type Update struct {
	Root     string
	Snapshot *backends.Snapshot
	// Changed lists the keys whose value changed since the previous
	// snapshot of this root. It is nil for the first snapshot, when every
	// key counts as new.
	Changed []string
	// Reason says why: initial, event, cache, or the reason of a re-read
	// (history-cleared, periodic, requested, ...).
	Reason string
}

// Config describes a Watcher.
type Config struct {
	// Source reads roots. A source that can be followed (etcd) is watched
	// unless Interval is set; any other is re-read every Interval (or
	// ResyncInterval).
	Source backends.Source
	// Prefix is the key watched; "" means the roots' longest common
	// ancestor. It must cover every root (see PrefixFor).
	Prefix string
	// Interval, when positive, selects interval mode.
	Interval time.Duration
	// ResyncInterval is the period of full re-reads in watch mode
	// (default 10m; negative disables).
	ResyncInterval time.Duration
	// PollTimeout bounds one long poll, and a silent stream is registered
	// again after it (default 10s).
	PollTimeout time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failure
	// (defaults 500ms and 30s).
	MinBackoff, MaxBackoff time.Duration
	// NoStream keeps the watch to long polls.
	NoStream bool
	// OnUpdate receives every new snapshot of a root. Calls come one at a
	// time, from the watch's goroutine, and must not block long.
	OnUpdate func(Update)
	// Listener, if set, hears every change of the copy of the prefix.
	Listener Listener
	// Observer, if set, hears about re-reads and errors (metrics).
	Observer Observer
	Logger   *slog.Logger
}

// Observer is told what the watch does, for metrics.
type Observer interface {
	Resync(prefix, reason string)
	WatchRestart(prefix string, err error)
	FetchError(prefix string, err error)
}

// Listener hears every change of the copy of the watched prefix, in order,
// from the watch's goroutine: a relay serves it.
type Listener interface {
	// Reset installs a whole new copy: a full read, or the cache at start
	// (reason "cache").
	Reset(c Copy, reason string)
	// Event is a change under the prefix; s is the copy after it.
	Event(s *keyspace.Space, ev *etcd.Event)
	// Progress says nothing under the prefix changed up to s.Index().
	Progress(s *keyspace.Space)
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

// Age is how old the data may be: zero while connected and current, else
// the time since it last was; -1 when it never was.
func (s RootStatus) Age(now time.Time) time.Duration {
	switch {
	case s.Connected:
		return 0
	case s.LastSync.IsZero():
		return -1
	}
	return now.Sub(s.LastSync)
}

// Status is the one watch.
type Status struct {
	etcd.FeedStatus
	// Keys is the number of values held under the prefix.
	Keys int `json:"keys"`
	// FromCache is true until the first read of etcd replaces the cache.
	FromCache bool `json:"from_cache"`
	// LastSync is when the data was last known current.
	LastSync time.Time `json:"last_sync"`
}

// Age is how old the watch's data may be, as RootStatus.Age.
func (s Status) Age(now time.Time) time.Duration {
	return RootStatus{Connected: s.Connected, LastSync: s.LastSync}.Age(now)
}

// Copy is the data of the watched prefix at one moment.
type Copy struct {
	Space     *keyspace.Space
	ClusterID string
	// FetchedAt is when the data was last known current.
	FetchedAt time.Time
	// FromCache is true for data loaded from the cache.
	FromCache bool
	// only, when set, limits the copy to these roots: a format 1 cache
	// knew its roots, not the keys between them.
	only []string
}

// covers reports whether the copy holds root's data.
func (c *Copy) covers(root string) bool {
	if c == nil || c.Space == nil || !c.Space.Covers(root) {
		return false
	}
	if c.only == nil {
		return true
	}
	for _, r := range c.only {
		if backends.Covers(r, root) {
			return true
		}
	}
	return false
}

// Watcher keeps every root current from one watch.
type Watcher struct {
	cfg    Config
	logger *slog.Logger
	ctx    context.Context
	wg     sync.WaitGroup

	mu       sync.Mutex
	roots    []string
	trees    map[string]*backends.Tree // by root; absent until the root has data
	copy     Copy                      // Space is nil until there is data
	prefix   string
	follower etcd.Follower
	stop     context.CancelFunc
	done     chan struct{}
	gen      int // bumped at each new follower, so a stopped one cannot write
}

// New prepares a watcher; Start launches it.
func New(cfg Config) *Watcher {
	if cfg.ResyncInterval == 0 {
		cfg.ResyncInterval = 10 * time.Minute
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
	return &Watcher{cfg: cfg, trees: map[string]*backends.Tree{}, logger: logger}
}

// PrefixFor is the key one watch must follow to see every root: the
// configured prefix, which must cover them all, or else their longest
// common ancestor by whole path segments. A root below a hidden segment
// (one starting with _) cannot be watched that way: etcd leaves hidden
// nodes out of recursive reads and watches of their ancestors.
func PrefixFor(configured string, roots []string) (string, error) {
	prefix := backends.CleanKey(configured)
	if configured == "" {
		prefix = CommonAncestor(roots)
	}
	for _, r := range roots {
		if !backends.Covers(prefix, r) {
			return "", fmt.Errorf("the watch prefix %s does not cover %s, which a resource reads; give a prefix above every key read, or none", prefix, r)
		}
		if keyspaceHidden(prefix, backends.CleanKey(r)) {
			return "", fmt.Errorf("%s lies under a hidden key (a segment starting with _): etcd leaves it out of a recursive watch of %s, so one watch cannot follow it", r, prefix)
		}
	}
	return prefix, nil
}

// CommonAncestor is the longest key, by whole path segments, that covers
// every root; "/" when there are none.
func CommonAncestor(roots []string) string {
	if len(roots) == 0 {
		return "/"
	}
	common := backends.Segments(backends.CleanKey(roots[0]))
	for _, r := range roots[1:] {
		segs := backends.Segments(backends.CleanKey(r))
		n := 0
		for n < len(common) && n < len(segs) && common[n] == segs[n] {
			n++
		}
		common = common[:n]
	}
	return backends.CleanKey(strings.Join(common, "/"))
}

func keyspaceHidden(prefix, key string) bool {
	for _, seg := range backends.Segments(strings.TrimPrefix(key, prefix)) {
		if strings.HasPrefix(seg, "_") {
			return true
		}
	}
	return false
}

// Start runs the watcher until ctx is done. Seed, when not nil, is data to
// start from (the cache): roots it covers are published at once with
// reason "cache", and the first read of the source replaces it.
func (w *Watcher) Start(ctx context.Context, roots []string, seed *Copy) error {
	w.mu.Lock()
	w.ctx = ctx
	w.mu.Unlock()
	return w.SetRoots(roots, seed)
}

// SetRoots changes the set of roots. Roots that stay keep their data; new
// roots inside the watched prefix are cut from the copy at once; the watch
// moves only when the prefix it must follow changes.
func (w *Watcher) SetRoots(roots []string, seed *Copy) error {
	roots = backends.MinimalRoots(roots)
	prefix, err := PrefixFor(w.cfg.Prefix, roots)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.roots = roots
	updates := w.adoptRoots(seed)
	seeded := w.copy.Space == nil && seed != nil && seed.only == nil && seed.Space != nil && seed.Space.Prefix() == prefix
	if seeded {
		w.copy = *seed
	}
	restart := prefix != w.prefix || w.follower == nil
	oldStop, oldDone := w.stop, w.done
	w.mu.Unlock()
	if l := w.cfg.Listener; l != nil && seeded {
		l.Reset(*seed, "cache")
	}
	w.publish(updates)
	if restart {
		if oldStop != nil {
			oldStop()
			<-oldDone
		}
		w.follow(prefix)
	}
	return nil
}

// adoptRoots drops trees of roots no longer wanted and gives new roots their
// data from the live copy or else the seed. Caller holds w.mu.
func (w *Watcher) adoptRoots(seed *Copy) []Update {
	want := map[string]bool{}
	for _, r := range w.roots {
		want[r] = true
	}
	for r := range w.trees {
		if !want[r] {
			delete(w.trees, r)
		}
	}
	var updates []Update
	for _, r := range w.roots {
		if _, ok := w.trees[r]; ok {
			continue
		}
		src, reason := w.copy, "initial"
		if src.FromCache {
			reason = "cache"
		}
		if !src.covers(r) {
			if !seed.covers(r) {
				continue
			}
			src, reason = *seed, "cache"
		}
		w.trees[r] = cut(src.Space, r)
		updates = append(updates, Update{Root: r, Snapshot: w.snapshotOf(r, src), Reason: reason})
	}
	return updates
}

// follow starts the follower of prefix.
func (w *Watcher) follow(prefix string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gen++
	w.prefix = prefix
	ctx, cancel := context.WithCancel(w.ctx)
	w.stop, w.done = cancel, make(chan struct{})
	h := &handler{w: w, gen: w.gen, prefix: prefix}
	w.follower = w.newFollower(prefix, h)
	f, done := w.follower, w.done
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer close(done)
		f.Run(ctx, h)
	}()
}

// followable is a source that can be watched: etcd's v2 client, and its
// counterpart for the v3 API.
type followable interface {
	Follow(etcd.FeedConfig) etcd.Follower
}

func (w *Watcher) newFollower(prefix string, h *handler) etcd.Follower {
	if src, ok := w.cfg.Source.(followable); ok {
		return src.Follow(etcd.FeedConfig{
			Prefix: prefix, Interval: w.cfg.Interval, ResyncInterval: w.cfg.ResyncInterval,
			PollTimeout: w.cfg.PollTimeout, MinBackoff: w.cfg.MinBackoff, MaxBackoff: w.cfg.MaxBackoff,
			NoStream: w.cfg.NoStream, Observer: feedObserver{w.cfg.Observer, prefix}, Logger: w.logger,
		})
	}
	interval := w.cfg.Interval
	if interval <= 0 {
		interval = w.cfg.ResyncInterval
	}
	return &fetcher{src: w.cfg.Source, prefix: prefix, interval: interval, install: h.install,
		backoff: w.backoff(), observer: w.cfg.Observer, logger: w.logger, resync: make(chan struct{}, 1)}
}

func (w *Watcher) backoff() *retry.Backoff {
	min, max := w.cfg.MinBackoff, w.cfg.MaxBackoff
	if min <= 0 {
		min = 500 * time.Millisecond
	}
	if max <= 0 {
		max = 30 * time.Second
	}
	return &retry.Backoff{Min: min, Max: max}
}

// feedObserver passes a feed's news on with the prefix.
type feedObserver struct {
	o      Observer
	prefix string
}

func (f feedObserver) Resync(reason string) { f.o.Resync(f.prefix, reason) }
func (f feedObserver) WatchError(err error) { f.o.WatchRestart(f.prefix, err) }
func (f feedObserver) ReadError(err error)  { f.o.FetchError(f.prefix, err) }

// Wait blocks until the watch has stopped (after ctx is done).
func (w *Watcher) Wait() { w.wg.Wait() }

// Resync asks for a full re-read at once, as SIGHUP or an operator would.
func (w *Watcher) Resync() {
	w.mu.Lock()
	f := w.follower
	w.mu.Unlock()
	if f != nil {
		f.Resync()
	}
}

// Copy is the data of the watched prefix now; Space is nil before any.
func (w *Watcher) Copy() Copy {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.copy
	if !c.FromCache {
		if last := w.lastContact(); last.After(c.FetchedAt) {
			c.FetchedAt = last
		}
	}
	return c
}

// Status reports the watch.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	f, c := w.follower, w.copy
	w.mu.Unlock()
	var s Status
	if f != nil {
		s.FeedStatus = f.Status()
	}
	s.FromCache, s.LastSync = c.FromCache, c.FetchedAt
	if s.LastContact.After(s.LastSync) && !c.FromCache {
		s.LastSync = s.LastContact
	}
	if c.Space != nil {
		s.Keys = c.Space.Len()
		if s.Index < c.Space.Index() {
			s.Index = c.Space.Index()
		}
		if s.ClusterID == "" {
			s.ClusterID = c.ClusterID
		}
	}
	if f == nil || s.FeedStatus.Prefix == "" {
		s.Prefix = w.prefixNow()
	}
	return s
}

func (w *Watcher) prefixNow() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.prefix
}

// lastContact is when the source last answered. Caller holds w.mu.
func (w *Watcher) lastContact() time.Time {
	if w.follower == nil {
		return time.Time{}
	}
	return w.follower.Status().LastContact
}

// Roots reports every root, sorted.
func (w *Watcher) Roots() []RootStatus {
	st := w.Status()
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]RootStatus, 0, len(w.roots))
	for _, r := range w.roots {
		rs := RootStatus{Root: r, Connected: st.Connected && !st.FromCache, FromCache: st.FromCache,
			LastError: st.LastError}
		if t, ok := w.trees[r]; ok {
			rs.Index, rs.ClusterID, rs.Keys, rs.LastSync = st.Index, st.ClusterID, t.Len(), st.LastSync
		} else {
			rs.Connected = false
		}
		out = append(out, rs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Root < out[j].Root })
	return out
}

// Snapshots returns the current snapshot of every root that has data.
func (w *Watcher) Snapshots() map[string]*backends.Snapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]*backends.Snapshot, len(w.trees))
	for r := range w.trees {
		out[r] = w.snapshotOf(r, w.copy)
	}
	return out
}

// snapshotOf is root's snapshot from c. Caller holds w.mu.
func (w *Watcher) snapshotOf(root string, c Copy) *backends.Snapshot {
	s := &backends.Snapshot{Root: root, Tree: w.trees[root], ClusterID: c.ClusterID, FetchedAt: c.FetchedAt}
	if c.Space != nil {
		s.Index = c.Space.Index()
	}
	return s
}

func (w *Watcher) publish(updates []Update) {
	for _, u := range updates {
		w.cfg.OnUpdate(u)
	}
}

// cut is the tree of root's values in s.
func cut(s *keyspace.Space, root string) *backends.Tree {
	var b backends.Builder
	s.WalkLeaves(root, func(k, v string) bool {
		b.Set(k, v)
		return true
	})
	return b.Tree()
}

// handler applies one follower's news to the watcher. A follower that has
// been replaced may still be delivering; gen makes it a no-op.
type handler struct {
	w      *Watcher
	gen    int
	prefix string
}

var errStale = errors.New("stale follower")

// lock takes w.mu for a current follower.
func (h *handler) lock() error {
	h.w.mu.Lock()
	if h.gen != h.w.gen {
		h.w.mu.Unlock()
		return errStale
	}
	return nil
}

func (h *handler) Reset(l *etcd.Listing, reason string) {
	h.install(keyspace.FromWire(h.prefix, l.Node, l.Index), l.ClusterID, reason)
}

// install replaces the copy with s and publishes every root that changed.
func (h *handler) install(s *keyspace.Space, clusterID, reason string) {
	if h.lock() != nil {
		return
	}
	w := h.w
	w.copy = Copy{Space: s, ClusterID: clusterID, FetchedAt: time.Now()}
	installed := w.copy
	var updates []Update
	for _, r := range w.roots {
		old, had := w.trees[r]
		tree := cut(s, r)
		w.trees[r] = tree
		u := Update{Root: r, Snapshot: w.snapshotOf(r, w.copy), Reason: reason}
		if had {
			u.Changed = []string{}
			backends.Diff(old, tree, func(k string) { u.Changed = append(u.Changed, k) })
			if len(u.Changed) == 0 {
				continue
			}
		}
		updates = append(updates, u)
	}
	w.mu.Unlock()
	if l := w.cfg.Listener; l != nil {
		l.Reset(installed, reason)
	}
	w.publish(updates)
}

func (h *handler) Apply(ev *etcd.Event) {
	if h.lock() != nil {
		return
	}
	w := h.w
	old := w.copy.Space
	relevant := old.Relevant(ev)
	s := old.Apply(ev)
	w.copy.Space, w.copy.FetchedAt, w.copy.FromCache = s, time.Now(), false
	var updates []Update
	if relevant {
		for _, r := range w.roots {
			before := w.trees[r]
			after := applyToRoot(before, r, ev)
			if after == before {
				continue
			}
			u := Update{Root: r, Reason: "event", Changed: []string{}}
			backends.Diff(before, after, func(k string) { u.Changed = append(u.Changed, k) })
			if len(u.Changed) == 0 {
				continue
			}
			w.trees[r] = after
			u.Snapshot = w.snapshotOf(r, w.copy)
			updates = append(updates, u)
		}
	}
	w.mu.Unlock()
	if l := w.cfg.Listener; l != nil {
		if relevant {
			l.Event(s, ev)
		} else {
			l.Progress(s)
		}
	}
	w.publish(updates)
}

func (h *handler) Progress(index uint64) {
	if h.lock() != nil {
		return
	}
	w := h.w
	s := w.copy.Space.WithIndex(index)
	w.copy.Space, w.copy.FetchedAt = s, time.Now()
	w.mu.Unlock()
	if l := w.cfg.Listener; l != nil {
		l.Progress(s)
	}
}

// applyToRoot is root's tree after ev, the same tree when ev does not
// change root's values.
func applyToRoot(tree *backends.Tree, root string, ev *etcd.Event) *backends.Tree {
	if tree == nil {
		return nil // the root has no data yet; its first read brings it
	}
	key := ev.Key()
	if !strings.HasPrefix(key, root) && !strings.HasPrefix(root, key) {
		return tree // the common case: a cheap test before the exact one
	}
	switch {
	case backends.Covers(root, key):
		if ev.IsDelete() {
			return tree.Delete(key)
		}
		if ev.Node.Dir || ev.Node.Value == nil {
			return tree // a directory's own change: no value moves
		}
		if v, ok := tree.Get(key); ok && v == *ev.Node.Value {
			return tree
		}
		return tree.Set(key, *ev.Node.Value)
	case backends.Covers(key, root) && ev.IsDelete() && tree.Len() > 0:
		return &backends.Tree{}
	}
	return tree
}
