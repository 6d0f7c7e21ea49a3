package agent

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/keyspace"
	"github.com/confsync/confsync/backends/watch"
	"github.com/confsync/confsync/internal/sdnotify"
	"github.com/prometheus/client_golang/prometheus"
)

// Config describes the daemon.
type Config struct {
	Load   LoadOptions
	Source backends.Source
	// Interval, when positive, re-reads every root on that period instead
	// of watching.
	Interval time.Duration
	// ResyncInterval is how often every root is re-read and every resource
	// re-applied in watch mode (default 10m, negative disables).
	ResyncInterval time.Duration
	// WaitMin and WaitMax are the quiescence: after a change, wait until
	// WaitMin passes without another, but never longer than WaitMax. Zero
	// renders at once.
	WaitMin, WaitMax time.Duration
	// MinRenderGap limits a group without quiescence to one pass per gap
	// (default 50ms; negative disables): a change after a quiet spell
	// renders at once, while a burst of writes renders every gap and once
	// more after its last write, instead of once per write.
	MinRenderGap time.Duration
	// StateDir holds the last-known-good cache; "" disables it.
	StateDir string
	// CacheSource names the data source in the cache, so that a cache
	// written for another cluster is not used.
	CacheSource string
	// Grace is how long in-flight commands may run after shutdown begins
	// before they are killed (default 30s).
	Grace time.Duration
	// RetryMin and RetryMax bound the backoff of failed resources
	// (defaults 1s and 2m).
	RetryMin, RetryMax time.Duration
	// Workers is how many groups are processed at once (default 4).
	Workers int
	// DataFiles are the file backend's files and directories: a change to
	// any of them re-reads every root at once.
	DataFiles []string
	// Watch tunes the shared watch (poll timeout, backoff); the fields the
	// agent owns (Source, Interval, OnUpdate...) are set by the agent.
	Watch watch.Config
	// Options control writing (noop, sync-only...) and hold the logger.
	Options
	// Registry receives the agent's metrics; nil makes a new one.
	Registry *prometheus.Registry
	// Notifier tells systemd when the agent is ready, how it is doing and
	// that its render queue turns (nil, or outside systemd: nothing).
	Notifier *sdnotify.Notifier
}

// Agent is the daemon: one shared watch per root feeding every resource,
// quiescence per reload group, retries until each resource is applied, a
// persisted last-known-good cache, and hot reload of conf.d.
type Agent struct {
	cfg     Config
	logger  *slog.Logger
	watcher *watch.Watcher
	cache   *watch.Cache
	metrics *metrics
	started time.Time

	mu         sync.Mutex
	resources  map[string]*resState // by resource file
	groups     map[string]*group
	loadErrs   map[string]error // files that do not load, by file
	queue      []*group
	wake       chan struct{}
	destLocks  map[string]*sync.Mutex
	cacheDirty bool
	// readyNow is closed the first time every resource has been applied.
	readyNow       chan struct{}
	announcedReady bool

	cmdCtx context.Context // outlives shutdown by the grace period
}

// resState is what the agent knows about one resource.
type resState struct {
	res   *Resource
	group *group

	dirty         bool // data changed (or a retry is due) since the last apply
	pendingReload string
	failures      int
	nextRetry     time.Time
	applied       bool // applied successfully at least once
	lastErr       error
	lastErrKind   ErrorKind
	lastErrAt     time.Time
	lastSuccess   time.Time
	renders       int
	writes        int
}

// group is the resources that share a reload command (or a lone resource):
// they settle together and reload once.
type group struct {
	key      string
	members  []*resState
	timer    *time.Timer
	deadline time.Time
	queued   bool
	running  bool
	rerun    bool
	settled  bool // rendered once, so later changes wait for quiescence
	lastRun  time.Time
	// probe, for the watchdog's probe group, is closed when a worker has
	// taken it.
	probe chan struct{}
}

