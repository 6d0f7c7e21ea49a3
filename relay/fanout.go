package relay

import (
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/confsync/confsync/internal/uring"
)

// fanoutWorkers is how many goroutines write one event to connections:
// more than the processors, so that a worker whose thread the kernel
// sets aside (or a client slow to take its answer) leaves the others
// going. Measured with 10,000 watchers on 2 cores, 8 workers deliver the
// last answer about a fifth sooner than 2 or 4.
func fanoutWorkers() int { return max(8, 4*runtime.GOMAXPROCS(0)) }

// batchSize is the most answers a worker sends with one system call.
const batchSize = 128

// fanout writes e (nil: the end of an empty answer) to the long polls ws
// wait on, from a few workers at once, each sending the answers of up to
// batchSize connections at a time (see answerBatch): a client slow to
// take its answer holds up one worker, not the others.
//
// While it runs, connections that send a new request wait for it to end
// (see waitFanout and awaitAnswer): clients answered first come straight
// back, and serving them would take the CPU the answers to the others
// need. The last client gets its answer sooner; none gets it later. Once
// done, it wakes the connections it answered.
func (s *Server) fanout(e *entry, ws []*watcher) {
	workers := min(len(ws)/64+1, fanoutWorkers())
	defer func() {
		for _, w := range ws {
			w.conn.wakeUp()
		}
	}()
	if workers == 1 {
		b := s.batches.get()
		defer s.batches.put(b)
		b.deliver(ws, e)
		return
	}
	done := make(chan struct{})
	s.fanning.Store(&done)
	defer func() {
		s.fanning.Store(nil)
		close(done)
	}()
	size := min(batchSize, (len(ws)+workers-1)/workers)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := s.batches.get()
			defer s.batches.put(b)
			for {
				i := int(next.Add(int64(size)) - int64(size))
				if i >= len(ws) {
					return
				}
				b.deliver(ws[i:min(i+size, len(ws))], e)
			}
		}()
	}
	wg.Wait()
}

// waitFanout returns when no fan-out is running.
func (s *Server) waitFanout() {
	if done := s.fanning.Load(); done != nil {
		<-*done
	}
}

// answerBatch writes one event to up to batchSize waiting connections
// with one system call, through an io_uring, where a write(2) per answer
// pays a system call's entry and exit each time. With 10,000 long polls
// the relay's last answer went out about a quarter sooner
// (BENCHMARKS.md, relay: runs taking turns with -no-io-uring); the
// in-process BenchmarkSend and BenchmarkWrite of internal/uring are
// closer, and noisier. Without a ring (io_uring missing or refused, or
// Config.NoIOURing) each answer gets its own write, as does a TLS
// connection's.
//
// A connection is claimed under its wmu, which stays held until its
// answer is written, and its descriptor is held open (RawConn.Control)
// while the ring uses it, so that a connection closed meanwhile cannot
// have its number reused for another before the ring is done with it.
type answerBatch struct {
	ring   *uring.Ring // nil: each answer goes by writeNow
	logger *slog.Logger

	// The batch being sent: claimed connections, their answers.
	e      *entry
	conns  []*clientConn
	http10 []bool
	msgs   []uring.Message
	late   []*watcher // connections left to deliver one by one
	slow   []int      // answers the socket did not take whole
	next   int        // the connection holdOne holds
	holdFn func(fd uintptr)
}

// deliver answers the long polls ws, those that still wait; the ring
// takes them batchSize at a time, however many they are.
func (b *answerBatch) deliver(ws []*watcher, e *entry) {
	b.e = e
	b.claim(ws)
	if len(b.conns) > 0 {
		b.holdFrom(0)
		b.finish()
	}
	for _, w := range b.late {
		w.conn.deliver(w, e)
	}
	b.reset()
}

// reset empties the batch for the next, keeping its slices' room but
// nothing they pointed to.
func (b *answerBatch) reset() {
	clear(b.conns)
	clear(b.msgs)
	clear(b.late)
	b.e = nil
	b.conns, b.http10, b.msgs, b.late, b.slow = b.conns[:0], b.http10[:0], b.msgs[:0], b.late[:0], b.slow[:0]
}

