package relay

import (
	"encoding/json"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/confsync/confsync/backends/etcd"
)

// entry is one event under the prefix, encoded once for every watcher.
type entry struct {
	index uint64
	key   string // cleaned
	// dirDelete marks the delete or expiry of a directory, which reaches
	// watchers of every key below it too.
	dirDelete bool
	body      []byte    // the event as etcd writes it, newline included
	chunk     []byte    // body as one chunk of a chunked answer
	lastChunk []byte    // chunk, then the end of the answer
	received  time.Time // when the relay got it, for fan-out latency
}

func newEntry(ev *etcd.Event, received time.Time) *entry {
	body, err := json.Marshal(ev)
	if err != nil {
		// An Event holds only strings, numbers and times: it always encodes.
		panic("relay: encode event: " + err.Error())
	}
	e := &entry{
		index:     ev.Index(),
		key:       ev.Key(),
		dirDelete: (ev.Action == "delete" || ev.Action == "expire") && ev.PrevNode != nil && ev.PrevNode.Dir,
		body:      append(body, '\n'),
		received:  received,
	}
	chunk := strconv.AppendInt(make([]byte, 0, len(e.body)+16), int64(len(e.body)), 16)
	chunk = append(append(append(chunk, "\r\n"...), e.body...), "\r\n"...)
	e.chunk = chunk
	e.lastChunk = append(chunk[:len(chunk):len(chunk)], "0\r\n\r\n"...)
	return e
}

// matches reports whether a watch of key would be answered with e, by the
// rules etcd applies to its event history: the key itself, a key below it
// for a recursive watch, or the removal of a directory above it. (etcd
// compares that last case as strings, so deleting /a reaches a watch of
// /ab; the relay compares whole path segments.)
func (e *entry) matches(key string, recursive bool) bool {
	return e.key == key || recursive && below(e.key, key) || e.dirDelete && below(key, e.key)
}

// below reports whether key lies strictly below dir, on whole segments.
func below(key, dir string) bool {
	if dir == "/" {
		return key != "/"
	}
	return len(key) > len(dir) && key[len(dir)] == '/' && strings.HasPrefix(key, dir)
}

// history is a ring of the last events, oldest first.
type history struct {
	ring  []*entry
	start int // position of the oldest entry
	n     int
}

func newHistory(capacity int) *history {
	return &history{ring: make([]*entry, capacity)}
}

func (h *history) len() int { return h.n }

func (h *history) at(i int) *entry { return h.ring[(h.start+i)%len(h.ring)] }

// add appends e and returns the entry it pushed out, if any.
func (h *history) add(e *entry) (dropped *entry) {
	if h.n == len(h.ring) {
		dropped = h.ring[h.start]
		h.ring[h.start] = e
		h.start = (h.start + 1) % len(h.ring)
		return dropped
	}
	h.ring[(h.start+h.n)%len(h.ring)] = e
	h.n++
	return nil
}

func (h *history) clear() {
	clear(h.ring)
	h.start, h.n = 0, 0
}

// scan returns the events from index on that a watch of key would be
// answered with: the first one only, unless all.
func (h *history) scan(key string, recursive bool, index uint64, all bool) []*entry {
	first := sort.Search(h.n, func(i int) bool { return h.at(i).index >= index })
	var out []*entry
	for i := first; i < h.n; i++ {
		if e := h.at(i); e.matches(key, recursive) {
			out = append(out, e)
			if !all {
				break
			}
		}
	}
	return out
}
