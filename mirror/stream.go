package mirror

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	client "go.etcd.io/etcd/client/v2"
)

const (
	// eventBuffer is how many source events may wait for the destination.
	eventBuffer = 1024
	// maxBatch bounds the events admitted between two replay-window marks.
	maxBatch = 512
	// readAheadMin is the backlog (in indexes) that makes reading ahead
	// worth it, readAheadStall how long the chain may wait for the poll it
	// needs before handing over to the sequential poller.
	readAheadMin   = 4
	readAheadStall = 100 * time.Millisecond
	// checkpointInterval is the least time between two writes of the
	// index key while events stream in.
	checkpointInterval = 25 * time.Millisecond
	// shutdownGrace is how long in-flight writes may finish after a stop.
	shutdownGrace = 5 * time.Second
)

// item is what the reader hands the dispatcher: a source event, or a quiet
// marker when ev is nil.
type item struct {
	ev    *client.Response
	index uint64
}

// stream replicates from index from until ctx ends (nil), the history runs
// out (errHistoryCleared) or replication must stop.
func (m *Mirror) stream(ctx context.Context, from uint64) error {
	m.setPhase(phaseStreaming)
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	items := make(chan item, eventBuffer)
	var readErr error
	go func() {
		readErr = m.read(sctx, from, items)
		close(items)
	}()

	tr := newTracker(m.cfg.Concurrency, from-1)
	stopWake := context.AfterFunc(sctx, tr.wake)
	defer stopWake()

	// Workers outlive sctx by a grace period, so that a stop lets writes in
	// flight finish instead of abandoning them halfway.
	wctx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	work := make(chan *task)
	var workers sync.WaitGroup
	for range m.cfg.Concurrency {
		workers.Go(func() {
			for tk := range work {
				m.work(wctx, sctx, cancel, tr, tk)
			}
		})
	}

	ckpt := &checkpointer{m: m, tr: tr, persisted: from - 1, stop: cancel}
	ckptDone := make(chan struct{})
	go func() {
		ckpt.run(sctx)
		close(ckptDone)
	}()

	err := m.dispatch(sctx, items, tr, work)
	cancel(err)
	close(work)
	waited := make(chan struct{})
	go func() {
		workers.Wait()
		close(waited)
	}()
	select {
	case <-waited:
	case <-time.After(shutdownGrace):
		stopWork()
		<-waited
	}
	<-ckptDone
	for range items { // let the reader finish
	}
	flushCtx, cancelFlush := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancelFlush()
	ckpt.flush(flushCtx)

	if cause := context.Cause(sctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	if readErr != nil {
		return readErr
	}
	return err
}

// read long-polls the source and hands over events and quiet markers in
// index order. It returns errHistoryCleared on etcd error 401, nil when ctx
// ends, and retries everything else.
func (m *Mirror) read(ctx context.Context, from uint64, out chan<- item) error {
	var poller *etcd.Poller
	err := m.retry(ctx, sideSource, "prepare the source watch", func(context.Context) error {
		var err error
		poller, err = m.src.NewPoller(m.keys.srcRoot)
		return err
	})
	if err != nil {
		return nil
	}
	keys := m.src.Keys() // for read-ahead; moves with the poller
	var lag lagCheck
	next := from
	for {
		if head := m.Status().SourceIndex; m.cfg.ReadAhead > 1 && head >= next+readAheadMin {
			n, err := m.readAhead(ctx, keys, next, head, out)
			switch {
			case ctx.Err() != nil:
				return nil
			case err != nil:
				return err
			case n > next:
				next = n
				continue
			}
		}
		var res etcd.PollResult
		err := m.retry(ctx, sideSource, "watch the source", func(ctx context.Context) error {
			var err error
			res, err = poller.Poll(ctx, next, m.cfg.PollTimeout)
			if etcd.IsHistoryCleared(err) {
				return errHistoryCleared
			}
			return err
		})
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			return err
		}
		var it item
		switch {
		case res.Event != nil:
			ev := res.Event
			if err := m.checkSourceCluster(ev.ClusterID); err != nil {
				return err
			}
			if ev.Node == nil || ev.Node.ModifiedIndex < next {
				return fmt.Errorf("source watch from index %d returned an event without a usable index: %+v", next, ev.Node)
			}
			it = item{ev: ev, index: ev.Node.ModifiedIndex}
			m.noteSourceIndex(max(ev.Index, it.index))
		case res.QuietThrough >= next-1 && lag.lags(ctx, m, res.QuietThrough):
			// The member answering registered the watch below what the
			// cluster had committed before the poll began, twice: it lags
			// (cut off from its peers, it would prove "quiet" forever).
			poller, keys = m.leaveLaggingMember(poller, keys, fmt.Errorf(
				"the source member serving the watch lags: it registered the watch at index %d, the cluster is at %d", res.QuietThrough, lag.floor))
			continue
		case res.QuietThrough >= next:
			// Proved quiet up to there: record it, so that a busy cluster
			// never pushes the resume index out of etcd's history.
			it = item{index: res.QuietThrough}
			m.noteSourceIndex(res.QuietThrough)
		case res.QuietThrough == next-1:
			// Nothing happened under the prefix: we are current.
			m.noteAlive()
			continue
		default:
			// Either the source's index is below what was replicated (it
			// was restored or replaced: the poll would wait for an index it
			// reaches only after skipping everything in between), or the
			// poll proved nothing. Ask the source directly.
			if err := m.checkSourceNotBehind(ctx, next-1); err != nil {
				return err
			}
			if res.QuietThrough > 0 {
				// The cluster is not behind (a quorum read says so), but the
				// member answering the watch is: a lagging or cut-off
				// follower. Its history is a prefix of the leader's, so
				// nothing is lost, but it may never catch up: move on.
				poller, keys = m.leaveLaggingMember(poller, keys, fmt.Errorf(
					"the source member serving the watch lags: it registered the watch at index %d, below the %d already replicated", res.QuietThrough, next-1))
				continue
			}
			m.noteAlive()
			continue
		}
		select {
		case out <- it:
		case <-ctx.Done():
			return nil
		}
		next = it.index + 1
	}
}

