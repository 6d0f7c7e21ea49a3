package etcdtest_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/confsync/confsync/internal/etcdtest"
	"github.com/confsync/confsync/internal/testutil"
)

// backend is a TCP server whose accepted connections the test handles.
func backend(t *testing.T) (addr string, conns <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			ch <- c
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String(), ch
}

// echoBackend echoes every connection.
func echoBackend(t *testing.T) string {
	addr, conns := backend(t)
	go func() {
		for c := range conns {
			go func() {
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	return addr
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes msg and reads it back from an echo.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(time.Minute))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo of %q: %q, %v", msg, got, err)
	}
}

// silent asserts nothing arrives on c for a while and c stays open.
func silent(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	n, err := c.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: read %d bytes, %v; want nothing and no close", what, n, err)
	}
}

func TestFaultProxyPassThroughCountsConnections(t *testing.T) {
	p := etcdtest.NewFaultProxy(t, echoBackend(t))
	var cs []net.Conn
	for range 3 {
		c := dial(t, p.Addr())
		roundTrip(t, c, "hello")
		cs = append(cs, c)
	}
	if p.Open() != 3 || p.MaxOpen() != 3 || p.Total() != 3 {
		t.Fatalf("open %d max %d total %d, want 3 3 3", p.Open(), p.MaxOpen(), p.Total())
	}
	cs[0].Close()
	cs[1].Close()
	testutil.Eventually(t, "one open connection", func() bool { return p.Open() == 1 })
	if p.MaxOpen() != 3 || p.Total() != 3 {
		t.Fatalf("max %d total %d after closes, want 3 3", p.MaxOpen(), p.Total())
	}
}

func TestFaultProxyDelay(t *testing.T) {
	p := etcdtest.NewFaultProxy(t, echoBackend(t))
	c := dial(t, p.Addr())
	roundTrip(t, c, "warm")
	p.Delay(100 * time.Millisecond)
	start := time.Now()
	roundTrip(t, c, "slow")
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Fatalf("round trip through a 100ms each-way delay took %s", took)
	}
	p.PassThrough()
	roundTrip(t, c, "fast again")
}

func TestFaultProxyDropRefusesOnlyNewConnections(t *testing.T) {
	p := etcdtest.NewFaultProxy(t, echoBackend(t))
	open := dial(t, p.Addr())
	roundTrip(t, open, "before")
	p.Drop()
	refused := dial(t, p.Addr())
	refused.SetReadDeadline(time.Now().Add(time.Minute))
	if n, err := refused.Read(make([]byte, 1)); err == nil {
		t.Fatalf("dropped connection read %d bytes", n)
	}
	roundTrip(t, open, "open connection still works")
	if p.Total() != 2 {
		t.Fatalf("total %d, want 2 (the dropped one counts)", p.Total())
	}
	p.PassThrough()
	roundTrip(t, dial(t, p.Addr()), "healed")
}

func TestFaultProxyResetConnections(t *testing.T) {
	addr, conns := backend(t)
	p := etcdtest.NewFaultProxy(t, addr)
	c := dial(t, p.Addr())
	c.Write([]byte("x"))
	server := <-conns
	server.Read(make([]byte, 1))
	p.ResetConnections()
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read after reset: %v, want ECONNRESET", err)
	}
	server.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := server.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server read after reset: %v, want ECONNRESET", err)
	}
	testutil.Eventually(t, "no open connection", func() bool { return p.Open() == 0 })
}

func TestFaultProxyBlackhole(t *testing.T) {
	p := etcdtest.NewFaultProxy(t, echoBackend(t))
	before := dial(t, p.Addr())
	roundTrip(t, before, "before")
	p.Blackhole()

	hung := dial(t, p.Addr())
	if _, err := hung.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatalf("write into the black hole: %v", err)
	}
	silent(t, hung, "new connection into a black hole")
	testutil.Eventually(t, "the hung connection to count as open", func() bool { return p.Open() == 2 })

	if _, err := before.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	silent(t, before, "open connection in a black hole")

	p.PassThrough()
	got := make([]byte, 4)
	before.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.ReadFull(before, got); err != nil || string(got) != "held" {
		t.Fatalf("held bytes after the black hole: %q, %v", got, err)
	}
	silent(t, hung, "connection made during the black hole, after it")
}

func TestFaultProxyDrip(t *testing.T) {
	addr, conns := backend(t)
	p := etcdtest.NewFaultProxy(t, addr)
	p.Drip(400)
	c := dial(t, p.Addr())
	c.Write([]byte("go"))
	server := <-conns
	payload := bytes.Repeat([]byte("d"), 200)
	start := time.Now()
	server.Write(payload)
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.ReadFull(c, make([]byte, len(payload))); err != nil {
		t.Fatal(err)
	}
	// 200 bytes at 400 B/s take half a second; allow for the first piece.
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("200 bytes at 400 B/s arrived in %s", took)
	}
}

func TestFaultProxyBuffer(t *testing.T) {
	addr, conns := backend(t)
	p := etcdtest.NewFaultProxy(t, addr)
	p.Buffer(100)
	c := dial(t, p.Addr())
	c.Write([]byte("GET /v2/keys/a?wait=true HTTP/1.1\r\n\r\n")) // the client side passes
	server := <-conns
	server.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := server.Read(make([]byte, 64)); err != nil {
		t.Fatalf("request did not pass the buffer: %v", err)
	}

	server.Write(bytes.Repeat([]byte("a"), 60))
	silent(t, c, "60 bytes under a 100-byte buffer")
	server.Write(bytes.Repeat([]byte("b"), 60))
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.ReadFull(c, make([]byte, 120)); err != nil {
		t.Fatalf("120 buffered bytes: %v", err)
	}

	server.Write([]byte("tail"))
	silent(t, c, "4 bytes under a 100-byte buffer")
	server.Close()
	c.SetReadDeadline(time.Now().Add(time.Minute))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "tail" {
		t.Fatalf("after the server closed: %q, %v", got, err)
	}
}

func TestFaultProxyBufferReleasedByPassThrough(t *testing.T) {
	addr, conns := backend(t)
	p := etcdtest.NewFaultProxy(t, addr)
	p.Buffer(1 << 20)
	c := dial(t, p.Addr())
	c.Write([]byte("x"))
	server := <-conns
	server.Write([]byte("event"))
	silent(t, c, "an event under a 1 MiB buffer")
	p.PassThrough()
	got := make([]byte, 5)
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "event" {
		t.Fatalf("held event after PassThrough: %q, %v", got, err)
	}
}
