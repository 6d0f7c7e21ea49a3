package mirror

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/internal/sdnotify"
	client "go.etcd.io/etcd/client/v2"
)

const (
	phaseStarting  = "starting"
	phaseStandby   = "standby"
	phaseResync    = "resync"
	phaseStreaming = "streaming"
	phaseStopped   = "stopped"

	sideSource      = "source"
	sideDestination = "destination"
)

// Mirror replicates one prefix of a source etcd cluster into a destination
// cluster. Create it with New, start it with Run, and watch it through
// Status, Handler or Registry.
type Mirror struct {
	cfg    Config
	log    *slog.Logger
	keys   keyMap
	ignore *regexp.Regexp
	m      *metrics
	ran    atomic.Bool

	// The source: src (v2) or src3 (v3). srcRotation and extraSources move
	// the v2 source watch off a member that lags (see rotatedPoller); only
	// the reader goroutine uses them.
	src          *etcd.Client
	src3         *v3Side
	srcRotation  atomic.Uint64
	extraSources []*etcd.Client

	// The destination: dst with dkeys, its writes fenced by the lock, and
	// lockClient, with short per-member timeouts (lockRequestTimeout), for
	// a v2 destination; dst3 for a v3 one, with lock3 the lock's v3
	// backend (fencing txns) and leases for v2 TTLs.
	dst        *etcd.Client
	dkeys      client.KeysAPI
	lockClient *etcd.Client
	dst3       *v3Side
	lock3      *v3Lock
	leases     *leaseCache
	lock       *destLock
	state      progressStore
	apply      *applier

	// sourceCluster is the source's cluster ID as recorded on the
	// destination (or adopted by a resync); every event must carry it.
	sourceCluster atomic.Value // string
	// replayThrough ends the replay window after an unclean stop.
	replayThrough atomic.Uint64

	// wd is fed by every turn of the mirror's loops: events applied,
	// quiet sources proven, resync steps and retries.
	wd *sdnotify.Watchdog

	mu        sync.Mutex
	progress  progress
	announced bool // READY=1 sent
}

// progress is what Status reports, guarded by Mirror.mu.
type progress struct {
	phase          string
	sourceIndex    uint64
	appliedIndex   uint64
	persistedIndex uint64
	caughtUpAt     time.Time
	lastProgress   time.Time
	lastError      string
	lastErrorAt    time.Time
	applied        uint64
	replayed       uint64
	ignored        uint64
	resyncs        uint64
	lockLosses     uint64
}

// Status is a snapshot of the mirror's state.
type Status struct {
	// Kind is "mirror", for `confsync status`.
	Kind string `json:"kind"`
	// Source and Destination name the clusters (endpoints and API) and
	// the prefixes replicated.
	Source            string `json:"source"`
	Destination       string `json:"destination"`
	SourcePrefix      string `json:"source_prefix"`
	DestinationPrefix string `json:"destination_prefix"`
	Phase             string `json:"phase"` // starting, standby, resync, streaming or stopped
	// SourceIndex is the latest source index the mirror knows of;
	// AppliedIndex the index through which every source event is on the
	// destination; PersistedIndex what the destination's index key says.
	SourceIndex    uint64 `json:"source_index"`
	AppliedIndex   uint64 `json:"applied_index"`
	PersistedIndex uint64 `json:"persisted_index"`
	// LagEvents is SourceIndex minus AppliedIndex, never negative;
	// LagSeconds how long the destination has been behind (0 when not).
	LagEvents  uint64  `json:"lag_events"`
	LagSeconds float64 `json:"lag_seconds"`
	// Applied counts events written to the destination, Replayed events
	// found already applied (replays after a restart), Ignored events left
	// alone on purpose, Resyncs full resynchronisations.
	Applied  uint64 `json:"applied"`
	Replayed uint64 `json:"replayed"`
	Ignored  uint64 `json:"ignored"`
	Resyncs  uint64 `json:"resyncs"`
	// LockLosses counts the times the mirror lost its destination lock
	// and stopped writing.
	LockLosses uint64 `json:"lock_losses"`
	// LastError is the last failure that was retried, with its time.
	LastError    string    `json:"last_error,omitempty"`
	LastErrorAt  time.Time `json:"last_error_at,omitzero"`
	LastProgress time.Time `json:"last_progress"`
	// Healthy is false once no progress was made for the stall timeout.
	Healthy bool `json:"healthy"`
}

