package mirror

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A v3 destination receives changes: everything one source index (a v2
// event) or one source revision (a v3 transaction) does, as operations on
// destination keys. Consecutive changes are applied together in one
// destination txn that also records the index, so the index key and the
// data can never disagree, and a crash needs no replay window.

// maxTxnKeys bounds the distinct keys of one destination txn, below etcd's
// default --max-txn-ops of 128 (the index key and the lock fence come on
// top).
const maxTxnKeys = 100

// quietWriteInterval spaces index writes that only record quiet progress.
const quietWriteInterval = time.Second

// op is one destination write.
type op struct {
	key    string // destination key
	srcKey string // for messages
	action string // the source action, for messages and metrics
	index  uint64 // the source index or revision of the change

	del bool // delete the key (otherwise put value)
	// prefix deletes everything below key too: a v2 directory went away.
	prefix  bool
	value   string
	expires *time.Time // a v2 TTL: the key is bound to a lease that ends then

	// check says whether before is known; the write applies only if the
	// destination holds it.
	check  bool
	before nodeState
}

// change is what one source index or revision does. No ops: the index
// only moves (an ignored event, a quiet marker).
type change struct {
	index uint64
	ops   []op
}

func (c change) hasPrefixOp() bool {
	for _, o := range c.ops {
		if o.prefix {
			return true
		}
	}
	return false
}

// v3Ops maps one classified v2 event onto v3 operations. v2 directories
// have no v3 counterpart: creating one writes nothing, deleting or expiring
// one deletes every key below it, and a file replaced by a directory is
// deleted. A key with a TTL is bound to a lease that ends when the source
// key expires.
func v3Ops(ev *event) []op {
	base := op{key: ev.dstKey, srcKey: ev.srcKey, action: ev.action, index: ev.index}
	if ev.clearBase {
		base.del, base.prefix = true, true
		return []op{base}
	}
	before, after := ev.before(), ev.after()
	switch {
	case !after.exists && (before.dir || (ev.node != nil && ev.node.Dir)):
		base.del, base.prefix = true, true
	case !after.exists:
		base.del = true
		base.check, base.before = before.exists, before
	case after.dir && before.exists && !before.dir:
		base.del = true
		base.check, base.before = true, before
	case after.dir:
		return nil
	default:
		base.value, base.expires = after.value, after.expires
		base.check, base.before = !before.dir, before
		if before.dir {
			base.before = nodeState{}
		}
	}
	return []op{base}
}

// v3SourceOps maps the events of one source revision.
func (m *Mirror) v3SourceOps(events []*clientv3.Event) []op {
	var ops []op
	for _, e := range events {
		key := string(e.Kv.Key)
		action := "put"
		if e.Type == mvccpb.DELETE {
			action = "delete"
		}
		rev := uint64(e.Kv.ModRevision)
		switch {
		case !under(m.keys.srcRoot, key):
			m.ignoreKey(rev, action, key, "outside_prefix")
			continue
		case m.keys.hidden(key):
			m.ignoreKey(rev, action, key, "hidden")
			continue
		case m.ignore != nil && m.ignore.MatchString(key):
			m.ignoreKey(rev, action, key, "regex")
			continue
		}
		o := op{key: m.keys.toDst(key), srcKey: key, action: action, index: rev}
		switch {
		case e.PrevKv != nil:
			o.check, o.before = true, nodeState{exists: true, value: string(e.PrevKv.Value)}
		case e.Type == mvccpb.PUT && e.IsCreate():
			o.check = true
		}
		if e.Type == mvccpb.DELETE {
			o.del = true
		} else {
			o.value = string(e.Kv.Value)
		}
		ops = append(ops, o)
	}
	return ops
}

func (m *Mirror) ignoreKey(index uint64, action, key, reason string) {
	m.m.ignored.WithLabelValues(reason).Inc()
	m.count(func(p *progress) { p.ignored++ })
	m.log.Debug("ignoring event", "index", index, "action", action, "key", key, "reason", reason)
}

// streamV3 replicates into a v3 destination from index from until ctx
// ends (nil), the source's history runs out (errHistoryCleared) or
// replication must stop.
func (m *Mirror) streamV3(ctx context.Context, from uint64) error {
	m.setPhase(phaseStreaming)
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	changes := make(chan change, eventBuffer)
	var readErr error
	var reader sync.WaitGroup
	reader.Go(func() {
		if m.cfg.SourceAPI == apiV3 {
			readErr = m.readV3(sctx, from, changes)
		} else {
			readErr = m.readV2Changes(sctx, from, changes)
		}
		close(changes)
	})
	err := m.applyChanges(sctx, changes, from-1)
	cancel(err)
	for range changes { // let the reader finish
	}
	reader.Wait()
	if cause := context.Cause(sctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	if readErr != nil {
		return readErr
	}
	return err
}

// readV2Changes turns the v2 source's events into changes.
func (m *Mirror) readV2Changes(ctx context.Context, from uint64, out chan<- change) error {
	items := make(chan item, eventBuffer)
	var readErr error
	done := make(chan struct{})
	go func() {
		readErr = m.read(ctx, from, items)
		close(items)
		close(done)
	}()
	defer func() {
		for range items {
		}
		<-done
	}()
	for it := range items {
		ev, err := m.classify(it)
		if err != nil {
			return err
		}
		c := change{index: it.index}
		if ev != nil {
			c.ops = v3Ops(ev)
		}
		select {
		case out <- c:
		case <-ctx.Done():
			return nil
		}
	}
	return readErr
}

// readV3 follows the v3 source's watch from revision from, re-opening it
// (on another member) when it fails, and hands over one change per
// revision. It returns errHistoryCleared when from was compacted away.
func (m *Mirror) readV3(ctx context.Context, from uint64, out chan<- change) error {
	next := from
	delay := 100 * time.Millisecond
	for {
		progressed, err := m.watchV3(ctx, &next, out)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, errHistoryCleared), errors.As(err, new(*RefusalError)):
			return err
		}
		if progressed {
			delay = 100 * time.Millisecond
		}
		m.noteError(sideSource, "watch the source", err)
		m.log.Warn("source watch ended; watching again", "from", next, "err", err)
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
		delay = min(2*delay, m.cfg.MaxBackoff)
	}
}