// claim takes the answers of the connections still waiting. One whose
// wmu is busy (its own goroutine, one closing it, or the same connection
// twice) is left to deliver afterwards: a worker holding a batch's locks never
// waits for another.
func (b *answerBatch) claim(ws []*watcher) {
	for _, w := range ws {
		c := w.conn
		if b.ring == nil || c.raw == nil || !c.wmu.TryLock() {
			b.late = append(b.late, w)
			continue
		}
		out, http10, ok := c.claim(w, b.e)
		if !ok {
			c.wmu.Unlock()
			continue
		}
		b.conns = append(b.conns, c)
		b.http10 = append(b.http10, http10)
		b.msgs = append(b.msgs, uring.Message{FD: -1, Buf: out})
	}
}

// holdFrom holds the descriptors of conns[i:] open, each inside the one
// before it (Control keeps a descriptor open while its function runs),
// and sends the batch from the innermost. A connection already closed
// keeps FD -1.
func (b *answerBatch) holdFrom(i int) {
	for ; i < len(b.conns); i++ {
		b.next = i
		if b.conns[i].raw.Control(b.holdFn) == nil {
			return // holdOne went on with the rest
		}
	}
	if err := b.ring.Send(b.msgs); err != nil {
		// What the ring did not send is marked EAGAIN: finish writes it.
		b.logger.Warn("an io_uring of the fan-out failed and is closed: its worker writes each answer with a system call of its own", "err", err)
		b.ring.Close()
		b.ring = nil
	}
}

func (b *answerBatch) holdOne(fd uintptr) {
	i := b.next
	b.msgs[i].FD = int(fd)
	b.holdFrom(i + 1)
}

// finish ends each claimed answer: written whole, failed, or, for a
// client slow to read, written to the end through the poller afterwards,
// once the others are released.
func (b *answerBatch) finish() {
	for i, c := range b.conns {
		m := &b.msgs[i]
		if m.FD < 0 {
			c.answered(b.e, b.http10[i], net.ErrClosed)
			continue
		}
		var werr error
		if m.Err != 0 {
			werr = m.Err
		}
		rest, err := unwritten(m.Buf, m.N, werr)
		if err == nil && len(rest) > 0 {
			m.Buf = rest
			b.slow = append(b.slow, i)
			continue
		}
		c.answered(b.e, b.http10[i], err)
	}
	for _, i := range b.slow {
		c := b.conns[i]
		c.answered(b.e, b.http10[i], c.writeWithin(b.msgs[i].Buf, fanoutWriteTimeout))
	}
}

// batchPool keeps the fan-out's batches, and their rings, between events.
type batchPool struct {
	mu     sync.Mutex
	free   []*answerBatch
	noRing bool // io_uring is off, missing or refused
	closed bool
	logger *slog.Logger
}

// newBatchPool makes the first batch at once, so that a relay where
// io_uring is refused says so when it starts.
func newBatchPool(noRing bool, logger *slog.Logger) *batchPool {
	p := &batchPool{noRing: noRing, logger: logger}
	p.put(p.get())
	return p
}

// get lends a batch, with a ring unless there can be none.
func (p *batchPool) get() *answerBatch {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b
	}
	b := &answerBatch{logger: p.logger}
	b.holdFn = b.holdOne
	if p.noRing || p.closed {
		return b
	}
	r, err := uring.New(batchSize)
	if err != nil {
		p.noRing = true
		p.logger.Info("io_uring is not available: the fan-out writes each answer with a system call of its own", "err", err)
		return b
	}
	b.ring = r
	return b
}

// put takes a batch back; after close, its ring is closed.
func (p *batchPool) put(b *answerBatch) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		if b.ring != nil {
			b.ring.Close()
		}
		return
	}
	p.free = append(p.free, b)
}

// mode is Status.FanoutWrites.
func (p *batchPool) mode() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.noRing {
		return "write"
	}
	return "io_uring"
}

// close releases the rings of the batches kept and of those lent out as
// they come back.
func (p *batchPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, b := range p.free {
		if b.ring != nil {
			b.ring.Close()
		}
	}
	p.free = nil
}