// New checks the configuration and prepares the clients. It does not
// contact either cluster; Run does, and rides out their absence.
func New(cfg Config) (*Mirror, error) {
	cfg.setDefaults()
	if err := cfg.check(); err != nil {
		return nil, err
	}
	ignore, err := compileIgnore(cfg.IgnoreKeys)
	if err != nil {
		return nil, err
	}
	m := &Mirror{cfg: cfg, log: cfg.Logger, ignore: ignore,
		keys: newKeyMap(cfg.SourcePrefix, cfg.DestinationPrefix, cfg.Strip)}
	if err := m.connect(); err != nil {
		m.Close()
		return nil, &ConfigError{Err: err}
	}
	m.sourceCluster.Store("")
	now := time.Now()
	m.progress = progress{phase: phaseStarting, lastProgress: now, caughtUpAt: now}
	m.m = newMetrics(m)
	m.m.setPhase(phaseStarting)
	return m, nil
}

// writerName identifies this process in the replication state: host, pid
// and a random part, so that a restarted mirror is a new writer.
func writerName() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	crand.Read(b)
	return fmt.Sprintf("confsync-mirror@%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b))
}

// connect prepares the clients, the lock and the progress store for the
// configured APIs.
func (m *Mirror) connect() error {
	var err error
	if m.cfg.SourceAPI == apiV3 {
		if m.src3, err = newV3Side(m.cfg.Source); err != nil {
			return fmt.Errorf("source: %w", err)
		}
	} else if m.src, err = etcd.New(context.Background(), m.cfg.Source); err != nil {
		return fmt.Errorf("source: %w", err)
	}
	owner := newLockOwner(m.cfg.Version)
	lockKey := m.keys.lockKey()
	if m.cfg.DestinationAPI == apiV3 {
		if m.dst3, err = newV3Side(m.cfg.Destination); err != nil {
			return fmt.Errorf("destination: %w", err)
		}
		m.lock3 = &v3Lock{side: m.dst3, key: lockKey, timeout: lockRequestTimeout(m.cfg)}
		m.lock = newDestLock(lockKey, m.cfg.LockTTL, owner, m.lock3)
		m.leases = &leaseCache{side: m.dst3, now: time.Now}
		m.state = &v3StateStore{side: m.dst3, lock: m.lock, fence: m.lock3.fence,
			indexKey: m.keys.indexKey(), stateKey: m.keys.stateKey(), writer: writerName()}
		return nil
	}
	if m.dst, err = etcd.New(context.Background(), m.cfg.Destination); err != nil {
		return fmt.Errorf("destination: %w", err)
	}
	lockCfg := m.cfg.Destination
	lockCfg.RequestTimeout = lockRequestTimeout(m.cfg)
	if m.lockClient, err = etcd.New(context.Background(), lockCfg); err != nil {
		return fmt.Errorf("destination: %w", err)
	}
	m.lock = newDestLock(lockKey, m.cfg.LockTTL, owner, v2Lock{keys: m.lockClient.Keys(), key: lockKey})
	m.dkeys = fencedKeys{KeysAPI: m.dst.Keys(), lock: m.lock}
	m.state = &stateStore{keys: m.dkeys, indexKey: m.keys.indexKey(), stateKey: m.keys.stateKey(), writer: writerName()}
	m.apply = &applier{log: m.log, keys: m.dkeys, km: m.keys, ignore: m.ignore, now: time.Now}
	return nil
}

// lockRequestTimeout bounds one request about the lock: a quarter of its
// TTL at most, so that a member that hangs costs one attempt and the next
// attempt, on another member, still renews the lock in time.
func lockRequestTimeout(cfg Config) time.Duration {
	t := cfg.LockTTL / 4
	if d := cfg.Destination.RequestTimeout; d > 0 && d < t {
		t = d
	}
	return t
}

// Logger is where the mirror logs (Config.Logger, or a discarding one).
func (m *Mirror) Logger() *slog.Logger { return m.log }

