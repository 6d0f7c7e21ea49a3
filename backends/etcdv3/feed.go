package etcdv3

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/internal/retry"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"
)

// A Feed keeps one prefix of the cluster current with a single v3 watch:
// one range read, then one watch of the prefix's range from the revision
// after it, on one connection to one member at a time. It is the v3
// counterpart of etcd.Feed and hands the same FeedHandler the same v2
// model (flat events).
//
// Nothing is missed: after any error the watch resumes from the last
// revision + 1, on the next member when the one in use failed; a revision
// compacted away (ErrCompacted), a cluster ID that changes, or a member
// whose revision is behind what was already applied lead to a full
// re-read and a diff; and a re-read is never allowed to go back in time
// (one older than the data held is asked again as a linearizable read).
//
// The watch requires a leader (a member cut off from its cluster ends it
// rather than going silent) and asks for progress notifications, so that
// a quiet prefix's revision follows the cluster's and a resume rarely
// meets a compaction. Every PollTimeout it also requests one, from
// members that deliver requested notifications in order with events (etcd
// 3.4.25, 3.5.8 and later; older members only get etcd's own periodic
// ones, which are safe).
//
// A broken connection ends the watch: the client library would resume it
// by itself, silently, on whatever answers at that address; the feed
// resumes it instead, so every new watch is checked. A member that does
// not confirm a new watch within WatchHeaderTimeout, or hangs (gRPC
// keepalive pings find it), is left for the next endpoint.
type Feed struct {
	c      *Client
	cfg    etcd.FeedConfig
	logger *slog.Logger
	resync chan struct{}
	sess   *session

	mu      sync.Mutex
	status  etcd.FeedStatus
	applied uint64 // the highest revision handed to the handler
	cluster string // the cluster ID the handler's data came from
	warned  map[string]bool
}

// Follow returns a Feed of cfg.Prefix as an etcd.Follower: the agent's
// watcher follows a v3 cluster through it.
func (c *Client) Follow(cfg etcd.FeedConfig) etcd.Follower { return c.NewFeed(cfg) }

// NewFeed prepares a feed of cfg.Prefix; Run starts it. NoStream has no
// meaning for v3 (a watch always streams).
func (c *Client) NewFeed(cfg etcd.FeedConfig) *Feed {
	cfg.Prefix = backends.CleanKey(cfg.Prefix)
	if cfg.PollTimeout <= 0 {
		cfg.PollTimeout = 10 * time.Second
	}
	if cfg.WatchHeaderTimeout <= 0 {
		cfg.WatchHeaderTimeout = 5 * time.Second
	}
	if cfg.ResyncInterval == 0 {
		cfg.ResyncInterval = 10 * time.Minute
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = c.logger
	}
	f := &Feed{c: c, cfg: cfg, logger: logger.With("prefix", cfg.Prefix, "api", "v3"), resync: make(chan struct{}, 1),
		sess: c.newSession(), warned: map[string]bool{}}
	f.status = etcd.FeedStatus{Prefix: cfg.Prefix, Endpoint: c.endpoints[0], Mode: ModeWatch}
	return f
}

// ModeWatch is the FeedStatus mode of a Feed that watches.
const ModeWatch = "v3-watch"

const modeInterval = "interval"

type nopObserver struct{}

func (nopObserver) Resync(string)    {}
func (nopObserver) WatchError(error) {}
func (nopObserver) ReadError(error)  {}

// Status reports the feed's state now. Index is a revision.
func (f *Feed) Status() etcd.FeedStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

// Resync asks for a full re-read at once, as SIGHUP or an operator would.
func (f *Feed) Resync() {
	select {
	case f.resync <- struct{}{}:
	default:
	}
}

// Run follows the prefix until ctx ends.
func (f *Feed) Run(ctx context.Context, h etcd.FeedHandler) {
	defer f.sess.close()
	reason := "initial"
	for ctx.Err() == nil {
		l, ok := f.listUntilRead(ctx, reason)
		if !ok {
			return
		}
		if reason != "initial" && reason != "interval" {
			f.cfg.Observer.Resync(reason)
		}
		h.Reset(l, reason)
		f.mu.Lock()
		f.applied, f.cluster = l.Index, l.ClusterID
		f.status.Index, f.status.ClusterID = l.Index, l.ClusterID
		f.mu.Unlock()
		if f.cfg.Interval > 0 {
			reason = f.nextTick(ctx)
			continue
		}
		reason = f.follow(ctx, h, l)
		if reason != "stopped" {
			f.logger.Info("re-reading the prefix", "reason", reason)
		}
	}
}