// lagCheck tells a member that lags from one that is merely quiet. After
// each quiet poll it reads the cluster's index through the leader (the
// floor); a member that registers its next watch below the floor was
// already behind when the poll began. One such answer can be a follower a
// few milliseconds behind in applying; two in a row is a member that lags.
type lagCheck struct {
	floor   uint64 // the cluster's index after the last quiet poll
	strikes int
}

func (l *lagCheck) lags(ctx context.Context, m *Mirror, registered uint64) bool {
	behind := registered < l.floor
	if behind {
		l.strikes++
	} else {
		l.strikes = 0
	}
	if head, _, err := m.sourceHead(ctx); err == nil {
		l.floor = head
		m.noteSourceIndex(head)
	}
	if l.strikes >= 2 {
		l.strikes = 0
		return true
	}
	return false
}

// leaveLaggingMember reports why the watch moves and returns a poller and
// read-ahead keys on another member (the same ones if none can be built).
func (m *Mirror) leaveLaggingMember(poller *etcd.Poller, keys client.KeysAPI, why error) (*etcd.Poller, client.KeysAPI) {
	m.noteError(sideSource, "watch the source", why)
	m.log.Warn("moving the source watch to another member", "err", why)
	c, p, err := m.rotatedPoller()
	if err != nil {
		return poller, keys
	}
	return p, c.Keys()
}