// Close releases the clients' connections.
func (m *Mirror) Close() {
	if m.src != nil {
		m.src.Close()
	}
	if m.src3 != nil {
		m.src3.cli.Close()
	}
	for _, c := range m.extraSources {
		c.Close()
	}
	if m.dst != nil {
		m.dst.Close()
	}
	if m.lockClient != nil {
		m.lockClient.Close()
	}
	if m.dst3 != nil {
		m.dst3.cli.Close()
	}
}

// Run replicates until ctx is cancelled (it then returns nil) or the mirror
// must stop: a *DivergenceError when the destination does not match the
// source, a *RefusalError when resuming would replicate the wrong data, a
// *LockedError when another mirror holds the destination (without
// Standby). Unreachable or failing clusters are retried, never returned.
// A mirror that loses its lock stops writing, then tries to take the lock
// again as it did at start.
func (m *Mirror) Run(ctx context.Context) error {
	if !m.ran.CompareAndSwap(false, true) {
		return errors.New("mirror: Run called twice")
	}
	defer m.setPhase(phaseStopped)
	defer m.cfg.Notifier.Stopping("mirror stopped")
	if m.cfg.Notifier.Enabled() {
		sctx, stop := context.WithCancel(ctx)
		defer stop()
		go m.reportStatus(sctx)
		wd, err := m.cfg.Notifier.Watchdog("the mirror's replication loop", m.log)
		if err != nil {
			m.log.Error("systemd watchdog not used", "err", err)
		}
		m.wd = wd
		go wd.Run(sctx)
	}
	for {
		err := m.runLocked(ctx)
		var lost *LockLostError
		if errors.As(err, &lost) && ctx.Err() == nil {
			m.log.Error("stopped writing: the destination lock was lost; taking it again before anything else", "err", err)
			m.count(func(p *progress) { p.lockLosses++ })
			continue
		}
		var div *DivergenceError
		var ref *RefusalError
		var locked *LockedError
		if ctx.Err() != nil && !errors.As(err, &div) && !errors.As(err, &ref) {
			return nil
		}
		if err != nil && !errors.As(err, &locked) {
			m.log.Error("replication stopped", "err", err)
		}
		return err
	}
}

// runLocked takes the lock, replicates while holding it, and gives it up.
func (m *Mirror) runLocked(ctx context.Context) error {
	m.setPhase(phaseStarting)
	if err := m.acquireLock(ctx, m.cfg.Standby); err != nil {
		return err
	}
	lctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var keeper sync.WaitGroup
	keeper.Go(func() { m.keepLock(lctx, cancel) })
	err := m.replicate(lctx)
	if cause := context.Cause(lctx); errors.As(cause, new(*LockLostError)) {
		err = cause
	}
	cancel(nil)
	keeper.Wait()
	if !errors.As(err, new(*LockLostError)) {
		m.releaseLock(ctx)
	}
	return err
}

// replicate starts from the destination's index and streams, resyncing
// when the source's history runs out.
func (m *Mirror) replicate(ctx context.Context) error {
	from, err := m.start(ctx)
	for err == nil {
		if m.dst3 != nil {
			err = m.streamV3(ctx, from)
		} else {
			err = m.stream(ctx, from)
		}
		if errors.Is(err, errHistoryCleared) {
			m.log.Warn("the next source index has left the source's history; resynchronising without erasing the destination",
				"index", m.Status().AppliedIndex+1)
			from, err = m.resync(ctx, "history_cleared")
			continue
		}
		break
	}
	return err
}

// loadState reads the replication index and state from the destination,
// retrying while it does not answer.
func (m *Mirror) loadState(ctx context.Context) (loaded, error) {
	var saved loaded
	err := m.retry(ctx, sideDestination, "read the replication index", func(ctx context.Context) error {
		var err error
		saved, err = m.state.load(ctx)
		return err
	})
	return saved, err
}

