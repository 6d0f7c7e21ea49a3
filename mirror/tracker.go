package mirror

import (
	"context"
	"strings"
	"sync"
)

// task is one source index the stream handles: an event to apply, an event
// to skip, or a quiet marker (an index etcd proved nothing happened up to).
type task struct {
	index uint64
	ev    *event // nil for skipped events and quiet markers
	done  bool
}

// tracker orders the stream's work. Events are admitted in source order;
// one may start only when nothing related to its key (the key itself, a
// directory above it, anything below it) is still being applied, so each
// key sees its events in order while unrelated keys are written
// concurrently. The watermark is the highest index below which every task
// is done: the only index the mirror ever records.
//
// The tracker also remembers which keys have events above the persisted
// index, applied or in flight. A second event on such a key (or a related
// one) needs the replay window widened first (see needsIntent).
type tracker struct {
	mu        sync.Mutex
	cond      *sync.Cond
	limit     int
	queue     []*task // admitted, not yet folded into the watermark
	inflight  []*task
	watermark uint64

	persisted   uint64
	unpersisted []*task        // events above persisted, in index order
	exact       map[string]int // their keys
	below       map[string]int // their keys' ancestors

	// changed receives a signal whenever the watermark moves.
	changed chan struct{}
}

func newTracker(limit int, start uint64) *tracker {
	t := &tracker{limit: limit, watermark: start, persisted: start,
		exact: map[string]int{}, below: map[string]int{}, changed: make(chan struct{}, 1)}
	t.cond = sync.NewCond(&t.mu)
	return t
}

// wake releases admit calls waiting on a cancelled context.
func (t *tracker) wake() {
	t.mu.Lock()
	t.cond.Broadcast()
	t.mu.Unlock()
}

// skip records an index that needs no destination write.
func (t *tracker) skip(index uint64) {
	t.mu.Lock()
	t.queue = append(t.queue, &task{index: index, done: true})
	t.advance()
	t.mu.Unlock()
}

// admit waits until the event may be applied, then registers it.
func (t *tracker) admit(ctx context.Context, tk *task) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.inflight) >= t.limit || t.conflicts(tk.ev.dstKey) {
		if err := ctx.Err(); err != nil {
			return err
		}
		t.cond.Wait()
	}
	t.queue = append(t.queue, tk)
	t.inflight = append(t.inflight, tk)
	return nil
}

func (t *tracker) conflicts(key string) bool {
	for _, other := range t.inflight {
		if related(other.ev.dstKey, key) {
			return true
		}
	}
	return false
}

// finish marks an admitted task done and returns the new watermark.
func (t *tracker) finish(tk *task) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	tk.done = true
	for i, other := range t.inflight {
		if other == tk {
			t.inflight = append(t.inflight[:i], t.inflight[i+1:]...)
			break
		}
	}
	t.advance()
	t.cond.Broadcast()
	return t.watermark
}

func (t *tracker) advance() {
	n := 0
	for n < len(t.queue) && t.queue[n].done {
		t.watermark = t.queue[n].index
		t.queue[n] = nil
		n++
	}
	t.queue = t.queue[n:]
	if n > 0 {
		select {
		case t.changed <- struct{}{}:
		default:
		}
	}
}

// abandon releases an admitted task that could not be applied. It stays
// in the queue, not done, so the watermark never passes it.
func (t *tracker) abandon(tk *task) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, other := range t.inflight {
		if other == tk {
			t.inflight = append(t.inflight[:i], t.inflight[i+1:]...)
			break
		}
	}
	t.cond.Broadcast()
}

// current returns the watermark.
func (t *tracker) current() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.watermark
}

// idle waits until no event is in flight.
func (t *tracker) idle() {
	t.mu.Lock()
	for len(t.inflight) > 0 {
		t.cond.Wait()
	}
	t.mu.Unlock()
}

// needsIntent reports whether applying these events (in order, above the
// persisted index) could leave some key more than one event ahead of the
// persisted index, and registers them as unpersisted. When it does, the
// replay window must be recorded before they are applied: a replay could
// otherwise find a key two changes ahead and take that for divergence.
func (t *tracker) needsIntent(events []*task) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	need := false
	for _, tk := range events {
		key := tk.ev.dstKey
		if t.relatedUnpersisted(key) {
			need = true
		}
		t.unpersisted = append(t.unpersisted, tk)
		t.exact[key]++
		forAncestors(key, func(a string) { t.below[a]++ })
	}
	return need
}

func (t *tracker) relatedUnpersisted(key string) bool {
	if t.exact[key] > 0 || t.below[key] > 0 {
		return true
	}
	hit := false
	forAncestors(key, func(a string) {
		if t.exact[a] > 0 {
			hit = true
		}
	})
	return hit
}

// markPersisted records that the destination's index key now says idx.
func (t *tracker) markPersisted(idx uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if idx <= t.persisted {
		return
	}
	t.persisted = idx
	n := 0
	for n < len(t.unpersisted) && t.unpersisted[n].index <= idx {
		key := t.unpersisted[n].ev.dstKey
		decrement(t.exact, key)
		forAncestors(key, func(a string) { decrement(t.below, a) })
		t.unpersisted[n] = nil
		n++
	}
	t.unpersisted = t.unpersisted[n:]
}

func decrement(m map[string]int, k string) {
	if m[k] <= 1 {
		delete(m, k)
	} else {
		m[k]--
	}
}

// forAncestors calls fn for every proper ancestor of key, "/" included.
func forAncestors(key string, fn func(string)) {
	if key == "/" {
		return
	}
	for i := strings.LastIndexByte(key, '/'); i > 0; i = strings.LastIndexByte(key[:i], '/') {
		fn(key[:i])
	}
	fn("/")
}