// watchV3 runs one watch. Every poll timeout it asks the source for a
// progress notification, which proves the prefix quiet up to the
// revision it carries.
func (m *Mirror) watchV3(ctx context.Context, next *uint64, out chan<- change) (bool, error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := m.src3.cli.Watch(wctx, m.keys.srcRoot, clientv3.WithPrefix(), clientv3.WithRev(int64(*next)),
		clientv3.WithPrevKV(), clientv3.WithCreatedNotify())
	tick := time.NewTicker(m.cfg.PollTimeout)
	defer tick.Stop()
	progressed := false
	emit := func(c change) bool {
		select {
		case out <- c:
			*next = c.index + 1
			progressed = true
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		select {
		case <-ctx.Done():
			return progressed, nil
		case <-tick.C:
			pctx, pcancel := m.src3.call(wctx)
			m.src3.cli.RequestProgress(pctx)
			pcancel()
			continue
		case resp, ok := <-wch:
			if !ok {
				return progressed, errors.New("the source closed the watch")
			}
			if resp.CompactRevision != 0 {
				m.log.Warn("the source compacted its history past the next revision", "next", *next, "compacted", resp.CompactRevision)
				return progressed, errHistoryCleared
			}
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					return progressed, errHistoryCleared
				}
				return progressed, fmt.Errorf("watch %s from revision %d: %w", m.keys.srcRoot, *next, err)
			}
			m.src3.saw(&resp.Header)
			if err := m.checkSourceCluster(clusterIDOf(&resp.Header)); err != nil {
				return progressed, err
			}
			head := uint64(resp.Header.Revision)
			if resp.Created {
				m.noteSourceIndex(head)
				continue
			}
			if len(resp.Events) == 0 {
				// A progress notification: every event up to head was sent.
				m.noteSourceIndex(head)
				if head >= *next && !emit(change{index: head}) {
					return progressed, nil
				}
				m.noteAlive()
				continue
			}
			for i := 0; i < len(resp.Events); {
				rev := resp.Events[i].Kv.ModRevision
				j := i
				for j < len(resp.Events) && resp.Events[j].Kv.ModRevision == rev {
					j++
				}
				if uint64(rev) < *next {
					i = j
					continue // a re-opened watch repeats nothing, but be sure
				}
				if !emit(change{index: uint64(rev), ops: m.v3SourceOps(resp.Events[i:j])}) {
					return progressed, nil
				}
				i = j
			}
			m.noteSourceIndex(max(head, *next-1))
		}
	}
}