// rotatedPoller is a poller on a new client, which picks its member anew
// (from the endpoints rotated by one, which the v2 client shuffles), so
// that the watch leaves a member that answers but lags.
func (m *Mirror) rotatedPoller() (*etcd.Client, *etcd.Poller, error) {
	n := m.srcRotation.Add(1)
	cfg := m.cfg.Source
	eps := m.src.Endpoints()
	k := int(n % uint64(len(eps)))
	cfg.Endpoints = append(append([]string(nil), eps[k:]...), eps[:k]...)
	c, err := etcd.New(context.Background(), cfg)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.NewPoller(m.keys.srcRoot)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	for _, old := range m.extraSources {
		old.Close() // its poller was the one being replaced
	}
	m.extraSources = []*etcd.Client{c}
	return c, p, nil
}

// checkSourceNotBehind refuses a source whose index is below one the mirror
// has already replicated, or that is another cluster.
func (m *Mirror) checkSourceNotBehind(ctx context.Context, replicated uint64) error {
	head, cluster, err := m.sourceHead(ctx)
	if err != nil {
		return nil // ctx ended; retries are inside
	}
	if err := m.checkSourceCluster(cluster); err != nil {
		return err
	}
	if head < replicated {
		return &RefusalError{
			Reason: fmt.Sprintf("the source's index went back to %d, below the %d already replicated", head, replicated),
			Remedy: "the source was restored or rebuilt; events up to the old index would be silently skipped. Check SRC, then restart with --reload",
		}
	}
	return nil
}

// readAhead catches up faster than one poll after another. etcd answers a
// poll at index w with the first event under the root at or after w, so the
// answers to polls at consecutive indexes, in flight at once, chain back
// into source order: the answer at next is the first event e1, the answer
// at e1+1 the second, and so on; answers at indexes between two events
// repeat the later one and are dropped. A window of polls slides along the
// chain. It stops at the known head of the source, or when the poll it
// needs does not answer at once (no event yet: the sequential poller, which
// proves quiet stretches, takes over). It returns the next index to read.
func (m *Mirror) readAhead(ctx context.Context, keys client.KeysAPI, next, head uint64, out chan<- item) (uint64, error) {
	type answer struct {
		resp *client.Response
		err  error
	}
	type poll struct {
		answer chan answer
		cancel context.CancelFunc
	}
	inflight := map[uint64]poll{}
	defer func() {
		for _, p := range inflight {
			p.cancel()
		}
	}()
	launch := func(w uint64) {
		pctx, cancel := context.WithCancel(ctx)
		p := poll{answer: make(chan answer, 1), cancel: cancel}
		inflight[w] = p
		go func() {
			resp, err := keys.Watcher(m.keys.srcRoot, &client.WatcherOptions{AfterIndex: w - 1, Recursive: true}).Next(pctx)
			p.answer <- answer{resp, err}
		}()
	}
	stall := time.NewTimer(readAheadStall)
	defer stall.Stop()
	cur, launched := next, next
	for cur <= head {
		for ; launched < cur+uint64(m.cfg.ReadAhead) && launched <= head; launched++ {
			launch(launched)
		}
		var a answer
		select {
		case a = <-inflight[cur].answer:
		case <-stall.C:
			return cur, nil
		case <-ctx.Done():
			return cur, nil
		}
		switch {
		case etcd.IsHistoryCleared(a.err):
			return cur, errHistoryCleared
		case a.err != nil, a.resp.Node == nil, a.resp.Node.ModifiedIndex < cur:
			return cur, nil // the sequential poller retries and reports
		}
		if err := m.checkSourceCluster(a.resp.ClusterID); err != nil {
			return cur, err
		}
		idx := a.resp.Node.ModifiedIndex
		head = max(head, a.resp.Index)
		m.noteSourceIndex(max(a.resp.Index, idx))
		select {
		case out <- item{ev: a.resp, index: idx}:
		case <-ctx.Done():
			return cur, nil
		}
		// Polls between cur and the event can only repeat it.
		for w := cur; w <= idx && w < launched; w++ {
			inflight[w].cancel()
			delete(inflight, w)
		}
		cur = idx + 1
		launched = max(launched, cur)
		stall.Reset(readAheadStall)
	}
	return cur, nil
}