// New builds an agent and loads its resources. Files that do not load are
// reported by Status and metrics, not fatal.
func New(cfg Config) (*Agent, error) {
	if cfg.Source == nil {
		return nil, errors.New("agent: no source")
	}
	if cfg.ResyncInterval == 0 {
		cfg.ResyncInterval = 10 * time.Minute
	}
	if cfg.Grace == 0 {
		cfg.Grace = 30 * time.Second
	}
	if cfg.RetryMin == 0 {
		cfg.RetryMin = time.Second
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = 2 * time.Minute
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.MinRenderGap == 0 {
		cfg.MinRenderGap = 50 * time.Millisecond
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	a := &Agent{
		cfg:       cfg,
		logger:    cfg.logger(),
		resources: map[string]*resState{},
		groups:    map[string]*group{},
		loadErrs:  map[string]error{},
		wake:      make(chan struct{}, 1),
		destLocks: map[string]*sync.Mutex{},
		started:   time.Now(),
		readyNow:  make(chan struct{}),
	}
	if cfg.StateDir != "" {
		a.cache = &watch.Cache{Path: filepath.Join(cfg.StateDir, "cache.json"), Source: cfg.CacheSource}
	}
	a.metrics = newMetrics(cfg.Registry, a)
	wcfg := cfg.Watch
	wcfg.Source, wcfg.Interval, wcfg.ResyncInterval = cfg.Source, cfg.Interval, cfg.ResyncInterval
	wcfg.OnUpdate, wcfg.Observer, wcfg.Logger = a.onUpdate, a.metrics, a.logger
	if wcfg.Listener != nil {
		wcfg.Listener = servedCopy{wcfg.Listener, a}
	}
	a.watcher = watch.New(wcfg)
	if err := a.loadResources(); err != nil {
		return nil, err
	}
	return a, nil
}

// Registry is where the agent's metrics live.
func (a *Agent) Registry() *prometheus.Registry { return a.cfg.Registry }

// Run serves until ctx is done, then stops gracefully: no new work starts,
// in-flight commands get the grace period, and the cache is saved.
func (a *Agent) Run(ctx context.Context) error {
	cmdCtx, cancelCmds := context.WithCancel(context.Background())
	defer cancelCmds()
	a.mu.Lock()
	a.cmdCtx = cmdCtx
	a.mu.Unlock()

	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if err := a.watcher.Start(watchCtx, a.roots(), a.loadCache()); err != nil {
		return err
	}
	// Resources with no keys need no data; the others wait in process()
	// until their roots have some.
	a.mu.Lock()
	for _, g := range a.groups {
		a.enqueue(g)
	}
	a.mu.Unlock()

	var workers sync.WaitGroup
	for i := 0; i < a.cfg.Workers; i++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			a.work(ctx)
		}()
	}
	var bg sync.WaitGroup
	bg.Add(5)
	go func() { defer bg.Done(); a.superviseSystemd(ctx) }()
	go func() { defer bg.Done(); every(ctx, time.Second, a.saveCache) }()
	go func() { defer bg.Done(); every(ctx, a.cfg.ResyncInterval, a.resyncAll) }()
	go func() { defer bg.Done(); a.watchConfdir(ctx) }()
	go func() { defer bg.Done(); a.watchDataFiles(ctx) }()

	<-ctx.Done()
	a.logger.Info("shutting down; letting in-flight commands finish", "grace", a.cfg.Grace)
	done := make(chan struct{})
	go func() { workers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(a.cfg.Grace):
		a.logger.Warn("grace period over; killing in-flight commands")
		cancelCmds()
		<-done
	}
	stopWatch()
	a.watcher.Wait()
	bg.Wait()
	a.saveCache()
	return nil
}

// roots is the minimal set of subtrees the loaded resources need.
func (a *Agent) roots() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var keys []string
	for _, st := range a.resources {
		keys = append(keys, st.res.PrefixedKeys...)
	}
	return backends.MinimalRoots(keys)
}

// onUpdate is called by the watcher for every new snapshot: it marks the
// resources whose keys changed and schedules their groups.
func (a *Agent) onUpdate(u watch.Update) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cacheDirty = a.cacheDirty || u.Reason != "cache"
	for _, st := range a.resources {
		if touches(st.res, u) {
			// New data may be what a failing resource was waiting for:
			// try it now rather than at its backed-off retry time.
			st.dirty, st.nextRetry = true, time.Time{}
			a.changed(st.group)
		}
	}
}

// touches reports whether an update concerns a resource's keys.
func touches(r *Resource, u watch.Update) bool {
	for _, k := range r.PrefixedKeys {
		if !backends.Covers(u.Root, k) && !backends.Covers(k, u.Root) {
			continue
		}
		if u.Changed == nil {
			return true
		}
		for _, c := range u.Changed {
			if backends.Covers(k, c) {
				return true
			}
		}
	}
	return false
}

// changed schedules g after a data change: at once the first time, else
// after the quiescence. Caller holds a.mu.
func (a *Agent) changed(g *group) {
	min, max := a.waitFor(g)
	if !g.settled {
		a.enqueue(g)
		return
	}
	if min == 0 {
		a.soon(g)
		return
	}
	now := time.Now()
	if g.deadline.IsZero() {
		g.deadline = now.Add(max)
	}
	fire := now.Add(min)
	if fire.After(g.deadline) {
		fire = g.deadline
	}
	a.schedule(g, fire.Sub(now))
}

// waitFor is a group's quiescence: the longest any member asks for, or the
// daemon's.
func (a *Agent) waitFor(g *group) (min, max time.Duration) {
	min, max = a.cfg.WaitMin, a.cfg.WaitMax
	for _, m := range g.members {
		if m.res.WaitSet {
			if m.res.WaitMin > min {
				min = m.res.WaitMin
			}
			if m.res.WaitMax > max {
				max = m.res.WaitMax
			}
		}
	}
	if max < min {
		max = min
	}
	return min, max
}

