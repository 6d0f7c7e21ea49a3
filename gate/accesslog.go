package gate

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"
)

// AccessLogConfig says where the access log goes and how big it may get.
// Each request is one JSON line.
//
// A busy or misbehaving client must not be able to fill a disk with it
// (the site's 2022-11 incident: a batch job reading its configuration once
// per database row from several hosts did). Two bounds apply, each
// optional: a size bound, rotating the file with a fixed number of old
// files kept, and a rate bound, past which lines are dropped, counted and
// summarised. Lines for writes that reached etcd are always written: they
// are the audit trail, and the per-user rate limit bounds them.
type AccessLogConfig struct {
	// File receives the log. Empty: Writer, or no access log at all.
	File string
	// Writer receives the log when File is empty (the command's "-" is
	// stdout). It is never rotated.
	Writer io.Writer
	// MaxBytes rotates File before it would grow past this size: File
	// becomes File.1, File.1 becomes File.2, and so on. Zero never rotates
	// (rotate with logrotate and Server.Reload instead).
	MaxBytes int64
	// Keep is how many rotated files (File.1 ... File.Keep) are kept; the
	// disk holds at most (Keep+1)*MaxBytes of log.
	Keep int
	// Limit bounds the lines written: past it, lines are dropped and
	// counted. The zero value writes every line.
	Limit RateLimit
}

const (
	// accessLogFlush is how long a line may wait in the buffer.
	accessLogFlush = time.Second
	// droppedReport is how often dropped lines are summarised while lines
	// are being dropped.
	droppedReport = 10 * time.Second
	// droppedTopClients is how many clients a summary names.
	droppedTopClients = 3
	// droppedClientsTracked bounds the per-client counts of a summary.
	droppedClientsTracked = 1000
)

// accessLog writes the access log. Lines are buffered and written out
// within a second: one write per request would cost a system call each, a
// tenth of what proxying a GET costs. A file is reopened by reopen (the
// command's SIGHUP), so logrotate can move it away, and rotated by size.
type accessLog struct {
	cfg     AccessLogConfig
	log     *slog.Logger // operational log: rotation failures, drop summaries
	metrics *metrics
	lines   *slog.Logger // JSON lines into this accessLog
	limit   *limiter[struct{}]

	mu        sync.Mutex
	out       *bufio.Writer
	file      *os.File
	size      int64 // of file, including what out holds
	flushing  *time.Timer
	broken    bool      // the file could not be rotated: drop lines until it can
	retryAt   time.Time // when broken, the next attempt
	closed    bool
	dropped   droppedLines
	reporting *time.Timer
}

// droppedLines counts the lines dropped since the last summary.
type droppedLines struct {
	total    int64
	since    time.Time
	byClient map[netip.Addr]int64
	others   int64 // past droppedClientsTracked distinct clients
}

// openAccessLog opens the access log cfg describes; nil when there is none.
func openAccessLog(cfg AccessLogConfig, log *slog.Logger, m *metrics) (*accessLog, error) {
	if cfg.File == "" && cfg.Writer == nil {
		return nil, nil
	}
	if cfg.MaxBytes < 0 || cfg.Keep < 0 {
		return nil, fmt.Errorf("access log %s: size bound and number of files kept must not be negative", cfg.File)
	}
	a := &accessLog{cfg: cfg, log: log, metrics: m, limit: newLimiter[struct{}]()}
	a.lines = slog.New(slog.NewJSONHandler(a, nil))
	if cfg.File == "" {
		a.out = bufio.NewWriterSize(cfg.Writer, 64<<10)
		return a, nil
	}
	if err := a.reopen(); err != nil {
		return nil, err
	}
	return a, nil
}

// request logs one finished request, unless the rate bound drops it.
func (a *accessLog) request(e accessEntry, elapsed time.Duration) {
	if !e.forwardedWrite && !a.admit(e.remote) {
		return
	}
	a.lines.LogAttrs(context.Background(), slog.LevelInfo, "request",
		slog.String("remote", e.remote),
		slog.String("method", e.method),
		slog.String("uri", e.uri),
		slog.String("proto", e.proto),
		slog.Int("status", e.status),
		slog.Int64("bytes", e.bytes),
		slog.Duration("duration", elapsed),
		slog.String("user", e.user),
	)
}

// admit takes a token for one line, or counts the line as dropped.
func (a *accessLog) admit(remote string) bool {
	if a.limit.take(struct{}{}, a.cfg.Limit, time.Now(), true).ok {
		return true
	}
	a.metrics.accessLogDropped.Inc()
	_, client, _ := clientKey(remote)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.countDroppedLocked(client)
	return false
}

func (a *accessLog) countDroppedLocked(client netip.Addr) {
	d := &a.dropped
	if d.total == 0 {
		d.since = time.Now()
		if a.reporting == nil && !a.closed {
			a.reporting = time.AfterFunc(droppedReport, a.reportDropped)
		}
	}
	d.total++
	if _, ok := d.byClient[client]; ok || len(d.byClient) < droppedClientsTracked {
		if d.byClient == nil {
			d.byClient = make(map[netip.Addr]int64)
		}
		d.byClient[client]++
	} else {
		d.others++
	}
}

