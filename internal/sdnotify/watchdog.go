package sdnotify

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Watchdog pings systemd's watchdog (WatchdogSec=) only while the loop it
// watches keeps turning. A timer that pinged unconditionally would prove
// only that the process exists; this one proves that the loop that could
// hang (the agent's watch-and-render loop, the mirror's apply loop) still
// makes progress. When the loop has not called Alive for half the watchdog
// interval, pings stop, the status line says which loop is stuck, and
// systemd kills the daemon (WatchdogSignal=, SIGABRT by default, which
// makes a Go program print every goroutine's stack) and restarts it.
//
// A nil *Watchdog does nothing: that is what Notifier.Watchdog returns
// when systemd does not watch the daemon.
type Watchdog struct {
	n        *Notifier
	loop     string
	interval time.Duration
	log      *slog.Logger
	// alive is the time of the last Alive call, in Unix nanoseconds.
	alive atomic.Int64
}

// Watchdog returns a watchdog for the named loop, or nil when systemd does
// not watch this process (no WatchdogSec=, or WATCHDOG_PID names another
// process). log receives the stall and recovery messages; nil discards them.
// The loop is counted alive from now.
func (n *Notifier) Watchdog(loop string, log *slog.Logger) (*Watchdog, error) {
	if !n.Enabled() {
		return nil, nil
	}
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return nil, fmt.Errorf("systemd watchdog: %w", err)
	}
	if interval <= 0 {
		return nil, nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Watchdog{n: n, loop: loop, interval: interval, log: log}
	w.Alive()
	return w, nil
}

// Interval is systemd's WatchdogSec=. The watched loop must call Alive at
// least every Interval/2, including while it waits for etcd or retries.
func (w *Watchdog) Interval() time.Duration {
	if w == nil {
		return 0
	}
	return w.interval
}

// Alive records that the watched loop made progress. It is cheap (one
// atomic store); call it on every turn of the loop.
func (w *Watchdog) Alive() {
	if w != nil {
		w.alive.Store(time.Now().UnixNano())
	}
}

// stalledAfter is how long the loop may go without calling Alive before
// pings stop: half the interval, so that a ping sent just before the loop
// got stuck still leaves systemd's timer to expire within one interval of
// the stall being noticed.
func (w *Watchdog) stalledAfter() time.Duration { return w.interval / 2 }

// Run pings systemd every quarter interval while the loop is alive, until
// ctx is done. Run it in its own goroutine next to the loop it watches.
func (w *Watchdog) Run(ctx context.Context) {
	if w == nil {
		return
	}
	tick := time.NewTicker(w.interval / 4)
	defer tick.Stop()
	stalled := false
	for {
		idle := time.Since(time.Unix(0, w.alive.Load()))
		switch {
		case idle < w.stalledAfter():
			if stalled {
				stalled = false
				w.log.Info("watched loop is making progress again; watchdog pings resume", "loop", w.loop)
			}
			if err := w.n.ping(); err != nil {
				w.log.Warn("cannot ping the systemd watchdog", "err", err)
			}
		case !stalled:
			stalled = true
			w.log.Error("watched loop made no progress; watchdog pings stop and systemd will restart the daemon",
				"loop", w.loop, "idle", idle.Round(time.Millisecond), "watchdog", w.interval)
			w.n.Statusf("stuck: %s made no progress for %s; the watchdog (%s) will restart the daemon",
				w.loop, idle.Round(time.Second), w.interval)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