// keyPlan is what a batch does to one destination key: the state it must
// find (from the first change touching it) and the last write.
type keyPlan struct {
	first op // gives the expected state and the event named on divergence
	last  op // the write
	// pinned replaces first's check after a failed txn: the key must still
	// be as read then (mod revision; 0 for absent).
	pinned    bool
	pinnedRev int64
	skip      bool // the destination already holds last's result
}

// batch is consecutive changes applied in one txn.
type batch struct {
	changes []change
	plans   map[string]*keyPlan
	order   []string
	prefix  []op // prefix deletions (a batch holds them alone)
	last    uint64
	events  int
}

func newBatch() *batch { return &batch{plans: map[string]*keyPlan{}} }

func (b *batch) empty() bool { return len(b.changes) == 0 }

func (b *batch) writes() bool { return len(b.order) > 0 || len(b.prefix) > 0 }

// fits reports whether c may join the batch.
func (b *batch) fits(c change) bool {
	if b.empty() {
		return true
	}
	if len(b.prefix) > 0 || c.hasPrefixOp() {
		return false
	}
	add := 0
	for _, o := range c.ops {
		if _, ok := b.plans[o.key]; !ok {
			add++
		}
	}
	return len(b.order)+add <= maxTxnKeys
}

func (b *batch) add(c change) {
	b.changes = append(b.changes, c)
	b.last = c.index
	if len(c.ops) > 0 {
		b.events++
	}
	for _, o := range c.ops {
		if o.prefix {
			b.prefix = append(b.prefix, o)
			continue
		}
		if p, ok := b.plans[o.key]; ok {
			p.last = o
			continue
		}
		b.plans[o.key] = &keyPlan{first: o, last: o}
		b.order = append(b.order, o.key)
	}
}

// applyChanges groups changes into batches and applies them one txn at a
// time. A batch that only moves the index (quiet progress, ignored events)
// is written at most once per quietWriteInterval.
func (m *Mirror) applyChanges(ctx context.Context, in <-chan change, applied uint64) error {
	b := newBatch()
	var carry *change
	lastWrite := time.Now()
	tick := time.NewTicker(quietWriteInterval)
	defer tick.Stop()
	flushCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	}
	for {
		if carry != nil {
			b.add(*carry)
			carry = nil
		} else if b.empty() {
			select {
			case c, ok := <-in:
				if !ok {
					return nil
				}
				b.add(c)
			case <-ctx.Done():
				return nil
			}
		}
		carry = m.fill(b, in)
		if !b.writes() && carry == nil && time.Since(lastWrite) < quietWriteInterval {
			// Only index progress: wait for more, or for the interval.
			select {
			case c, ok := <-in:
				if !ok {
					fctx, cancel := flushCtx()
					err := m.commitBatch(fctx, b)
					cancel()
					return err
				}
				carry = &c
				if b.fits(c) {
					continue
				}
			case <-tick.C:
			case <-ctx.Done():
				fctx, cancel := flushCtx()
				defer cancel()
				return m.commitBatch(fctx, b)
			}
		}
		if carry != nil && b.fits(*carry) {
			continue
		}
		if err := m.commitBatch(ctx, b); err != nil {
			if ctx.Err() != nil && !isVerdict(err) {
				return nil
			}
			return err
		}
		lastWrite = time.Now()
		b = newBatch()
	}
}

