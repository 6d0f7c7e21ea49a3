package relay

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/keyspace"
	"github.com/confsync/confsync/backends/watch"
)

// streamBuffer is how many events a streamed watch may fall behind before
// it is closed, as etcd closes its own (the client resumes from its last
// index). A long poll takes one event.
const streamBuffer = 100

// hub holds the served state, the event history and the waiting watchers.
// The watch's goroutine changes them under mu; registering a watcher takes
// mu too, so that no event can pass between the history scan and the
// registration. GETs only load the state.
type hub struct {
	state   atomic.Pointer[state]
	gen     atomic.Uint64 // counts the copies and events installed
	metrics *metrics
	logger  *slog.Logger

	// write sends answers to long polls waiting on the relay's own
	// connections (see Server.fanout).
	write func(e *entry, ws []*watcher)

	mu       sync.Mutex
	hist     *history
	floor    uint64 // the relay knows every event above floor, none at or below it
	watchers map[string]map[*watcher]struct{}
	open     [2]int // registered long polls and streams
	pending  []pendingWrites
	closed   bool
}

// watcher is one registered wait. It is answered one of two ways: through
// ch, read by a goroutine of its own (a net/http handler, or a stream on
// the relay's own front end), or, for a long poll on the relay's own front
// end, by writing the event straight to conn from the fan-out.
type watcher struct {
	key       string
	recursive bool
	stream    bool
	since     uint64 // the lowest event index it wants
	// ch carries its events; the hub closes it to end the watch (a stream
	// too far behind, a history that lost events, shutdown). Nil for a
	// watcher answered on conn.
	ch   chan *entry
	conn *clientConn
}

func (w *watcher) mode() int {
	if w.stream {
		return 1
	}
	return 0
}

func newHub(historySize int, m *metrics, logger *slog.Logger) *hub {
	return &hub{hist: newHistory(historySize), watchers: map[string]map[*watcher]struct{}{}, metrics: m, logger: logger}
}

// pendingWrites are the answers to write to connections once h.mu is
// released: events for long polls, or their end (entry nil).
type pendingWrites struct {
	e  *entry
	ws []*watcher
}

// current is the state now, nil before the first copy.
func (h *hub) current() *state { return h.state.Load() }

// Reset installs a whole new copy. The history carries on when the copy
// holds exactly the nodes the relay already had (no event under the prefix
// was missed); otherwise it restarts at the copy's index and every watch
// that may have needed a missed event is ended.
func (h *hub) Reset(c watch.Copy, reason string) {
	if c.Space == nil {
		return
	}
	next := newState(c.Space, c.ClusterID, c.FromCache)
	if !c.FromCache {
		defer h.gen.Add(1)
	}
	h.mu.Lock()
	defer h.flush()
	defer h.mu.Unlock()
	old := h.state.Load()
	if old != nil && reason != "cache" && old.clusterID == c.ClusterID &&
		c.Space.Index() >= old.index() && sameNodes(old.space, c.Space) {
		next.answers = old.answers
		h.state.Store(next)
		h.metrics.resets.WithLabelValues(reason, "kept").Inc()
		return
	}
	h.hist.clear()
	h.floor = c.Space.Index()
	h.state.Store(next)
	if old == nil {
		return
	}
	h.metrics.resets.WithLabelValues(reason, "restarted").Inc()
	// Within one timeline, a watch wanting events above the new index has
	// missed nothing. A timeline that went back or changed cluster may
	// hold other events at any index: end every watch.
	sameTimeline := old.clusterID == c.ClusterID && c.Space.Index() >= old.index()
	ended := h.endWatches(func(w *watcher) bool { return w.stream || !sameTimeline || w.since <= h.floor }, "history-restarted")
	h.logger.Info("re-read of the prefix differs from the relay's copy: the history restarts, and watches that may have missed events end so that their clients re-read",
		"reason", reason, "index", c.Space.Index(), "previous_index", old.index(), "watches_ended", ended)
}

// Event applies one change under the prefix: it enters the history and
// goes to every watcher that wants it.
func (h *hub) Event(s *keyspace.Space, ev *etcd.Event) {
	e := newEntry(ev, time.Now())
	h.metrics.events.Inc()
	defer h.gen.Add(1)
	h.mu.Lock()
	defer h.flush()
	defer h.mu.Unlock()
	old := h.state.Load()
	if old == nil { // cannot happen: a watch starts with a copy
		h.state.Store(newState(s, "", false))
		h.floor = s.Index()
		return
	}
	if dropped := h.hist.add(e); dropped != nil {
		h.floor = dropped.index
	}
	h.state.Store(old.withSpace(s))
	h.dispatch(e, old.space)
}

// Progress moves the index: nothing under the prefix changed up to it.
func (h *hub) Progress(s *keyspace.Space) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if old := h.state.Load(); old != nil && s.Index() > old.index() {
		h.state.Store(old.withIndex(s))
	}
}

// dispatch sends e to the watchers etcd would notify: those of its key and
// the recursive ones of each directory above it, and, when a directory is
// deleted, those of every node that was below it.
func (h *hub) dispatch(e *entry, before *keyspace.Space) {
	for p := range ancestry(e.key) {
		for w := range h.watchers[p] {
			if (w.recursive || p == e.key) && e.index >= w.since {
				h.deliver(w, e)
			}
		}
	}
	if !e.dirDelete || len(h.watchers) == 0 {
		return
	}
	for k, set := range h.watchers {
		if !below(k, e.key) || before.Get(k) == nil {
			continue
		}
		for w := range set {
			if e.index >= w.since {
				h.deliver(w, e)
			}
		}
	}
}

