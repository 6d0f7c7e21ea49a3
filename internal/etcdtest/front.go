package etcdtest

import (
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// front is the server's public client port: a TCP relay to etcd's real
// port. Closing it cuts every connection at once, as a dying etcd process
// does. (etcd's own shutdown leaves long polls hanging in-process, which no
// real outage does.)
type front struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func listenFront(addr, target string) (*front, error) {
	var ln net.Listener
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		if ln, err = net.Listen("tcp", addr); err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	return serveFront(ln, target), nil
}

func serveFront(ln net.Listener, target string) *front {
	f := &front{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go f.serve()
	return f
}

func (f *front) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		go f.relay(c)
	}
}

func (f *front) relay(client net.Conn) {
	upstream, err := net.Dial("tcp", f.target)
	if err != nil {
		client.Close()
		return
	}
	if !f.track(client, upstream) {
		client.Close()
		upstream.Close()
		return
	}
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(upstream, client)
	go cp(client, upstream)
	<-done
	<-done
	f.untrack(client, upstream)
	client.Close()
	upstream.Close()
}

func (f *front) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

func (f *front) untrack(cs ...net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range cs {
		delete(f.conns, c)
	}
}

// close stops accepting and resets every open connection.
func (f *front) close() {
	f.ln.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for c := range f.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // RST, as the kernel does for a killed process
		}
		c.Close()
	}
}