// reportDropped summarises the lines dropped since the last summary, in
// the operational log and in the access log itself (so a reader of the
// access log knows it has a gap), and keeps reporting while lines are
// dropped.
func (a *accessLog) reportDropped() {
	a.mu.Lock()
	d := a.dropped
	a.dropped = droppedLines{}
	a.reporting = nil
	closed := a.closed
	a.mu.Unlock()
	if d.total == 0 || closed {
		return
	}
	attrs := []slog.Attr{
		slog.Int64("dropped", d.total),
		slog.Duration("over", time.Since(d.since).Round(time.Second)),
		slog.String("limit", a.cfg.Limit.String()+" lines"),
		slog.String("top_clients", topClients(d)),
	}
	a.log.LogAttrs(context.Background(), slog.LevelWarn, "access log lines dropped past the rate bound", attrs...)
	a.lines.LogAttrs(context.Background(), slog.LevelWarn, "access log lines dropped", attrs...)
}

// topClients names the clients with the most dropped lines.
func topClients(d droppedLines) string {
	clients := slices.SortedFunc(maps.Keys(d.byClient), func(x, y netip.Addr) int {
		return cmp.Or(cmp.Compare(d.byClient[y], d.byClient[x]), x.Compare(y))
	})
	var b []byte
	for i, c := range clients[:min(len(clients), droppedTopClients)] {
		if i > 0 {
			b = append(b, ", "...)
		}
		if c.IsValid() {
			b = c.AppendTo(b)
		} else {
			b = append(b, "unknown"...)
		}
		b = fmt.Appendf(b, " (%d)", d.byClient[c])
	}
	if rest := len(clients) - droppedTopClients; rest > 0 || d.others > 0 {
		b = fmt.Appendf(b, " and more")
	}
	return string(b)
}

// Write takes one line from the JSON handler (which writes each record
// whole, in one call).
func (a *accessLog) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return 0, os.ErrClosed
	}
	if a.file != nil && a.cfg.MaxBytes > 0 && a.size > 0 && a.size+int64(len(p)) > a.cfg.MaxBytes &&
		(!a.broken || time.Now().After(a.retryAt)) {
		a.rotateLocked()
	}
	if a.broken {
		a.metrics.accessLogDropped.Inc()
		return len(p), nil
	}
	n, err := a.out.Write(p)
	a.size += int64(n)
	if err != nil {
		a.metrics.accessLogErrors.Inc()
	}
	if a.flushing == nil {
		a.flushing = time.AfterFunc(accessLogFlush, a.flush)
	}
	return n, err
}

func (a *accessLog) flush() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.flushing = nil
	if !a.closed {
		a.flushLocked()
	}
}

func (a *accessLog) flushLocked() {
	if err := a.out.Flush(); err != nil {
		a.metrics.accessLogErrors.Inc()
		a.log.Error("writing the access log", "file", a.cfg.File, "err", err)
		a.out.Reset(a.writerLocked()) // drop what could not be written rather than retry forever
	}
}

func (a *accessLog) writerLocked() io.Writer {
	if a.file != nil {
		return a.file
	}
	return a.cfg.Writer
}

// rotateLocked moves the file aside (File.1, shifting older ones up and
// dropping the oldest) and starts a new one. If that fails, lines are
// dropped until it succeeds: the bound on disk use is the point.
func (a *accessLog) rotateLocked() {
	a.flushLocked()
	name := a.cfg.File
	var err error
	if a.cfg.Keep == 0 {
		err = os.Remove(name)
	} else {
		os.Remove(fmt.Sprintf("%s.%d", name, a.cfg.Keep))
		for i := a.cfg.Keep - 1; i >= 1; i-- {
			if rerr := os.Rename(fmt.Sprintf("%s.%d", name, i), fmt.Sprintf("%s.%d", name, i+1)); rerr != nil && !os.IsNotExist(rerr) {
				err = rerr
			}
		}
		if err == nil {
			err = os.Rename(name, name+".1")
		}
	}
	if os.IsNotExist(err) {
		err = nil // moved away already: start a new file
	}
	if err == nil {
		err = a.openLocked()
	}
	if err != nil {
		if !a.broken {
			a.log.Error("cannot rotate the access log; dropping its lines until it can be", "file", name, "err", err)
		}
		a.metrics.accessLogErrors.Inc()
		a.broken = true
		a.retryAt = time.Now().Add(time.Second)
		return
	}
	if a.broken {
		a.log.Info("access log rotated again; writing resumes", "file", name)
	}
	a.broken = false
	a.metrics.accessLogRotations.Inc()
}

// reopen (re)opens the file, writing out what the old one still buffered:
// after logrotate moved it away, or to retry after a failure.
func (a *accessLog) reopen() error {
	if a.cfg.File == "" {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.out != nil {
		a.flushLocked()
	}
	if err := a.openLocked(); err != nil {
		return err
	}
	a.broken = false
	return nil
}

func (a *accessLog) openLocked() error {
	f, err := os.OpenFile(a.cfg.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("access log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("access log: %w", err)
	}
	if a.file != nil {
		a.file.Close()
	}
	a.file, a.size = f, st.Size()
	if a.out == nil {
		a.out = bufio.NewWriterSize(f, 64<<10)
	} else {
		a.out.Reset(f)
	}
	return nil
}

// Close reports what was dropped, writes out the buffer and closes the file.
func (a *accessLog) Close() error {
	a.mu.Lock()
	pending := a.reporting
	a.mu.Unlock()
	if pending != nil && pending.Stop() {
		a.reportDropped()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	if a.flushing != nil {
		a.flushing.Stop()
	}
	err := a.out.Flush()
	if a.file != nil {
		if cerr := a.file.Close(); err == nil {
			err = cerr
		}
	}
	return err
}