// batchWait is how long a batch waits for more changes while the source
// is known to be ahead: a fuller txn costs the destination about as much
// as a small one.
const batchWait = 2 * time.Millisecond

// fill adds the changes already waiting to b, and while catching up waits
// a moment for more. It returns a change that did not fit, if any.
func (m *Mirror) fill(b *batch, in <-chan change) *change {
	deadline := time.Now().Add(batchWait)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		var c change
		var ok bool
		select {
		case c, ok = <-in:
		default:
			if !b.writes() || len(b.order) >= maxTxnKeys || m.Status().SourceIndex <= b.last {
				return nil
			}
			wait := time.Until(deadline)
			if wait <= 0 {
				return nil
			}
			if timer == nil {
				timer = time.NewTimer(wait)
			}
			select {
			case c, ok = <-in:
			case <-timer.C:
				return nil
			}
		}
		if !ok {
			return nil
		}
		if !b.fits(c) {
			return &c
		}
		b.add(c)
	}
}

// isVerdict reports errors that end replication whatever the context.
func isVerdict(err error) bool {
	return errors.As(err, new(*DivergenceError)) || errors.As(err, new(*RefusalError)) || errors.As(err, new(*LockLostError))
}

// commitBatch applies a batch, retrying transient failures, and accounts
// for it.
func (m *Mirror) commitBatch(ctx context.Context, b *batch) error {
	if b.empty() {
		return nil
	}
	started := time.Now()
	var replayed int
	err := m.retry(ctx, sideDestination, "apply events", func(ctx context.Context) error {
		var err error
		replayed, err = m.applyBatch(ctx, b)
		return err
	})
	if err != nil {
		return err
	}
	m.m.writeLatency.Observe(time.Since(started).Seconds())
	m.m.replicated.Add(float64(b.events))
	for _, c := range b.changes {
		for _, o := range c.ops {
			outcome := "applied"
			if p := b.plans[o.key]; p != nil && p.skip {
				outcome = "already_applied"
			}
			m.m.events.WithLabelValues(o.action, outcome).Inc()
			if o.action != "" {
				m.log.Info("replicated", "index", o.index, "action", o.action, "key", o.srcKey, "destination_key", o.key, "outcome", outcome)
			}
		}
	}
	m.count(func(p *progress) {
		p.applied += uint64(b.events - replayed)
		p.replayed += uint64(replayed)
	})
	m.noteApplied(b.last)
	m.notePersisted(b.last)
	return nil
}

// applyBatch writes the batch and the index in one txn, if the lock is
// still ours and every key holds the state the source says it held. When
// the txn's comparisons fail, it reads the keys: one that already holds
// its result is left alone (a replay), one that holds neither state has
// diverged. It returns how many keys were found already applied.
func (m *Mirror) applyBatch(ctx context.Context, b *batch) (int, error) {
	if len(b.prefix) > 0 {
		return 0, m.applyPrefixDeletes(ctx, b)
	}
	for round := 0; round < 4; round++ {
		if err := m.lock.check(); err != nil {
			return 0, err
		}
		cmps := []clientv3.Cmp{m.lock3.fence()}
		var ops []clientv3.Op
		for _, k := range b.order {
			p := b.plans[k]
			switch {
			case p.pinned && p.pinnedRev == 0:
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
			case p.pinned:
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", p.pinnedRev))
			case p.first.check && !p.first.before.exists:
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
			case p.first.check:
				cmps = append(cmps, clientv3.Compare(clientv3.Value(k), "=", p.first.before.value))
			}
			if p.skip {
				continue
			}
			o, err := m.writeOp(ctx, p.last)
			if err != nil {
				return 0, err
			}
			ops = append(ops, o)
		}
		ops = append(ops, clientv3.OpPut(m.keys.indexKey(), strconv.FormatUint(b.last, 10)))
		failure := []clientv3.Op{clientv3.OpGet(m.lock3.key)}
		for _, k := range b.order {
			failure = append(failure, clientv3.OpGet(k))
		}
		cctx, cancel := m.dst3.call(ctx)
		resp, err := m.dst3.cli.Txn(cctx).If(cmps...).Then(ops...).Else(failure...).Commit()
		cancel()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			m.leases.forget()
			return 0, fmt.Errorf("a lease for a TTL expired before its key was written: %w", err)
		}
		if err != nil {
			return 0, fmt.Errorf("write %d keys and the index %d: %w", len(b.order)+len(b.prefix), b.last, err)
		}
		if resp.Succeeded {
			n := 0
			for _, p := range b.plans {
				if p.skip {
					n++
				}
			}
			return n, nil
		}
		if err := m.checkFence(resp.Responses[0].GetResponseRange().Kvs); err != nil {
			return 0, err
		}
		for i, k := range b.order {
			kvs := resp.Responses[1+i].GetResponseRange().Kvs
			if err := m.resolve(b.plans[k], kvs); err != nil {
				return 0, err
			}
		}
	}
	return 0, &RefusalError{
		Reason: fmt.Sprintf("destination keys keep changing while the mirror writes events up to %d", b.last),
		Remedy: "something else writes the replica; stop it, then run `confsync mirror verify`",
	}
}

