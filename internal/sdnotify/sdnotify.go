// Package sdnotify tells systemd how a daemon is doing, through the
// sd_notify(3) protocol that go-systemd's daemon package speaks: READY=1 once
// the daemon is useful (not merely started), STATUS= lines for
// `systemctl status`, STOPPING=1 and RELOADING=1, and watchdog pings that
// come only from the loop that could hang.
//
// Outside systemd (no NOTIFY_SOCKET) every call does nothing, so daemons use
// it unconditionally. systemd accepts messages from the main process only
// (NotifyAccess=main, the default), so child processes that inherit
// NOTIFY_SOCKET (check and reload commands) cannot speak for the daemon.
package sdnotify

import (
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends a daemon's state to systemd. A nil *Notifier does nothing,
// so a Config may leave it unset.
type Notifier struct {
	mu         sync.Mutex
	lastStatus string
}

// New returns a Notifier for the service manager named by NOTIFY_SOCKET.
func New() *Notifier { return &Notifier{} }

// Enabled reports whether a service manager listens: NOTIFY_SOCKET is set.
func (n *Notifier) Enabled() bool {
	return n != nil && os.Getenv("NOTIFY_SOCKET") != ""
}

// Ready says the daemon is useful now (for the agent: every resource
// rendered once; for the mirror: replicating; for gate and relay: listening
// with the upstream checked), with the status line to show. systemd holds
// back units ordered after this one, and `systemctl start`, until then. After
// a reload, Ready ends the RELOADING state.
func (n *Notifier) Ready(status string) error {
	return n.send(daemon.SdNotifyReady, status)
}

// Status sets the line `systemctl status` shows under the unit, for example
// "rendering 12/15 resources, etcd unreachable, serving from cache". A line
// equal to the previous one is not sent again, so loops may call Status on
// every turn.
func (n *Notifier) Status(status string) error {
	return n.send("", status)
}

// Reloading says the daemon is re-reading its configuration; Ready ends it.
func (n *Notifier) Reloading(status string) error {
	return n.send(daemon.SdNotifyReloading, status)
}

// Stopping says the daemon is shutting down, so that systemd shows
// "deactivating" rather than a daemon that stopped answering.
func (n *Notifier) Stopping(status string) error {
	return n.send(daemon.SdNotifyStopping, status)
}

// Statusf is Status with a format.
func (n *Notifier) Statusf(format string, args ...any) error {
	return n.Status(fmt.Sprintf(format, args...))
}

// send sends state (may be empty) and, when it differs from the last one
// sent or state is not empty, the status line, in one datagram.
func (n *Notifier) send(state, status string) error {
	if !n.Enabled() {
		return nil
	}
	// A newline would end the STATUS= assignment and start another.
	status = strings.ReplaceAll(strings.TrimSpace(status), "\n", " ")
	n.mu.Lock()
	defer n.mu.Unlock()
	var lines []string
	if state != "" {
		lines = append(lines, state)
	}
	if status != "" && (status != n.lastStatus || state != "") {
		lines = append(lines, "STATUS="+status)
	}
	if len(lines) == 0 {
		return nil
	}
	if _, err := daemon.SdNotify(false, strings.Join(lines, "\n")); err != nil {
		return fmt.Errorf("sd_notify %s: %w", strings.Join(lines, " "), err)
	}
	if status != "" {
		n.lastStatus = status
	}
	return nil
}

// ping tells systemd's watchdog the daemon is alive.
func (n *Notifier) ping() error {
	if !n.Enabled() {
		return nil
	}
	if _, err := daemon.SdNotify(false, daemon.SdNotifyWatchdog); err != nil {
		return fmt.Errorf("sd_notify WATCHDOG=1: %w", err)
	}
	return nil
}