// nextTick waits for the next read in interval mode.
func (f *Feed) nextTick(ctx context.Context) string {
	f.setMode(modeInterval)
	t := time.NewTimer(f.cfg.Interval)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return "stopped"
	case <-t.C:
		return "interval"
	case <-f.resync:
		return "requested"
	}
}

// listUntilRead reads the prefix, failing over and backing off until it
// succeeds or ctx ends.
func (f *Feed) listUntilRead(ctx context.Context, reason string) (*etcd.Listing, bool) {
	b := f.newBackoff()
	failures := 0
	for {
		l, err := f.list(ctx, reason)
		if err == nil {
			return l, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		f.failed(err)
		f.cfg.Observer.ReadError(err)
		f.logger.Warn("etcd read failed; keeping the last known data", "err", err)
		if failures++; failures%len(f.c.endpoints) == 0 && !b.Wait(ctx) {
			return nil, false
		}
	}
}

// list reads the prefix, never going back in time: a read older than what
// the handler already has (a lagging member answering alone) is asked
// again as a linearizable read, which the leader confirms.
func (f *Feed) list(ctx context.Context, reason string) (*etcd.Listing, error) {
	linearizable := f.c.cfg.Quorum || reason == "revision-went-backwards"
	l, err := f.read(ctx, linearizable)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	applied, cluster := f.applied, f.cluster
	f.mu.Unlock()
	if l.ClusterID != cluster || l.Index >= applied {
		return l, nil
	}
	if !linearizable {
		if l, err = f.read(ctx, true); err != nil || l.Index >= applied {
			return l, err
		}
	}
	f.logger.Error("etcd's revision went back on a linearizable read: the cluster was restored or replaced; following it",
		"had", applied, "now", l.Index)
	return l, nil
}

// read reads the prefix once on the member in use.
func (f *Feed) read(ctx context.Context, linearizable bool) (*etcd.Listing, error) {
	cli, ep, err := f.sess.client()
	if err != nil {
		return nil, fmt.Errorf("etcd v3 read %s at %s: %w", f.cfg.Prefix, ep, err)
	}
	r, err := f.c.read(ctx, cli, f.cfg.Prefix, 0, !linearizable)
	if err != nil {
		f.sess.failed(cli)
		f.setEndpoint()
		return nil, fmt.Errorf("etcd v3 read %s at %s: %w", f.cfg.Prefix, ep, err)
	}
	l, unclean := listing(f.cfg.Prefix, r)
	warnUnclean(f.logger, f.cfg.Prefix, unclean)
	f.contact(ep)
	return l, nil
}

// resyncNeeded ends a follow with a reason for a full re-read.
type resyncNeeded struct {
	reason string
	err    error
}

func (r *resyncNeeded) Error() string { return r.reason + ": " + r.err.Error() }

// Reasons a follow ends that are not errors.
var (
	errPeriodic  = errors.New("periodic")
	errRequested = errors.New("requested")
)

// follower is the state of one follow.
type follower struct {
	// applied is the revision the handler is current to: the last event
	// or progress handed over. The watch resumes after it.
	applied   uint64
	clusterID string
	// worked is set once a watch has delivered anything, so a member
	// that served well for a while is not counted as a fresh failure.
	worked bool
}

// follow applies events from l's revision on until something calls for a
// full re-read, and returns why.
func (f *Feed) follow(ctx context.Context, h etcd.FeedHandler, l *etcd.Listing) string {
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go f.interrupt(fctx, cancel)
	w := &follower{applied: l.Index, clusterID: l.ClusterID}
	b := f.newBackoff()
	failures := 0
	for {
		w.worked = false
		err := f.watch(fctx, h, w)
		var resync *resyncNeeded
		switch {
		case ctx.Err() != nil:
			return "stopped"
		case fctx.Err() != nil:
			return context.Cause(fctx).Error()
		case errors.As(err, &resync):
			f.cfg.Observer.WatchError(err)
			return resync.reason
		}
		if w.worked {
			failures = 0
			b.Reset()
		}
		f.failed(err)
		f.cfg.Observer.WatchError(err)
		f.logger.Warn("etcd watch failed; resuming after the last revision", "next", w.applied+1, "err", err)
		if failures++; failures%len(f.c.endpoints) == 0 && !b.Wait(fctx) {
			if ctx.Err() != nil {
				return "stopped"
			}
			return context.Cause(fctx).Error()
		}
	}
}

// interrupt ends a follow when the periodic re-read is due or one is asked for.
func (f *Feed) interrupt(ctx context.Context, cancel context.CancelCauseFunc) {
	var periodic <-chan time.Time
	if f.cfg.ResyncInterval > 0 {
		t := time.NewTimer(retry.Jitter(f.cfg.ResyncInterval, 0.1))
		defer t.Stop()
		periodic = t.C
	}
	select {
	case <-ctx.Done():
	case <-periodic:
		cancel(errPeriodic)
	case <-f.resync:
		cancel(errRequested)
	}
}

// watch follows one watch on the member in use from w.applied+1 until it
// fails; it always returns an error. A failure that is the member's moves
// the session to the next endpoint.
func (f *Feed) watch(ctx context.Context, h etcd.FeedHandler, w *follower) error {
	cli, ep, err := f.sess.client()
	f.setEndpoint()
	if err != nil {
		return fmt.Errorf("etcd v3 watch %s at %s: %w", f.cfg.Prefix, ep, err)
	}
	err = f.watchOn(ctx, h, w, cli, ep)
	var resync *resyncNeeded
	if ctx.Err() == nil && !errors.As(err, &resync) {
		f.sess.failed(cli)
		f.setEndpoint()
	}
	return err
}

func (f *Feed) watchOn(ctx context.Context, h etcd.FeedHandler, w *follower, cli *clientv3.Client, ep string) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	start, end := keyRange(f.cfg.Prefix)
	describe := func(err error) error { return fmt.Errorf("etcd v3 watch %s at %s: %w", f.cfg.Prefix, ep, err) }
	vet := func(resp clientv3.WatchResponse, ok bool) error {
		err := f.check(w, resp, ok)
		var resync *resyncNeeded
		if err == nil || errors.As(err, &resync) {
			return err
		}
		return describe(err)
	}
	// The client waits for etcd to confirm a new watch, reconnecting as
	// long as it takes: a member that does not confirm in time is left.
	hung := time.AfterFunc(f.cfg.WatchHeaderTimeout, cancel)
	ch := cli.Watch(wctx, start, clientv3.WithRange(end), clientv3.WithRev(int64(w.applied+1)),
		clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	resp, ok := <-ch
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case !hung.Stop():
		return describe(fmt.Errorf("no watch within %s (down or hung?)", f.cfg.WatchHeaderTimeout))
	}
	if err := vet(resp, ok); err != nil {
		return err
	}
	if resp.Header.Revision != 0 && uint64(resp.Header.Revision) < w.applied {
		return &resyncNeeded{reason: "revision-went-backwards",
			err: fmt.Errorf("%s is at revision %d, behind the %d already applied", ep, resp.Header.Revision, w.applied)}
	}
	f.contact(ep)
	f.setMode(ModeWatch)
	inOrder := make(chan bool, 1)
	go func() { inOrder <- f.requestsProgress(wctx, cli, ep) }()
	var request <-chan time.Time
	broken := f.connectionBreaks(wctx, cli)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case resp, ok := <-ch:
			if err := vet(resp, ok); err != nil {
				return err
			}
			f.apply(h, w, resp)
			f.contact(ep)
		case ok := <-inOrder:
			inOrder = nil
			if ok {
				t := time.NewTicker(retry.Jitter(f.cfg.PollTimeout, 0.2))
				defer t.Stop()
				request = t.C
			}
		case <-request:
			go cli.RequestProgress(wctx)
		case <-broken:
			return describe(errors.New("the connection broke"))
		}
	}
}

