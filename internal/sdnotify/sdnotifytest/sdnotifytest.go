// Package sdnotifytest plays systemd's side of sd_notify(3) in tests: a real
// unixgram socket named by NOTIFY_SOCKET, whose datagrams the test reads in
// order, so that a test can assert what a daemon told systemd and when
// (READY=1 only after the first render, say).
package sdnotifytest

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Socket is a listening notify socket. Messages holds every datagram
// received, in order, as the daemon sent it (assignments separated by
// newlines).
type Socket struct {
	path     string
	conn     *net.UnixConn
	messages chan string
}

// Listen opens a notify socket for the rest of the test and points
// NOTIFY_SOCKET at it (so the test must not be parallel). Pass Path() in
// the environment of a child process to watch a real binary.
func Listen(tb testing.TB) *Socket {
	tb.Helper()
	// Socket paths are limited to 108 bytes; test temp dirs can be longer.
	dir, err := os.MkdirTemp("", "sdnotify")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		tb.Fatalf("notify socket: %v", err)
	}
	s := &Socket{path: path, conn: conn, messages: make(chan string, 1024)}
	done := make(chan struct{})
	go s.read(done)
	tb.Cleanup(func() { conn.Close(); <-done })
	tb.Setenv("NOTIFY_SOCKET", path)
	return s
}

func (s *Socket) read(done chan<- struct{}) {
	defer close(done)
	defer close(s.messages)
	buf := make([]byte, 64<<10)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			return
		}
		select {
		case s.messages <- string(buf[:n]):
		default: // a test that stopped reading does not block the daemon
		}
	}
}

// Path is the socket's path, for NOTIFY_SOCKET.
func (s *Socket) Path() string { return s.path }

// EnableWatchdog sets WATCHDOG_USEC (and WATCHDOG_PID to this process),
// as systemd does for a unit with WatchdogSec=.
func EnableWatchdog(tb testing.TB, interval time.Duration) {
	tb.Helper()
	tb.Setenv("WATCHDOG_USEC", strconv.FormatInt(interval.Microseconds(), 10))
	tb.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
}

// Next returns the next datagram, or false when none arrives within
// timeout.
func (s *Socket) Next(timeout time.Duration) (string, bool) {
	select {
	case m, ok := <-s.messages:
		return m, ok
	case <-time.After(timeout):
		return "", false
	}
}

// WaitFor reads datagrams until one holds the assignment want (for example
// "READY=1") and returns every datagram read, that one last. It fails the
// test after a minute: tests wait on events, and a loaded machine is slow.
func (s *Socket) WaitFor(tb testing.TB, want string) []string {
	tb.Helper()
	var seen []string
	deadline := time.After(time.Minute)
	for {
		select {
		case m, ok := <-s.messages:
			if !ok {
				tb.Fatalf("notify socket closed before %q; received %q", want, seen)
			}
			seen = append(seen, m)
			if Has(m, want) {
				return seen
			}
		case <-deadline:
			tb.Fatalf("no %q on the notify socket within a minute; received %q", want, seen)
		}
	}
}

// Has reports whether the datagram m holds the assignment want (a whole
// line, "READY=1"), or, when want ends in "=", an assignment of that
// variable ("STATUS=").
func Has(m, want string) bool {
	for _, line := range strings.Split(m, "\n") {
		if line == want || strings.HasSuffix(want, "=") && strings.HasPrefix(line, want) {
			return true
		}
	}
	return false
}