func (m *Mirror) checkSourceCluster(id string) error {
	want, _ := m.sourceCluster.Load().(string)
	if id == "" || want == "" || id == want {
		return nil
	}
	return &RefusalError{
		Reason: fmt.Sprintf("the source answered as cluster %s, but replication started from cluster %s", id, want),
		Remedy: "an endpoint in SRC belongs to another cluster, or the source was rebuilt; fix SRC, or restart with --reload to resynchronise from the new cluster",
	}
}

// dispatch turns items into tasks, in batches: classify, widen the replay
// window when needed, then admit each event (waiting for related ones).
func (m *Mirror) dispatch(ctx context.Context, items <-chan item, tr *tracker, work chan<- *task) error {
	intent := m.state.snapshot().MayHaveAppliedThrough
	batch := make([]item, 0, maxBatch)
	for {
		batch = batch[:0]
		select {
		case it, ok := <-items:
			if !ok {
				return nil
			}
			batch = append(batch, it)
		case <-ctx.Done():
			return nil
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case it, ok := <-items:
				if !ok {
					break fill
				}
				batch = append(batch, it)
			default:
				break fill
			}
		}

		tasks := make([]*task, len(batch))
		var writes []*task
		for i, it := range batch {
			ev, err := m.classify(it)
			if err != nil {
				return err
			}
			tasks[i] = &task{index: it.index, ev: ev}
			if ev != nil {
				writes = append(writes, tasks[i])
			}
		}
		if last := batch[len(batch)-1].index; len(writes) > 0 && tr.needsIntent(writes) && last > intent {
			err := m.retry(ctx, sideDestination, "record the replay window", func(ctx context.Context) error {
				return m.state.writeState(ctx, func(s *replicationState) { s.MayHaveAppliedThrough = last })
			})
			if err != nil {
				return err
			}
			intent = last
		}
		for _, tk := range tasks {
			if tk.ev == nil {
				tr.skip(tk.index)
				continue
			}
			if err := tr.admit(ctx, tk); err != nil {
				return nil
			}
			select {
			case work <- tk:
			case <-ctx.Done():
				return nil
			}
		}
		m.noteApplied(tr.current())
	}
}

// classify maps an item to the event to apply, or nil when there is
// nothing to write (a quiet marker, an ignored or unrelated event).
func (m *Mirror) classify(it item) (*event, error) {
	if it.ev == nil {
		return nil, nil
	}
	r := it.ev
	key := r.Node.Key
	ev := &event{index: it.index, action: r.Action, srcKey: key, node: r.Node, prev: r.PrevNode}
	switch r.Action {
	case "set", "create", "update", "compareAndSwap", "delete", "expire", "compareAndDelete":
	default:
		return nil, &RefusalError{
			Reason: fmt.Sprintf("source event %d on %s has action %q, which this mirror does not know", it.index, key, r.Action),
			Remedy: "report it; the index stays below this event, so nothing is skipped",
		}
	}
	deletion := r.Action == "delete" || r.Action == "expire" || r.Action == "compareAndDelete"
	switch {
	case under(m.keys.srcRoot, key):
	case deletion && r.PrevNode != nil && r.PrevNode.Dir && under(key, m.keys.srcRoot):
		// An ancestor directory of the source prefix went away.
		ev.clearBase, ev.dstKey = true, m.keys.dstBase
		m.logEvent(ev, "clearing the destination prefix: an ancestor of the source prefix was deleted")
		return ev, nil
	default:
		// etcd's history scan matches deletions by string prefix, so a
		// sibling such as /conf leaks into a watch of /conftool.
		m.ignoreEvent(ev, "outside_prefix")
		return nil, nil
	}
	switch {
	case m.keys.hidden(key):
		m.ignoreEvent(ev, "hidden")
		return nil, nil
	case m.ignore != nil && m.ignore.MatchString(key):
		m.ignoreEvent(ev, "regex")
		return nil, nil
	}
	if key == m.keys.srcRoot && deletion {
		ev.clearBase, ev.dstKey = true, m.keys.dstBase
		return ev, nil
	}
	ev.dstKey = m.keys.toDst(key)
	return ev, nil
}