// connectionBreaks is closed when cli's connection leaves the ready state.
// The client would resume a broken watch by itself, on whatever answers
// at that address and without a word; the feed resumes it instead, so
// that every new watch is checked (cluster ID, revision) and a member
// that is gone is left for the next.
func (f *Feed) connectionBreaks(ctx context.Context, cli *clientv3.Client) <-chan struct{} {
	broken := make(chan struct{})
	go func() {
		if cli.ActiveConnection().WaitForStateChange(ctx, connectivity.Ready) {
			close(broken)
		}
	}()
	return broken
}

// check vets one watch response: a watch ended by etcd or the client, a
// compacted revision, another cluster.
func (f *Feed) check(w *follower, resp clientv3.WatchResponse, ok bool) error {
	switch {
	case !ok:
		return errors.New("the watch ended")
	case resp.CompactRevision != 0:
		return &resyncNeeded{reason: "compacted",
			err: fmt.Errorf("revision %d was compacted away (etcd keeps history from %d)", w.applied+1, resp.CompactRevision)}
	case resp.Err() != nil:
		return resp.Err()
	case resp.Canceled:
		return errors.New("etcd cancelled the watch")
	}
	if id := clusterIDOf(&resp.Header); id != "" && w.clusterID != "" && id != w.clusterID {
		return &resyncNeeded{reason: "cluster-id-changed", err: fmt.Errorf("the member answers for cluster %s, not %s", id, w.clusterID)}
	}
	return nil
}

