package relay

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/testutil"
)

// loopback is an accepted connection as the front end wraps it, and its
// client's end.
func loopback(tb testing.TB) (*clientConn, net.Conn) {
	nc, client := testutil.TCPPair(tb)
	return newClientConn(nil, nc), client
}

// TestReadableIgnoresTheReadDeadline: the sweep wakes a parked wait only
// for something to read, however old the wait is.
func TestReadableIgnoresTheReadDeadline(t *testing.T) {
	c, client := loopback(t)
	c.nc.SetReadDeadline(time.Now().Add(-time.Second)) // the header timeout, long past
	if c.readable() {
		t.Fatal("a quiet connection whose read deadline has passed is readable")
	}
	io.WriteString(client, "GET")
	testutil.Eventually(t, "a request sent out of turn to be readable", c.readable)
	c2, client2 := loopback(t)
	client2.Close()
	testutil.Eventually(t, "a client that went away to be readable", c2.readable)
}

// BenchmarkWriteNow is the fan-out's write of one answer to a connection
// whose client reads it (loopback: the kernel's side of the client's
// receive is in the figure too).
func BenchmarkWriteNow(b *testing.B) {
	c, client := loopback(b)
	go io.Copy(io.Discard, client)
	answer := make([]byte, 200)
	b.ReportAllocs()
	for b.Loop() {
		c.wmu.Lock()
		if err := c.writeNow(answer, fanoutWriteTimeout); err != nil {
			b.Fatal(err)
		}
		c.wmu.Unlock()
	}
}
