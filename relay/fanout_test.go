package relay_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/uring"
	"github.com/confsync/confsync/relay"
)

// TestFanoutAnswersEveryWaiter, with the answers batched through io_uring
// and with a write each: hundreds of long polls over HTTP/1.1 and
// HTTP/1.0 get the event, a client gone before it comes stops none of
// them, a client slow to read (an answer larger than its socket takes at
// once) gets the whole of it, kept-alive connections serve the next
// request, and a stopped relay leaves no ring open.
func TestFanoutAnswersEveryWaiter(t *testing.T) {
	srv := etcdtest.New(t, etcdtest.Options{MaxRequestBytes: 8 << 20})
	srv.Set(t, "/site/pool/a", "1")
	for _, mode := range []struct {
		name      string
		noIOURing bool
		status    string
	}{{"io_uring", false, "io_uring"}, {"a write each", true, "write"}} {
		t.Run(mode.name, func(t *testing.T) {
			if !mode.noIOURing {
				r, err := uring.New(1)
				if err != nil {
					t.Skipf("io_uring is not available here: %v", err)
				}
				r.Close()
			}
			rings := openRings(t)
			s := relay.New(relay.Config{NoIOURing: mode.noIOURing})
			if got := s.Status().FanoutWrites; got != mode.status {
				t.Errorf("/status says the fan-out writes by %q, want %q", got, mode.status)
			}
			s.Shutdown(context.Background())
			r := startRelay(t, []string{srv.URL()}, "/site", func(c *relay.RunConfig) { c.NoIOURing = mode.noIOURing })

			// The answer to the slow reader holds the value twice (node and
			// prevNode): more than a socket's send buffer takes (at most
			// 4 MiB by default).
			big := strings.Repeat("v", 3<<20)
			first := srv.Set(t, "/site/big", big)
			slow := dialWait(t, r.Addr, fmt.Sprintf("/v2/keys/site/big?wait=true&waitIndex=%d", first.Index+1), false, 4096)
			var waits []*rawWait
			for i := range 300 {
				waits = append(waits, dialWait(t, r.Addr, "/v2/keys/site/pool?wait=true&recursive=true", i%2 == 1, 0))
			}
			gone := dialWait(t, r.Addr, "/v2/keys/site/pool?wait=true&recursive=true", false, 0)
			waitForWatchers(t, r, 302)
			gone.conn.(*net.TCPConn).SetLinger(0)
			gone.conn.Close() // a reset: writing to it fails

			big = strings.Repeat("w", len(big))
			ev := srv.Set(t, "/site/big", big)
			if body := slow.body(t); !strings.Contains(body, `"value":"`+big+`"`) || !strings.Contains(body, fmt.Sprintf(`"modifiedIndex":%d`, ev.Index)) {
				t.Fatalf("the slow reader got %d bytes, not the whole event", len(body))
			}
			ev = srv.Set(t, "/site/pool/b", "2")
			for i, w := range waits {
				if body := w.body(t); !strings.Contains(body, fmt.Sprintf(`"modifiedIndex":%d`, ev.Index)) {
					t.Fatalf("waiter %d (HTTP/1.0: %v) got %q", i, w.http10, body)
				}
			}
			for _, w := range waits[:10] {
				if w.http10 {
					continue
				}
				io.WriteString(w.conn, "GET /v2/keys/site/pool/b HTTP/1.1\r\nHost: r\r\n\r\n")
				resp, err := http.ReadResponse(w.br, nil)
				if err != nil {
					t.Fatalf("a read after the answered wait, on the same connection: %v", err)
				}
				b, _ := io.ReadAll(resp.Body)
				if !strings.Contains(string(b), `"value":"2"`) {
					t.Fatalf("a read after the answered wait, on the same connection: %d %s", resp.StatusCode, b)
				}
			}
			r.stop()
			if got := openRings(t); got != rings {
				t.Errorf("%d io_uring rings open after the relay stopped, %d before it started", got, rings)
			}
		})
	}
}

// rawWait is a long poll on a connection of its own, its headers read.
type rawWait struct {
	conn   net.Conn
	br     *bufio.Reader
	resp   *http.Response
	http10 bool
}

// dialWait sends a wait and reads its headers; rcvbuf, when not 0, is the
// client's socket receive buffer, set before connecting so that the
// window it offers stays small.
func dialWait(t *testing.T, addr, target string, http10 bool, rcvbuf int) *rawWait {
	t.Helper()
	d := net.Dialer{}
	if rcvbuf > 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) {
				syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			})
		}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(time.Minute))
	req := "GET " + target + " HTTP/1.1\r\nHost: r\r\n\r\n"
	if http10 {
		req = "GET " + target + " HTTP/1.0\r\n\r\n"
	}
	io.WriteString(c, req)
	w := &rawWait{conn: c, br: bufio.NewReader(c), http10: http10}
	if w.resp, err = http.ReadResponse(w.br, &http.Request{Method: http.MethodGet}); err != nil || w.resp.StatusCode != http.StatusOK {
		t.Fatalf("wait %s: %v %v", target, w.resp, err)
	}
	return w
}

// body reads the wait's answer to its end.
func (w *rawWait) body(t *testing.T) string {
	t.Helper()
	b, err := io.ReadAll(w.resp.Body)
	if err != nil {
		t.Fatalf("reading an answer: %v (%d bytes)", err, len(b))
	}
	return string(b)
}

// openRings counts the process's io_uring descriptors.
func openRings(t *testing.T) int {
	t.Helper()
	fds, err := filepath.Glob("/proc/self/fd/*")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if target, _ := os.Readlink(fd); target == "anon_inode:[io_uring]" {
			n++
		}
	}
	return n
}
