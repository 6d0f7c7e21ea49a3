//go:build linux

package uring_test

import (
	"bytes"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/confsync/confsync/internal/testutil"
	"github.com/confsync/confsync/internal/uring"
)

// pair is a loopback TCP connection: the sending side's descriptor (open
// until the test ends) and the receiving side.
func pair(tb testing.TB) (int, net.Conn) {
	tb.Helper()
	c, peer := testutil.TCPPair(tb)
	raw, err := c.SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	var fd int
	raw.Control(func(f uintptr) { fd = int(f) })
	return fd, peer
}

func newRing(t *testing.T, entries int) *uring.Ring {
	t.Helper()
	r, err := uring.New(entries)
	if err != nil {
		t.Skipf("io_uring is not available here: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// TestSendReachesEverySocket: more messages than the ring's entries, some
// to skip, each socket receiving exactly its own bytes.
func TestSendReachesEverySocket(t *testing.T) {
	r := newRing(t, 4)
	var msgs []uring.Message
	var peers []net.Conn
	for i := range 11 {
		fd, peer := pair(t)
		msgs = append(msgs, uring.Message{FD: fd, Buf: bytes.Repeat([]byte{'a' + byte(i)}, 100+i)})
		peers = append(peers, peer)
	}
	msgs = append(msgs, uring.Message{FD: -1, Buf: []byte("skipped")}, uring.Message{FD: msgs[0].FD})
	if err := r.Send(msgs); err != nil {
		t.Fatal(err)
	}
	for i, peer := range peers {
		m := msgs[i]
		if m.Err != 0 || m.N != len(m.Buf) {
			t.Fatalf("message %d: %d bytes sent of %d, %v", i, m.N, len(m.Buf), m.Err)
		}
		got := make([]byte, len(m.Buf))
		if _, err := io.ReadFull(peer, got); err != nil || !bytes.Equal(got, m.Buf) {
			t.Fatalf("socket %d received %q (%v), want %q", i, got, err, m.Buf)
		}
	}
	for _, m := range msgs[len(peers):] {
		if m.N != 0 || m.Err != 0 {
			t.Errorf("a skipped message: %+v", m)
		}
	}
}

// TestSendNeverWaits: a socket whose peer does not read takes what fits,
// then answers EAGAIN at once; the ring goes on serving the others.
func TestSendNeverWaits(t *testing.T) {
	r := newRing(t, 8)
	fd, _ := pair(t)
	okFD, okPeer := pair(t)
	chunk := make([]byte, 1<<20)
	var sent int
	for i := 0; ; i++ {
		msgs := []uring.Message{{FD: fd, Buf: chunk}, {FD: okFD, Buf: []byte("x")}}
		if err := r.Send(msgs); err != nil {
			t.Fatal(err)
		}
		if msgs[1].N != 1 {
			t.Fatalf("the reading socket: %+v", msgs[1])
		}
		if one := make([]byte, 1); func() bool { _, err := io.ReadFull(okPeer, one); return err != nil }() {
			t.Fatal("the reading socket's peer got nothing")
		}
		if msgs[0].Err == syscall.EAGAIN {
			break
		}
		if msgs[0].Err != 0 || msgs[0].N == 0 {
			t.Fatalf("a full socket: %+v", msgs[0])
		}
		sent += msgs[0].N
		if i > 1000 {
			t.Fatalf("%d bytes sent to a peer that reads nothing, and still no EAGAIN", sent)
		}
	}
	if sent == 0 {
		t.Error("EAGAIN before the socket's buffer took anything")
	}
}

// TestSendReportsAClosedPeer: a send to a connection whose peer is gone
// gets its error (no SIGPIPE), and the others are sent.
func TestSendReportsAClosedPeer(t *testing.T) {
	r := newRing(t, 8)
	goneFD, gone := pair(t)
	okFD, okPeer := pair(t)
	gone.(*net.TCPConn).SetLinger(0)
	gone.Close() // a reset: the next send fails
	var errs []syscall.Errno
	for range 100 {
		msgs := []uring.Message{{FD: goneFD, Buf: []byte("to nobody")}, {FD: okFD, Buf: []byte("y")}}
		if err := r.Send(msgs); err != nil {
			t.Fatal(err)
		}
		if msgs[1].N != 1 {
			t.Fatalf("the other socket: %+v", msgs[1])
		}
		io.ReadFull(okPeer, make([]byte, 1))
		if msgs[0].Err != 0 {
			errs = append(errs, msgs[0].Err)
			break
		}
	}
	if len(errs) == 0 || (errs[0] != syscall.EPIPE && errs[0] != syscall.ECONNRESET) {
		t.Errorf("sends to a reset connection: errors %v, want EPIPE or ECONNRESET", errs)
	}
}

// TestSendReportsABadDescriptor: a descriptor that is not a socket gets
// its own error; the rest of the batch is still sent.
func TestSendReportsABadDescriptor(t *testing.T) {
	r := newRing(t, 8)
	okFD, okPeer := pair(t)
	p := make([]int, 2)
	if err := syscall.Pipe(p); err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(p[0])
	defer syscall.Close(p[1])
	msgs := []uring.Message{{FD: p[1], Buf: []byte("not a socket")}, {FD: okFD, Buf: []byte("z")}}
	if err := r.Send(msgs); err != nil {
		t.Fatalf("Send: %v (a kernel without SUBMIT_ALL fails the ring here)", err)
	}
	if msgs[0].Err == 0 {
		t.Errorf("a send to a pipe: %+v", msgs[0])
	}
	if msgs[1].N != 1 {
		t.Errorf("the socket after it: %+v", msgs[1])
	}
	io.ReadFull(okPeer, make([]byte, 1))
}

func TestNewRefusesSizes(t *testing.T) {
	for _, n := range []int{0, -1, 5000} {
		if r, err := uring.New(n); err == nil {
			r.Close()
			t.Errorf("New(%d) succeeded", n)
		}
	}
}

// BenchmarkSend is one 200-byte answer to each of 128 loopback clients
// that read, sent in one call: compare BenchmarkWrite.
func BenchmarkSend(b *testing.B) {
	benchmarkSends(b, func(r *uring.Ring, msgs []uring.Message) {
		if err := r.Send(msgs); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkWrite is BenchmarkSend with a write(2) per client.
func BenchmarkWrite(b *testing.B) {
	benchmarkSends(b, func(_ *uring.Ring, msgs []uring.Message) {
		for _, m := range msgs {
			if n, err := syscall.Write(m.FD, m.Buf); n != len(m.Buf) {
				b.Fatal(err)
			}
		}
	})
}

func benchmarkSends(b *testing.B, send func(*uring.Ring, []uring.Message)) {
	r, err := uring.New(128)
	if err != nil {
		b.Skip(err)
	}
	defer r.Close()
	answer := make([]byte, 200)
	msgs := make([]uring.Message, 128)
	for i := range msgs {
		fd, peer := pair(b)
		go io.Copy(io.Discard, peer)
		msgs[i] = uring.Message{FD: fd, Buf: answer}
	}
	b.ReportAllocs()
	for b.Loop() {
		send(r, msgs)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(msgs)), "ns/answer")
}