// apply hands the events of one response (every event of a revision comes
// in one) to the handler, or its progress. Events at or below the revision
// already applied are repeats after a resume and are skipped; events of
// keys that cannot be shown only move the revision on.
func (f *Feed) apply(h etcd.FeedHandler, w *follower, resp clientv3.WatchResponse) {
	if resp.IsProgressNotify() {
		f.progress(h, w, uint64(resp.Header.Revision))
		return
	}
	base, last, handed := w.applied, w.applied, w.applied
	for _, ev := range resp.Events {
		rev := uint64(ev.Kv.ModRevision)
		if rev <= base {
			continue
		}
		last = rev
		key := string(ev.Kv.Key)
		if !clean(key) {
			f.warnUncleanEvent(key)
			continue
		}
		if !backends.Covers(f.cfg.Prefix, key) {
			continue // a sibling in the range, such as /a-b for /a
		}
		h.Apply(eventOf(ev))
		handed = rev
	}
	if last > handed {
		h.Progress(last)
	}
	if last > base {
		w.applied, w.worked = last, true
		f.setIndex(last)
	}
}

// progress records that nothing under the prefix changed up to rev.
func (f *Feed) progress(h etcd.FeedHandler, w *follower, rev uint64) {
	if rev <= w.applied {
		return
	}
	h.Progress(rev)
	w.applied, w.worked = rev, true
	f.setIndex(rev)
}

// requestsProgress reports whether the member delivers requested progress
// notifications in order with its events. Members before etcd 3.4.25 and
// 3.5.8 could send one ahead of events it covered, and the client resumes
// a broken watch after the revision of any notification it saw.
func (f *Feed) requestsProgress(ctx context.Context, cli *clientv3.Client, ep string) bool {
	sctx, cancel := context.WithTimeout(ctx, f.cfg.WatchHeaderTimeout)
	defer cancel()
	// On the watch's own connection: Client.Status would dial another.
	st, err := etcdserverpb.NewMaintenanceClient(cli.ActiveConnection()).Status(sctx, &etcdserverpb.StatusRequest{})
	if err != nil {
		f.logger.Debug("no version from etcd; relying on its periodic progress notifications", "endpoint", ep, "err", err)
		return false
	}
	ok := progressInOrder(st.Version)
	if !ok {
		f.logger.Info("this etcd may send a requested progress notification ahead of events; relying on its periodic ones",
			"endpoint", ep, "version", st.Version)
	}
	return ok
}

// progressInOrder reports whether an etcd version sends requested progress
// notifications in order with events: 3.4.25+, 3.5.8+, 3.6 and later.
func progressInOrder(version string) bool {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) < 3 {
		return false
	}
	num := func(s string) int {
		if i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
			s = s[:i]
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return -1
		}
		return n
	}
	major, minor, patch := num(parts[0]), num(parts[1]), num(parts[2])
	switch {
	case major != 3:
		return major > 3
	case minor == 4:
		return patch >= 25
	case minor == 5:
		return patch >= 8
	}
	return minor > 5
}

// warnUncleanEvent logs, once per key, an event left out because its key
// is not a clean path.
func (f *Feed) warnUncleanEvent(key string) {
	f.mu.Lock()
	first := !f.warned[key] && len(f.warned) < 1000
	if first {
		f.warned[key] = true
	}
	f.mu.Unlock()
	if first {
		f.logger.Warn("etcd v3 key is not a clean path (empty segment, trailing slash, . or ..) and is left out: a tree cannot hold it; rename it",
			"key", key)
	}
}

func (f *Feed) setIndex(rev uint64) {
	f.mu.Lock()
	f.applied = rev
	f.status.Index = rev
	f.mu.Unlock()
}

func (f *Feed) setEndpoint() {
	ep := f.sess.endpoint()
	f.mu.Lock()
	f.status.Endpoint = ep
	f.mu.Unlock()
}

func (f *Feed) setMode(mode string) {
	f.mu.Lock()
	f.status.Mode = mode
	f.mu.Unlock()
}

func (f *Feed) contact(ep string) {
	f.mu.Lock()
	f.status.Endpoint, f.status.Connected, f.status.LastContact, f.status.LastError = ep, true, time.Now(), ""
	f.mu.Unlock()
}

func (f *Feed) failed(err error) {
	f.mu.Lock()
	f.status.Connected, f.status.LastError = false, err.Error()
	f.mu.Unlock()
}

func (f *Feed) newBackoff() *retry.Backoff {
	return &retry.Backoff{Min: f.cfg.MinBackoff, Max: f.cfg.MaxBackoff}
}
