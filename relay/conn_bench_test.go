package relay

import (
	"io"
	"net"
	"testing"
)

// BenchmarkWriteNow is the fan-out's write of one answer to a connection
// whose client reads it (loopback: the kernel's side of the client's
// receive is in the figure too).
func BenchmarkWriteNow(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	go io.Copy(io.Discard, client)
	nc, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	c := newClientConn(nil, nc)
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