// applyPrefixDeletes removes what a v2 directory held (it was deleted or
// expired, or an ancestor of the source prefix was): every destination key
// at or below it that the mirror owns, leaving hidden keys (the
// replication keys when the base is /) and keys whose source keys are
// ignored. A large directory takes several txns; the index moves in the
// last, so a crash repeats the deletion, which is harmless.
func (m *Mirror) applyPrefixDeletes(ctx context.Context, b *batch) error {
	var doomed []string
	for _, o := range b.prefix {
		cctx, cancel := m.dst3.call(ctx)
		resp, err := m.dst3.cli.Get(cctx, o.key, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		cancel()
		if err != nil {
			return fmt.Errorf("list %s and below: %w", o.key, err)
		}
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			src := m.keys.toSrc(k)
			if under(o.key, k) && !m.keys.hidden(src) && (m.ignore == nil || !m.ignore.MatchString(src)) {
				doomed = append(doomed, k)
			}
		}
	}
	for {
		n := min(len(doomed), maxTxnKeys)
		ops := make([]clientv3.Op, 0, n+1)
		for _, k := range doomed[:n] {
			ops = append(ops, clientv3.OpDelete(k))
		}
		doomed = doomed[n:]
		if len(doomed) == 0 {
			ops = append(ops, clientv3.OpPut(m.keys.indexKey(), strconv.FormatUint(b.last, 10)))
		}
		if err := m.commitFenced(ctx, ops); err != nil {
			return err
		}
		if len(doomed) == 0 {
			return nil
		}
	}
}

// commitFenced runs ops in a txn fenced on the lock.
func (m *Mirror) commitFenced(ctx context.Context, ops []clientv3.Op) error {
	if err := m.lock.check(); err != nil {
		return err
	}
	cctx, cancel := m.dst3.call(ctx)
	defer cancel()
	resp, err := m.dst3.cli.Txn(cctx).If(m.lock3.fence()).Then(ops...).Else(clientv3.OpGet(m.lock3.key)).Commit()
	if err != nil {
		return fmt.Errorf("write %d keys: %w", len(ops), err)
	}
	if !resp.Succeeded {
		return m.checkFence(resp.Responses[0].GetResponseRange().Kvs)
	}
	return nil
}

// checkFence reports the lock lost when its key is no longer our holding.
func (m *Mirror) checkFence(kvs []*mvccpb.KeyValue) error {
	_, rev := m.lock3.holding()
	if len(kvs) == 0 || kvs[0].CreateRevision != rev {
		m.lock.lose("another mirror holds it now, or it expired")
		return m.lock.check()
	}
	return nil
}

