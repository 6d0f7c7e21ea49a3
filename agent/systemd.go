package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/confsync/confsync/internal/sdnotify"
)

// superviseSystemd tells systemd (a no-op outside it) that the agent is
// ready once every resource has been rendered, keeps `systemctl status`
// current, and feeds the watchdog from the render queue: a probe goes
// through the same lock and queue as every render, so pings stop when the
// agent's lock or all its workers are stuck, not merely when the process
// is gone.
func (a *Agent) superviseSystemd(ctx context.Context) {
	n := a.cfg.Notifier
	if !n.Enabled() {
		return
	}
	wd, err := n.Watchdog("the agent's render queue", a.logger)
	if err != nil {
		a.logger.Error("systemd watchdog not used", "err", err)
	}
	if wd != nil {
		go wd.Run(ctx)
		go a.probeQueue(ctx, wd)
	}
	status := time.NewTicker(5 * time.Second)
	defer status.Stop()
	ready := a.readyNow
	for {
		select {
		case <-ctx.Done():
			n.Stopping("stopping: letting running commands finish")
			return
		case <-ready:
			ready = nil
			n.Ready(a.statusLine())
		case <-status.C:
			n.Status(a.statusLine())
		}
	}
}

// probeQueue runs a probe through the render queue every quarter of the
// watchdog interval and reports the agent alive when a worker takes it.
func (a *Agent) probeQueue(ctx context.Context, wd *sdnotify.Watchdog) {
	t := time.NewTicker(wd.Interval() / 4)
	defer t.Stop()
	for {
		probe := &group{key: "watchdog probe", probe: make(chan struct{})}
		a.mu.Lock()
		a.enqueue(probe)
		a.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-probe.probe:
			wd.Alive()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// statusLine is the agent's state in one line, for `systemctl status`.
func (a *Agent) statusLine() string {
	st := a.Status()
	rendered, failing := 0, 0
	for _, r := range st.Resources {
		if r.Applied {
			rendered++
		}
		if !r.Healthy && r.Applied {
			failing++
		}
	}
	line := fmt.Sprintf("%d/%d resources rendered", rendered, len(st.Resources))
	if failing > 0 {
		line += fmt.Sprintf(", %d failing", failing)
	}
	if n := len(st.FailedFiles); n > 0 {
		line += fmt.Sprintf(", %d resource files do not load", n)
	}
	w := st.Watch
	switch {
	case w.Connected && !w.FromCache:
		line += fmt.Sprintf("; %s of %s at index %d", w.Mode, w.Prefix, w.Index)
	case w.FromCache:
		line += fmt.Sprintf("; etcd unreachable, serving the cache, %s old", time.Duration(w.AgeSeconds*float64(time.Second)).Round(time.Second))
	case w.AgeSeconds >= 0:
		line += fmt.Sprintf("; etcd unreachable, data %s old", time.Duration(w.AgeSeconds*float64(time.Second)).Round(time.Second))
	default:
		line += "; waiting for etcd (no data yet)"
	}
	return line
}

// noteReady signals readiness the first time every resource has been
// applied. Caller holds a.mu.
func (a *Agent) noteReady() {
	if a.announcedReady {
		return
	}
	for _, st := range a.resources {
		if !st.applied {
			return
		}
	}
	a.announcedReady = true
	close(a.readyNow)
}
