package mirror

import (
	"context"
	"fmt"
	"sync"
	"time"

	client "go.etcd.io/etcd/client/v2"
)

// comparison is the source tree at one index set against the destination.
type comparison struct {
	index     uint64
	clusterID string
	diffs     []difference
	compared  int // destination keys the source tree maps to
}

// compare reads the source prefix (one recursive GET, or one range read:
// a consistent state at its index or revision) and the destination base,
// and lists the differences.
func (m *Mirror) compare(ctx context.Context) (*comparison, error) {
	var src, have *flatTree
	err := m.retry(ctx, sideSource, "read the source tree", func(ctx context.Context) error {
		var err error
		if m.src3 != nil {
			src, err = readTree3(ctx, m.src3, m.keys.srcRoot)
		} else {
			src, err = readTree(ctx, m.src.Keys(), m.keys.srcRoot)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if src.clusterID == "" && m.src != nil {
		src.clusterID = m.src.ClusterID()
	}
	err = m.retry(ctx, sideDestination, "read the destination tree", func(ctx context.Context) error {
		var err error
		if m.dst3 != nil {
			have, err = readTree3(ctx, m.dst3, m.keys.dstBase)
		} else {
			have, err = readTree(ctx, m.dst.Keys(), m.keys.dstBase)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	want := wantedTree(src, m.keys, m.ignore)
	if m.dst3 == nil {
		return &comparison{index: src.index, clusterID: src.clusterID, diffs: diff(want, have, m.keys, m.ignore), compared: len(want.nodes)}, nil
	}
	want, have = filesOnly(want), m.mirroredOnly(have)
	var diffs []difference
	for _, d := range diff(want, have, m.keys, m.ignore) {
		if d.kind != diffTTL { // a lease's deadline is not compared
			diffs = append(diffs, d)
		}
	}
	return &comparison{index: src.index, clusterID: src.clusterID, diffs: diffs, compared: len(want.nodes)}, nil
}

// filesOnly is a tree as a v3 destination holds it: v2 directories have no
// v3 counterpart.
func filesOnly(t *flatTree) *flatTree {
	out := &flatTree{nodes: map[string]nodeState{}, children: map[string]int{}, index: t.index, clusterID: t.clusterID}
	for k, n := range t.nodes {
		if !n.dir {
			out.nodes[k] = n
		}
	}
	return out
}

// mirroredOnly drops the destination keys the mirror does not own on a v3
// destination: hidden ones (the replication keys under /__replication
// when the destination base is /), which a v2 listing leaves out by itself.
func (m *Mirror) mirroredOnly(t *flatTree) *flatTree {
	for k := range t.nodes {
		if m.keys.hidden(m.keys.toSrc(k)) {
			delete(t.nodes, k)
		}
	}
	return t
}

// resync makes the destination equal to the source as of one index without
// ever emptying it: it reads both trees, writes only the keys that differ,
// deletes only the keys the source no longer has, records the index, and
// returns the index to stream from. A key present and equal on both sides
// is never touched, so consumers of the replica see each key either at its
// old or at its new value.
func (m *Mirror) resync(ctx context.Context, reason string) (uint64, error) {
	m.setPhase(phaseResync)
	started := time.Now()
	m.log.Info("resynchronising", "reason", reason, "source_prefix", m.keys.srcRoot, "destination_prefix", m.keys.dstBase)
	cmp, err := m.compare(ctx)
	if err != nil {
		return 0, err
	}
	if err := m.checkOverlap(cmp.clusterID); err != nil {
		return 0, err
	}
	if was, _ := m.sourceCluster.Load().(string); reason != "reload" && was != "" && was != cmp.clusterID {
		return 0, &RefusalError{
			Reason: fmt.Sprintf("the source is now cluster %s, not %s as recorded", cmp.clusterID, was),
			Remedy: "check SRC; if the source was replaced on purpose, restart with --reload",
		}
	}
	m.noteSourceIndex(cmp.index)
	// Mark the destination as being rewritten before touching it: a crash
	// from here on resyncs again instead of replaying events.
	err = m.retry(ctx, sideDestination, "write the replication state", func(ctx context.Context) error {
		return m.state.writeState(ctx, func(s *replicationState) {
			m.identify(s, cmp.clusterID)
			s.MayHaveAppliedThrough = max(s.MayHaveAppliedThrough, cmp.index)
			s.Resyncing = true
		})
	})
	if err != nil {
		return 0, err
	}
	if err := m.applyDiffs(ctx, cmp.diffs); err != nil {
		return 0, err
	}
	if err := m.retry(ctx, sideDestination, "write the replication index", func(ctx context.Context) error {
		return m.state.writeIndex(ctx, cmp.index)
	}); err != nil {
		return 0, err
	}
	err = m.retry(ctx, sideDestination, "write the replication state", func(ctx context.Context) error {
		return m.state.writeState(ctx, func(s *replicationState) {
			s.MayHaveAppliedThrough = cmp.index
			s.Resyncing = false
		})
	})
	if err != nil {
		return 0, err
	}
	m.sourceCluster.Store(cmp.clusterID)
	m.replayThrough.Store(0)
	m.mu.Lock()
	m.progress.appliedIndex, m.progress.persistedIndex = cmp.index, cmp.index
	m.progress.resyncs++
	m.mu.Unlock()
	m.noteApplied(cmp.index)
	m.m.resyncs.WithLabelValues(reason).Inc()
	m.m.loadTime.Observe(time.Since(started).Seconds())
	m.log.Info("resynchronised", "reason", reason, "index", cmp.index, "keys", cmp.compared,
		"changes", len(cmp.diffs), "duration", time.Since(started).Round(time.Millisecond))
	return cmp.index + 1, nil
}

// applyDiffs makes the destination match. Order matters for consumers and
// for etcd: a node of the wrong type goes first, then directories that need
// an explicit write (empty ones, ones with a TTL), then files, and only
// then what the source no longer has.
func (m *Mirror) applyDiffs(ctx context.Context, diffs []difference) error {
	if m.dst3 != nil {
		return m.applyDiffsV3(ctx, diffs)
	}
	var typeFixes, dirs, files, extras []difference
	for _, d := range diffs {
		switch {
		case d.kind == diffExtra:
			extras = append(extras, d)
			continue
		case d.kind == diffType:
			typeFixes = append(typeFixes, d)
		}
		if d.src.dir {
			dirs = append(dirs, d)
		} else {
			files = append(files, d)
		}
	}
	for _, d := range typeFixes {
		if err := m.resyncOp(ctx, d, func(ctx context.Context) error { return deleteNode(ctx, m.dkeys, d) }); err != nil {
			return err
		}
	}
	for _, d := range dirs {
		if err := m.resyncOp(ctx, d, func(ctx context.Context) error { return m.writeDir(ctx, d) }); err != nil {
			return err
		}
	}
	if err := m.parallel(ctx, files, func(ctx context.Context, d difference) error {
		return m.resyncOp(ctx, d, func(ctx context.Context) error {
			_, err := m.dkeys.Set(ctx, d.dstKey, d.src.value, &client.SetOptions{TTL: ttl(d.src.expires, time.Now())})
			if err != nil {
				return fmt.Errorf("write %s: %w", d.dstKey, err)
			}
			return nil
		})
	}); err != nil {
		return err
	}
	return m.parallel(ctx, extras, func(ctx context.Context, d difference) error {
		return m.resyncOp(ctx, d, func(ctx context.Context) error { return deleteNode(ctx, m.dkeys, d) })
	})
}

func (m *Mirror) writeDir(ctx context.Context, d difference) error {
	if d.kind == diffTTL {
		return m.apply.updateDirTTL(ctx, d.dstKey, d.dst, d.src)
	}
	opts := &client.SetOptions{Dir: true, TTL: ttl(d.src.expires, time.Now())}
	if _, err := m.dkeys.Set(ctx, d.dstKey, "", opts); err != nil {
		return fmt.Errorf("write directory %s: %w", d.dstKey, err)
	}
	return nil
}

func (m *Mirror) resyncOp(ctx context.Context, d difference, op func(context.Context) error) error {
	if err := m.retry(ctx, sideDestination, "resync "+d.dstKey, op); err != nil {
		return err
	}
	m.m.resyncChanges.WithLabelValues(string(d.kind)).Inc()
	m.noteAlive()
	m.log.Debug("resync change", "kind", d.kind, "key", d.dstKey)
	return nil
}

// parallel runs fn over items with the configured concurrency and returns
// the first error.
func (m *Mirror) parallel(ctx context.Context, items []difference, fn func(context.Context, difference) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	work := make(chan difference)
	var wg sync.WaitGroup
	for range min(m.cfg.Concurrency, len(items)) {
		wg.Go(func() {
			for d := range work {
				if err := fn(ctx, d); err != nil {
					cancel(err)
				}
			}
		})
	}
feed:
	for _, d := range items {
		select {
		case work <- d:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	return context.Cause(ctx)
}