// resolve decides about one key after a failed txn, from what it holds.
func (m *Mirror) resolve(p *keyPlan, kvs []*mvccpb.KeyValue) error {
	cur := nodeState{}
	var rev int64
	if len(kvs) > 0 {
		cur = nodeState{exists: true, value: string(kvs[0].Value)}
		rev = kvs[0].ModRevision
	}
	after := nodeState{exists: !p.last.del, value: p.last.value}
	before := p.first.before
	switch {
	case p.pinned && p.pinnedRev == rev:
	case !p.first.check && !p.pinned:
	case p.first.check && matchesBefore(before, after, cur):
		if !cur.exists {
			rev = 0
		}
		p.pinned, p.pinnedRev = true, rev
	case matchesAfter(after, cur):
		p.skip = true
		p.pinned, p.pinnedRev = true, rev
	default:
		return &DivergenceError{Index: p.first.index, Action: p.first.action, SourceKey: p.first.srcKey,
			DestKey: p.first.key, Expected: before.String(), Found: cur.String()}
	}
	return nil
}

// writeOp is the txn operation for a key's last write.
func (m *Mirror) writeOp(ctx context.Context, o op) (clientv3.Op, error) {
	if o.del {
		return clientv3.OpDelete(o.key), nil
	}
	if o.expires == nil {
		return clientv3.OpPut(o.key, o.value), nil
	}
	id, err := m.leases.forExpiry(ctx, *o.expires)
	if err != nil {
		return clientv3.Op{}, err
	}
	return clientv3.OpPut(o.key, o.value, clientv3.WithLease(id)), nil
}

// leaseCache hands out destination leases for v2 TTLs: one lease per
// second of expiry, granted with the time left, so that keys expiring
// together share one.
type leaseCache struct {
	side *v3Side
	now  func() time.Time

	mu     sync.Mutex
	leases map[int64]clientv3.LeaseID // expiry, Unix seconds (rounded up)
}

func (c *leaseCache) forExpiry(ctx context.Context, expires time.Time) (clientv3.LeaseID, error) {
	now := c.now()
	sec := expires.Unix()
	if expires.Nanosecond() > 0 {
		sec++
	}
	c.mu.Lock()
	if c.leases == nil {
		c.leases = map[int64]clientv3.LeaseID{}
	}
	for s := range c.leases {
		if s <= now.Unix()+1 {
			delete(c.leases, s) // about to end: a new key gets a fresh one
		}
	}
	id, ok := c.leases[sec]
	c.mu.Unlock()
	if ok {
		return id, nil
	}
	ttl := ttl(&expires, now)
	cctx, cancel := c.side.call(ctx)
	defer cancel()
	g, err := c.side.cli.Grant(cctx, int64(ttl/time.Second))
	if err != nil {
		return 0, fmt.Errorf("grant a %s lease for a TTL: %w", ttl, err)
	}
	c.mu.Lock()
	c.leases[sec] = g.ID
	c.mu.Unlock()
	return g.ID, nil
}

func (c *leaseCache) forget() {
	c.mu.Lock()
	c.leases = nil
	c.mu.Unlock()
}

// applyDiffsV3 makes a v3 destination match the source during a resync:
// writes and deletions in txns of up to maxTxnKeys keys, each fenced on
// the lock.
func (m *Mirror) applyDiffsV3(ctx context.Context, diffs []difference) error {
	for start := 0; start < len(diffs); start += maxTxnKeys {
		part := diffs[start:min(start+maxTxnKeys, len(diffs))]
		err := m.retry(ctx, sideDestination, "resync", func(ctx context.Context) error {
			if err := m.lock.check(); err != nil {
				return err
			}
			var ops []clientv3.Op
			for _, d := range part {
				o := op{key: d.dstKey, del: d.kind == diffExtra, value: d.src.value, expires: d.src.expires}
				w, err := m.writeOp(ctx, o)
				if err != nil {
					return err
				}
				ops = append(ops, w)
			}
			return m.commitFenced(ctx, ops)
		})
		if err != nil {
			return err
		}
		for _, d := range part {
			m.m.resyncChanges.WithLabelValues(string(d.kind)).Inc()
			m.log.Debug("resync change", "kind", d.kind, "key", d.dstKey)
		}
		m.noteAlive()
	}
	return nil
}