// ancestry yields "/", then every directory on the way to key, then key.
func ancestry(key string) func(yield func(string) bool) {
	return func(yield func(string) bool) {
		if !yield("/") || key == "/" {
			return
		}
		for i := 1; i < len(key); i++ {
			if key[i] == '/' && !yield(key[:i]) {
				return
			}
		}
		yield(key)
	}
}

// deliver hands e to w without ever blocking: a long poll is done after
// one event; a stream whose buffer is full has fallen too far behind and
// is closed. An answer to write to a connection waits for h.flush.
// Caller holds h.mu.
func (h *hub) deliver(w *watcher, e *entry) {
	if w.conn != nil {
		h.remove(w)
		h.queue(e, w)
		return
	}
	select {
	case w.ch <- e:
		if !w.stream {
			h.remove(w)
		}
	default:
		h.remove(w)
		close(w.ch)
		h.metrics.watchesEnded.WithLabelValues("slow").Inc()
	}
}

// registration is the outcome of a wait: the index it was registered at
// (etcd's X-Etcd-Index for a watch), the events from history that answer
// it, and the live watcher, nil when history answered a long poll.
type registration struct {
	index uint64
	past  []*entry
	w     *watcher
}

var (
	errNotServed = errors.New("key not served from memory")
	errClosed    = errors.New("relay shutting down")
)

// watch registers rd's wait (waitIndex 0: the next event), answering from
// history when it can. A waitIndex below the history is etcd's error 401;
// a key the state no longer serves is errNotServed. With conn, a long poll
// is answered by writing to it; otherwise through the watcher's channel.
func (h *hub) watch(rd keyRead, conn *clientConn) (registration, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.state.Load()
	switch {
	case h.closed:
		return registration{}, errClosed
	case !st.serves(rd.key):
		return registration{}, errNotServed
	}
	current := st.index()
	since := rd.waitIndex
	if since == 0 {
		since = current + 1
	}
	if since <= h.floor {
		return registration{}, newError(codeHistoryCleared,
			fmt.Sprintf("the requested history has been cleared [%d/%d]", h.floor+1, since), current)
	}
	reg := registration{index: current, past: h.hist.scan(rd.key, rd.recursive, since, rd.stream)}
	if len(reg.past) > 0 && !rd.stream {
		return reg, nil
	}
	// History has been scanned up to the current index: live events only
	// from here on.
	w := &watcher{key: rd.key, recursive: rd.recursive, stream: rd.stream, since: max(since, current+1)}
	switch {
	case rd.stream:
		w.ch = make(chan *entry, streamBuffer)
	case conn != nil:
		w.conn = conn
	default:
		w.ch = make(chan *entry, 1)
	}
	set := h.watchers[rd.key]
	if set == nil {
		set = map[*watcher]struct{}{}
		h.watchers[rd.key] = set
	}
	set[w] = struct{}{}
	h.open[w.mode()]++
	reg.w = w
	return reg, nil
}

// unwatch removes w when its client has gone, and reports whether it was
// still registered.
func (h *hub) unwatch(w *watcher) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.remove(w)
}

// remove takes w out of the hub if it is there. Caller holds h.mu.
func (h *hub) remove(w *watcher) bool {
	set := h.watchers[w.key]
	if _, ok := set[w]; !ok {
		return false
	}
	delete(set, w)
	if len(set) == 0 {
		delete(h.watchers, w.key)
	}
	h.open[w.mode()]--
	return true
}

// queue adds an answer for w's connection to the writes h.flush makes.
// Caller holds h.mu.
func (h *hub) queue(e *entry, w *watcher) {
	if n := len(h.pending); n > 0 && h.pending[n-1].e == e {
		h.pending[n-1].ws = append(h.pending[n-1].ws, w)
		return
	}
	h.pending = append(h.pending, pendingWrites{e: e, ws: []*watcher{w}})
}

// flush makes the writes queued under h.mu, which it must not hold: the
// fan-out writes to many connections at once.
func (h *hub) flush() {
	h.mu.Lock()
	pending := h.pending
	h.pending = nil
	h.mu.Unlock()
	for _, p := range pending {
		h.write(p.e, p.ws)
	}
}

// endWatches ends every watch end selects, for reason, and reports how
// many. Caller holds h.mu and calls h.flush after releasing it.
func (h *hub) endWatches(end func(*watcher) bool, reason string) int {
	n := 0
	for _, set := range h.watchers {
		for w := range set {
			if end(w) && h.remove(w) {
				h.end(w)
				n++
			}
		}
	}
	if n > 0 {
		h.metrics.watchesEnded.WithLabelValues(reason).Add(float64(n))
	}
	return n
}

// end ends a removed watch: its channel closes, or its connection gets
// the end of an empty answer. Caller holds h.mu.
func (h *hub) end(w *watcher) {
	if w.conn != nil {
		h.queue(nil, w)
		return
	}
	close(w.ch)
}

// close ends every watch and refuses new ones: the server is shutting
// down. Clients get what etcd gives when it stops: an empty answer.
func (h *hub) close() {
	h.mu.Lock()
	h.closed = true
	h.endWatches(func(*watcher) bool { return true }, "shutdown")
	h.mu.Unlock()
	h.flush()
}

// counts reports the registered long polls and streams, and the history.
func (h *hub) counts() (longPolls, streams, events int, floor uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.open[0], h.open[1], h.hist.len(), h.floor
}

// generation changes whenever the copy changes, for saving it.
func (h *hub) generation() uint64 { return h.gen.Load() }