// start checks that the destination may be resumed from its index and
// returns the first source index to read.
func (m *Mirror) start(ctx context.Context) (uint64, error) {
	m.setPhase(phaseStarting)
	m.log.Info("starting replication", "source", m.cfg.Source.Endpoints, "source_api", m.cfg.SourceAPI, "source_prefix", m.keys.srcRoot,
		"destination", m.cfg.Destination.Endpoints, "destination_api", m.cfg.DestinationAPI,
		"destination_prefix", m.keys.dstBase, "index_key", m.keys.indexKey())
	saved, err := m.loadState(ctx)
	if err != nil {
		return 0, err
	}
	head, cluster, err := m.sourceHead(ctx)
	if err != nil {
		return 0, err
	}
	if err := m.checkOverlap(cluster); err != nil {
		return 0, err
	}
	if m.cfg.Reload {
		return m.resync(ctx, "reload")
	}
	if saved.state != nil && saved.state.Resyncing {
		m.log.Warn("a resynchronisation was interrupted; running it again")
		m.sourceCluster.Store(saved.state.SourceClusterID)
		return m.resync(ctx, "interrupted")
	}
	if !saved.hasIndex {
		return 0, &RefusalError{
			Reason: fmt.Sprintf("no replication index at %s on the destination", m.keys.indexKey()),
			Remedy: "this destination was never initialised (or the key was deleted): start once with --reload, which copies the source without erasing anything, or run `confsync mirror set-index` if the trees already match",
		}
	}
	if err := m.checkIdentity(saved.state, cluster); err != nil {
		return 0, err
	}
	if err := m.checkIndexAPI(saved.state); err != nil {
		return 0, err
	}
	if saved.index > head {
		return 0, &RefusalError{
			Reason: fmt.Sprintf("the destination's replication index %d is ahead of the source's current index %d", saved.index, head),
			Remedy: "the source was rebuilt or restored, or SRC names another cluster; resuming would silently skip every event up to the recorded index. Check SRC, then restart with --reload",
		}
	}
	m.sourceCluster.Store(cluster)
	replay := uint64(0)
	if saved.state != nil && saved.state.MayHaveAppliedThrough > saved.index {
		replay = saved.state.MayHaveAppliedThrough
	}
	m.replayThrough.Store(replay)
	// Take the destination over: record this process as the writer, and
	// rewrite the index key (same value) so that a mirror still running
	// elsewhere (an old one, without the lock) fails its next fenced index
	// write and stops.
	err = m.retry(ctx, sideDestination, "write the replication state", func(ctx context.Context) error {
		err := m.state.writeState(ctx, func(s *replicationState) {
			m.identify(s, cluster)
			s.MayHaveAppliedThrough = max(replay, saved.index)
			s.Resyncing = false
		})
		if err != nil {
			return err
		}
		v2, ok := m.state.(*stateStore)
		if !ok {
			return nil
		}
		moved, err := v2.bumpIndex(ctx)
		if err == nil && moved != saved.index {
			m.log.Warn("the replication index moved while this mirror started: another mirror was writing this destination and stops at its next write",
				"read", saved.index, "now", moved)
			saved.index = max(saved.index, moved)
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	m.mu.Lock()
	// After a lost lock the index key can be below what this mirror had
	// applied; those events are still on the destination, and the status
	// never goes back.
	m.progress.appliedIndex = max(m.progress.appliedIndex, saved.index)
	m.progress.persistedIndex = saved.index
	m.mu.Unlock()
	m.noteSourceIndex(head)
	m.log.Info("resuming replication", "index", saved.index, "source_index", head, "replay_window_through", replay)
	return saved.index + 1, nil
}

func (m *Mirror) identify(s *replicationState, cluster string) {
	s.SourceClusterID = cluster
	s.SourceAPI = m.cfg.SourceAPI
	s.SourcePrefix = m.keys.srcRoot
	s.DestinationPrefix = m.keys.dstRoot
	s.Strip = m.cfg.Strip
}

// checkIdentity refuses a destination recorded as a copy of another
// source cluster or of another mapping. A destination without a state key
// (left by etcdmirror) is adopted.
func (m *Mirror) checkIdentity(s *replicationState, cluster string) error {
	if s == nil {
		m.log.Info("no replication state beside the index (an etcdmirror destination?); adopting it", "state_key", m.keys.stateKey())
		return nil
	}
	if s.SourceClusterID != "" && s.SourceClusterID != cluster {
		return &RefusalError{
			Reason: fmt.Sprintf("the destination was replicated from source cluster %s (%s), but SRC is cluster %s", s.SourceClusterID, m.keys.stateKey(), cluster),
			Remedy: "check SRC; if the source was replaced on purpose, restart with --reload to resynchronise from it",
		}
	}
	if s.SourcePrefix != m.keys.srcRoot || s.Strip != m.cfg.Strip || (s.DestinationPrefix != "" && s.DestinationPrefix != m.keys.dstRoot) {
		return &RefusalError{
			Reason: fmt.Sprintf("the destination was replicated with --src-prefix %s --strip=%t, now --src-prefix %s --strip=%t", s.SourcePrefix, s.Strip, m.keys.srcRoot, m.cfg.Strip),
			Remedy: "restore the previous flags, or restart with --reload to resynchronise with the new mapping",
		}
	}
	return nil
}

// checkIndexAPI refuses an index counted by another API than the source's:
// v2 indexes and v3 revisions are different counters.
func (m *Mirror) checkIndexAPI(s *replicationState) error {
	recorded := apiV2
	if s != nil {
		recorded = s.sourceAPI()
	}
	if recorded == m.cfg.SourceAPI {
		return nil
	}
	how := "recorded"
	if s == nil {
		how = "assumed (no " + m.keys.stateKey() + " beside it, as etcdmirror leaves it)"
	}
	return &RefusalError{
		Reason: fmt.Sprintf("the replication index %s counts %s indexes (%s), but the source is read through %s", m.keys.indexKey(), recorded, how, m.cfg.SourceAPI),
		Remedy: "a v2 index and a v3 revision are different counters: restart once with --reload (writes only what differs), or run `confsync mirror set-index` with the new flags",
	}
}

// checkOverlap refuses to mirror a cluster into itself where the source and
// destination subtrees overlap: every write would feed back as an event.
func (m *Mirror) checkOverlap(srcCluster string) error {
	dstCluster := m.dstClusterID()
	if srcCluster == "" || srcCluster != dstCluster || !related(m.keys.srcRoot, m.keys.dstBase) {
		return nil
	}
	return &RefusalError{
		Reason: fmt.Sprintf("SRC and DST are the same cluster (%s) and source prefix %s overlaps destination %s", srcCluster, m.keys.srcRoot, m.keys.dstBase),
		Remedy: "use prefixes that do not contain each other, or point DST at the replica cluster",
	}
}

func (m *Mirror) dstClusterID() string {
	if m.dst3 != nil {
		return m.dst3.clusterID()
	}
	return m.dst.ClusterID()
}

// sourceHead reads the source's current index (v3: revision) and cluster
// ID, through the leader (quorum read): a lagging member cannot make the
// mirror believe the source went back.
func (m *Mirror) sourceHead(ctx context.Context) (uint64, string, error) {
	if m.src3 != nil {
		var index uint64
		var cluster string
		err := m.retry(ctx, sideSource, "read the source revision", func(ctx context.Context) error {
			var err error
			index, cluster, err = m.src3.head(ctx, m.keys.srcRoot)
			return err
		})
		return index, cluster, err
	}
	var index uint64
	err := m.retry(ctx, sideSource, "read the source index", func(ctx context.Context) error {
		resp, err := m.src.Keys().Get(ctx, m.keys.srcRoot, &client.GetOptions{Quorum: true})
		var e client.Error
		switch {
		case err == nil:
			index = resp.Index
		case errors.As(err, &e) && (e.Code == client.ErrorCodeKeyNotFound || e.Code == client.ErrorCodeNotDir):
			index = e.Index
		default:
			return fmt.Errorf("read %s on the source: %w", m.keys.srcRoot, err)
		}
		return nil
	})
	if err != nil {
		return 0, "", err
	}
	return index, m.src.ClusterID(), nil
}

// retry runs fn until it succeeds, fails for good, or ctx ends, waiting
// with capped exponential backoff and jitter between attempts. The etcd
// client moves on to the next endpoint of the cluster on each failure.
func (m *Mirror) retry(ctx context.Context, side, what string, fn func(context.Context) error) error {
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			if attempt > 1 {
				m.log.Info("recovered", "side", side, "op", what, "attempts", attempt)
			}
			return nil
		}
		if !transient(ctx, err) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		m.noteError(side, what, err)
		if attempt&(attempt-1) == 0 { // 1, 2, 4, 8...: enough to see, never a flood
			m.log.Warn("retrying", "side", side, "op", what, "attempt", attempt, "err", err)
		}
		wait := delay/2 + rand.N(delay/2+1)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		delay = min(2*delay, m.cfg.MaxBackoff)
	}
}

func (m *Mirror) noteError(side, what string, err error) {
	m.wd.Alive() // a retry is a turn of the loop: an unreachable etcd is no hang
	m.m.errors.WithLabelValues(side).Inc()
	m.mu.Lock()
	m.progress.lastError = fmt.Sprintf("%s (%s): %v", what, side, err)
	m.progress.lastErrorAt = time.Now()
	m.mu.Unlock()
}

func (m *Mirror) setPhase(p string) {
	m.mu.Lock()
	m.progress.phase = p
	m.progress.lastProgress = time.Now()
	announce := !m.announced && (p == phaseStreaming || p == phaseStandby)
	m.announced = m.announced || announce
	m.mu.Unlock()
	m.m.setPhase(p)
	m.wd.Alive()
	if announce {
		m.cfg.Notifier.Ready(m.statusLine())
	}
}

// reportStatus keeps `systemctl status` current.
func (m *Mirror) reportStatus(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.cfg.Notifier.Status(m.statusLine())
		}
	}
}