func (m *Mirror) ignoreEvent(ev *event, reason string) {
	m.m.ignored.WithLabelValues(reason).Inc()
	m.count(func(p *progress) { p.ignored++ })
	m.log.Debug("ignoring event", "index", ev.index, "action", ev.action, "key", ev.srcKey, "reason", reason)
}

func (m *Mirror) logEvent(ev *event, msg string) {
	m.log.Info(msg, "index", ev.index, "action", ev.action, "key", ev.srcKey, "destination_key", ev.dstKey)
}

// work applies one event, retrying transient failures, and stops the
// stream on a verdict.
func (m *Mirror) work(ctx, streamCtx context.Context, stop context.CancelCauseFunc, tr *tracker, tk *task) {
	ev := tk.ev
	lenient := ev.index <= m.replayThrough.Load()
	started := time.Now()
	var result outcome
	err := m.retry(ctx, sideDestination, "apply event", func(ctx context.Context) error {
		var err error
		result, err = m.apply.apply(ctx, ev, lenient)
		return err
	})
	if err != nil {
		if streamCtx.Err() == nil || errors.As(err, new(*DivergenceError)) {
			stop(err)
		}
		tr.abandon(tk)
		return
	}
	m.m.writeLatency.Observe(time.Since(started).Seconds())
	m.m.replicated.Inc()
	switch result {
	case applied:
		m.m.events.WithLabelValues(ev.action, "applied").Inc()
		m.count(func(p *progress) { p.applied++ })
		m.log.Info("replicated", "index", ev.index, "action", ev.action, "key", ev.srcKey, "destination_key", ev.dstKey)
	case alreadyApplied:
		m.m.events.WithLabelValues(ev.action, "already_applied").Inc()
		m.count(func(p *progress) { p.replayed++ })
		m.log.Info("already on the destination (replay)", "index", ev.index, "action", ev.action, "key", ev.srcKey)
	case superseded:
		m.m.events.WithLabelValues(ev.action, "superseded").Inc()
		m.count(func(p *progress) { p.replayed++ })
		m.log.Info("destination already past this event (replay after an unclean stop)", "index", ev.index, "action", ev.action, "key", ev.srcKey)
	}
	m.noteApplied(tr.finish(tk))
}

// checkpointer records the watermark in the destination's index key,
// whenever it moves and one write at a time, so that a burst of events
// costs a few index writes rather than one per event.
type checkpointer struct {
	m         *Mirror
	tr        *tracker
	persisted uint64
	stop      context.CancelCauseFunc
}

func (c *checkpointer) run(ctx context.Context) {
	for {
		select {
		case <-c.tr.changed:
		case <-ctx.Done():
			return
		}
		if err := c.persist(ctx); err != nil && ctx.Err() == nil {
			c.stop(err)
			return
		}
		// Leave the destination to the events for a moment: during a
		// catch-up this bounds index writes to a few per interval.
		select {
		case <-time.After(checkpointInterval):
		case <-ctx.Done():
			return
		}
	}
}

// flush records the final watermark when the stream ends.
func (c *checkpointer) flush(ctx context.Context) {
	if err := c.persist(ctx); err != nil {
		c.m.log.Warn("could not record the final replication index; the next start replays from the last recorded one",
			"index", c.persisted, "err", err)
	}
}

func (c *checkpointer) persist(ctx context.Context) error {
	w := c.tr.current()
	if w <= c.persisted {
		return nil
	}
	err := c.m.retry(ctx, sideDestination, "write the replication index", func(ctx context.Context) error {
		return c.m.state.writeIndex(ctx, w)
	})
	if err != nil {
		return err
	}
	c.persisted = w
	c.tr.markPersisted(w)
	c.m.notePersisted(w)
	c.m.log.Debug("recorded replication index", "index", w)
	return nil
}