// soon enqueues g at once, or when MinRenderGap has passed since its last
// pass. Caller holds a.mu.
func (a *Agent) soon(g *group) {
	if wait := a.cfg.MinRenderGap - time.Since(g.lastRun); wait > 0 && !g.running {
		a.schedule(g, wait)
		return
	}
	a.enqueue(g)
}

// schedule enqueues g after d, replacing any earlier timer. Caller holds a.mu.
func (a *Agent) schedule(g *group, d time.Duration) {
	if g.timer != nil {
		g.timer.Stop()
	}
	g.timer = time.AfterFunc(d, func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.enqueue(g)
	})
}

// enqueue puts g on the work queue, or marks it for another pass if a
// worker has it now. Caller holds a.mu.
func (a *Agent) enqueue(g *group) {
	if g.running {
		g.rerun = true
		return
	}
	if g.queued {
		return
	}
	g.queued = true
	a.queue = append(a.queue, g)
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// work processes queued groups until ctx is done.
func (a *Agent) work(ctx context.Context) {
	for {
		g := a.next(ctx)
		if g == nil {
			return
		}
		a.process(g)
		if g.probe != nil {
			close(g.probe)
			continue
		}
		a.mu.Lock()
		g.running = false
		if g.rerun {
			g.rerun = false
			a.soon(g)
		}
		a.mu.Unlock()
	}
}

func (a *Agent) next(ctx context.Context) *group {
	for {
		a.mu.Lock()
		if len(a.queue) > 0 {
			g := a.queue[0]
			a.queue = a.queue[1:]
			// Its quiescence, if any, has run out: the next change starts a
			// new one.
			g.queued, g.running, g.deadline = false, true, time.Time{}
			if len(a.queue) > 0 {
				select {
				case a.wake <- struct{}{}:
				default:
				}
			}
			a.mu.Unlock()
			return g
		}
		a.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-a.wake:
		}
	}
}

// process applies the group's resources that need it and runs the due
// reload commands once each.
func (a *Agent) process(g *group) {
	a.mu.Lock()
	// Read the snapshots under a.mu: an update installed after this read
	// cannot mark its resources dirty until we are done choosing.
	snaps := Snapshots(a.watcher.Snapshots())
	// Members whose retry falls due in a moment come along now, so that a
	// group retries, and reloads, together.
	soon := time.Now().Add(retrySlack)
	var jobs []*resState
	for _, m := range g.members {
		if !m.needsWork() || m.nextRetry.After(soon) || !dataReady(m.res, snaps) {
			continue
		}
		m.dirty = false
		jobs = append(jobs, m)
	}
	a.mu.Unlock()

	var reloads Reloads
	outcomes := make([]Outcome, len(jobs))
	for i, st := range jobs {
		outcomes[i] = a.apply(st.res, snaps)
		if outcomes[i].Err == nil && outcomes[i].Reload == "" {
			// The file is in place but an earlier reload of it failed.
			outcomes[i].Reload = st.pendingReload
		}
		reloads.Add(i, outcomes[i])
	}
	reloads.Run(a.cmdCtx, outcomes, a.logger)

	a.mu.Lock()
	defer a.mu.Unlock()
	g.settled, g.lastRun = true, time.Now()
	for i, st := range jobs {
		a.record(st, outcomes[i])
	}
	a.scheduleRetries(g, snaps)
	a.noteReady()
}

// retrySlack is how early a retry may run to join its group's pass.
const retrySlack = 100 * time.Millisecond

func (st *resState) needsWork() bool { return st.dirty || st.pendingReload != "" }

// scheduleRetries arms g's timer for its earliest failed member that still
// needs work and has data. Members waiting for data are woken by onUpdate,
// and members with fresh changes by their quiescence timer. Caller holds
// a.mu.
func (a *Agent) scheduleRetries(g *group, snaps Snapshots) {
	var at time.Time
	found := false
	for _, m := range g.members {
		if m.failures == 0 || !m.needsWork() || !dataReady(m.res, snaps) {
			continue
		}
		if !found || m.nextRetry.Before(at) {
			at, found = m.nextRetry, true
		}
	}
	if found {
		a.schedule(g, max(time.Until(at), 0))
	}
}

// apply renders and writes one resource, holding its destination's lock so
// that resources sharing a destination never interleave.
func (a *Agent) apply(r *Resource, snaps Snapshots) Outcome {
	lock := a.destLock(r.Dest)
	lock.Lock()
	defer lock.Unlock()
	start := time.Now()
	o := r.Apply(a.cmdCtx, r.View(snaps), a.cfg.Options)
	a.metrics.observeRender(time.Since(start))
	return o
}