// statusLine is the mirror's state in one line, for `systemctl status`.
func (m *Mirror) statusLine() string {
	s := m.Status()
	line := fmt.Sprintf("%s: applied %d, source at %d, lag %d events", s.Phase, s.AppliedIndex, s.SourceIndex, s.LagEvents)
	if s.Phase == phaseStandby {
		line = "standby: another mirror holds the destination lock; taking over when it expires"
	}
	if s.LastError != "" && time.Since(s.LastErrorAt) < time.Minute {
		line += "; last error: " + s.LastError
	}
	return line
}

func (m *Mirror) noteSourceIndex(idx uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if idx > m.progress.sourceIndex {
		m.progress.sourceIndex = idx
	}
	if m.progress.appliedIndex >= m.progress.sourceIndex {
		m.progress.caughtUpAt = time.Now()
	}
}

func (m *Mirror) noteApplied(idx uint64) {
	m.wd.Alive()
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	if idx > m.progress.appliedIndex {
		m.progress.appliedIndex = idx
		m.progress.lastProgress = now
	}
	if m.progress.appliedIndex >= m.progress.sourceIndex {
		m.progress.caughtUpAt = now
	}
}

func (m *Mirror) notePersisted(idx uint64) {
	m.mu.Lock()
	m.progress.persistedIndex = idx
	m.mu.Unlock()
}