func (a *Agent) destLock(dest string) *sync.Mutex {
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.destLocks[dest]
	if !ok {
		l = &sync.Mutex{}
		a.destLocks[dest] = l
	}
	return l
}

// record updates a resource's state after an attempt. Caller holds a.mu.
func (a *Agent) record(st *resState, o Outcome) {
	st.renders++
	a.metrics.renders.WithLabelValues(st.res.Name).Inc()
	wrote := o.Changed && !a.cfg.Noop && (o.Err == nil || o.Kind == KindReload)
	if wrote {
		st.writes++
		a.metrics.writes.WithLabelValues(st.res.Name).Inc()
	}
	if o.Err == nil {
		st.failures, st.nextRetry, st.lastErr, st.lastErrKind = 0, time.Time{}, nil, ""
		st.pendingReload = ""
		st.applied, st.lastSuccess = true, time.Now()
		return
	}
	st.failures++
	st.lastErr, st.lastErrKind, st.lastErrAt = o.Err, o.Kind, time.Now()
	st.nextRetry = time.Now().Add(a.retryDelay(st.failures))
	if o.Kind == KindReload {
		// The file is in place; only the reload is owed.
		st.pendingReload, st.applied = o.Reload, true
	} else {
		st.dirty = true
	}
	a.metrics.errors.WithLabelValues(string(o.Kind)).Inc()
	a.logger.Error("resource failed; will retry", "resource", st.res.Name, "step", o.Kind,
		"attempt", st.failures, "retry_in", time.Until(st.nextRetry).Round(time.Millisecond), "err", o.Err)
}

func (a *Agent) retryDelay(failures int) time.Duration {
	d := a.cfg.RetryMin
	for i := 1; i < failures && d < a.cfg.RetryMax; i++ {
		d *= 2
	}
	if d > a.cfg.RetryMax {
		d = a.cfg.RetryMax
	}
	return d
}

// dataReady reports whether every key of r lies under a root with data.
func dataReady(r *Resource, snaps Snapshots) bool {
	for _, k := range r.PrefixedKeys {
		if snaps.For(k) == nil {
			return false
		}
	}
	return true
}

// resyncAll re-applies every resource, catching destination files changed
// behind the agent's back; it runs every resync interval.
func (a *Agent) resyncAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, st := range a.resources {
		st.dirty = true
		a.enqueue(st.group)
	}
}

// every calls f each period until ctx is done; a period <= 0 never calls it.
func every(ctx context.Context, period time.Duration, f func()) {
	if period <= 0 {
		return
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

// loadCache reads the persisted copy, warning about a cache that cannot be
// used or that lacks some roots.
func (a *Agent) loadCache() *watch.Copy {
	if a.cache == nil {
		return nil
	}
	cached, err := a.cache.Load()
	if err != nil {
		a.logger.Warn("last-known-good cache not used", "err", err)
		return nil
	}
	if cached == nil {
		return nil
	}
	a.logger.Info("loaded last-known-good cache", "path", a.cache.Path, "prefix", cached.Space.Prefix(),
		"keys", cached.Space.Len(), "etcd_index", cached.Space.Index())
	var missing []string
	for _, r := range a.roots() {
		if !cached.Space.Covers(r) {
			missing = append(missing, r)
		}
	}
	if len(missing) > 0 {
		// The resources changed since the cache was written.
		a.logger.Warn("the cache lacks some roots; their resources wait for etcd", "roots", missing)
	}
	return cached
}

// servedCopy passes the watch's changes on to a Listener that serves the
// whole copy (agent -serve), and marks the cache dirty for every one of
// them: what is served is more than the resources read, and a restart
// during an outage must not serve an older value of a key no resource
// reads than the one served before it.
type servedCopy struct {
	watch.Listener
	a *Agent
}

func (s servedCopy) Reset(c watch.Copy, reason string) {
	s.Listener.Reset(c, reason)
	if reason != "cache" {
		s.a.markCacheDirty()
	}
}

func (s servedCopy) Event(sp *keyspace.Space, ev *etcd.Event) {
	s.Listener.Event(sp, ev)
	s.a.markCacheDirty()
}

func (a *Agent) markCacheDirty() {
	a.mu.Lock()
	a.cacheDirty = true
	a.mu.Unlock()
}

// saveCache writes the cache if the data changed since the last save; it
// runs once a second, so a burst of changes costs one write.
func (a *Agent) saveCache() {
	if a.cache == nil {
		return
	}
	a.mu.Lock()
	dirty := a.cacheDirty
	a.cacheDirty = false
	a.mu.Unlock()
	if !dirty {
		return
	}
	if err := a.cache.Save(a.watcher.Copy()); err != nil {
		a.logger.Error("saving last-known-good cache failed", "err", err)
		a.markCacheDirty()
	}
}