// noteAlive records progress that moved no index: a poll that proved the
// source quiet, a resync step.
func (m *Mirror) noteAlive() {
	m.wd.Alive()
	m.mu.Lock()
	m.progress.lastProgress = time.Now()
	m.mu.Unlock()
}

func (m *Mirror) count(f func(*progress)) {
	m.mu.Lock()
	f(&m.progress)
	m.mu.Unlock()
}

// Status reports where replication stands.
func (m *Mirror) Status() Status {
	m.mu.Lock()
	p := m.progress
	m.mu.Unlock()
	now := time.Now()
	s := Status{
		Kind:         "mirror",
		Source:       fmt.Sprintf("%s (%s)", strings.Join(m.cfg.Source.Endpoints, ","), m.cfg.SourceAPI),
		Destination:  fmt.Sprintf("%s (%s)", strings.Join(m.cfg.Destination.Endpoints, ","), m.cfg.DestinationAPI),
		SourcePrefix: m.keys.srcRoot, DestinationPrefix: m.keys.dstBase,
		Phase: p.phase, SourceIndex: p.sourceIndex, AppliedIndex: p.appliedIndex, PersistedIndex: p.persistedIndex,
		Applied: p.applied, Replayed: p.replayed, Ignored: p.ignored, Resyncs: p.resyncs, LockLosses: p.lockLosses,
		LastError: p.lastError, LastErrorAt: p.lastErrorAt, LastProgress: p.lastProgress,
		Healthy: p.phase != phaseStopped && now.Sub(p.lastProgress) < m.cfg.StallTimeout,
	}
	if p.sourceIndex > p.appliedIndex {
		s.LagEvents = p.sourceIndex - p.appliedIndex
		s.LagSeconds = now.Sub(p.caughtUpAt).Seconds()
	}
	return s
}

func unix(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
