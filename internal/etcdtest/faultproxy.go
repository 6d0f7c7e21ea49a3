package etcdtest

import (
	"bytes"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// FaultProxy is a TCP proxy that plays the network and machine faults a
// real site has, between a client and a server (an etcd member's client
// port, or its peer port for raft traffic between members). It forwards
// bytes untouched until a test switches on a fault:
//
//   - Delay: added latency, each way.
//   - Drop: new connections are closed at once; open ones go on.
//   - ResetConnections: every open connection gets a TCP RST now.
//   - Blackhole: a hung host behind a load balancer. New connections are
//     accepted and read but never answered nor closed; open ones stop
//     moving in both directions (bytes are held, not lost).
//   - Drip: both directions slowed to a number of bytes a second, a slow
//     network or a slow client.
//   - Buffer: server-to-client bytes are held until a number of them has
//     accumulated or the server closes, as nginx's proxy_buffering does to
//     a streamed watch.
//
// A fault set at run time applies to open connections too, where that
// makes sense (Drop only refuses new ones). PassThrough lifts it: held
// bytes flow again, except on connections that arrived during Blackhole,
// which were never connected upstream and stay dead ends.
//
// The zero value is not usable; see NewFaultProxy.
type FaultProxy struct {
	ln   net.Listener
	addr string

	mu      sync.Mutex
	target  string
	fault   fault
	changed chan struct{} // closed and replaced when the fault changes
	conns   map[*proxyConn]struct{}
	open    int
	maxOpen int
	total   int
	closed  bool
	// origin, when set, names the sender of a connection from the first
	// bytes it sends (an HTTP request head); connections from a cut
	// origin are refused. Used to partition etcd members (see Cluster).
	origin func(head []byte) string
	cut    map[string]bool
}

type faultKind int

const (
	passThrough faultKind = iota
	delayFault
	dropFault
	blackholeFault
	dripFault
	bufferFault
)

type fault struct {
	kind  faultKind
	delay time.Duration // delayFault
	rate  int           // dripFault, bytes a second
	size  int           // bufferFault, bytes
}

// NewFaultProxy listens on a free loopback port and forwards to target
// (host:port, or a URL whose host:port is taken) until the test ends.
func NewFaultProxy(tb testing.TB, target string) *FaultProxy {
	tb.Helper()
	p, err := StartFaultProxy(target)
	if err != nil {
		tb.Fatalf("etcdtest: fault proxy: %v", err)
	}
	tb.Cleanup(p.Close)
	return p
}

// StartFaultProxy is NewFaultProxy for code that is not a test; Close
// stops it.
func StartFaultProxy(target string) (*FaultProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return serveFaultProxy(ln, target), nil
}

func serveFaultProxy(ln net.Listener, target string) *FaultProxy {
	p := &FaultProxy{
		ln:      ln,
		addr:    ln.Addr().String(),
		target:  hostPort(target),
		changed: make(chan struct{}),
		conns:   map[*proxyConn]struct{}{},
		cut:     map[string]bool{},
	}
	go p.serve()
	return p
}

// hostPort accepts host:port or a URL and returns host:port.
func hostPort(target string) string {
	if strings.Contains(target, "://") {
		if u, err := url.Parse(target); err == nil {
			return u.Host
		}
	}
	return target
}

// Addr is the proxy's address, host:port.
func (p *FaultProxy) Addr() string { return p.addr }

// URL is http:// and Addr, to give an HTTP client.
func (p *FaultProxy) URL() string { return "http://" + p.addr }

// SetTarget sends later connections to target (host:port or URL); open
// ones stay where they are.
func (p *FaultProxy) SetTarget(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = hostPort(target)
}

// PassThrough lifts any fault: bytes flow untouched, and bytes a fault
// held are delivered.
func (p *FaultProxy) PassThrough() { p.setFault(fault{kind: passThrough}) }

// Delay adds d of latency to every byte in each direction (a
// request-response gains at least 2d), open connections included.
func (p *FaultProxy) Delay(d time.Duration) { p.setFault(fault{kind: delayFault, delay: d}) }

// Drop closes every new connection as soon as it is accepted; open
// connections go on.
func (p *FaultProxy) Drop() { p.setFault(fault{kind: dropFault}) }

// Blackhole makes the far side hang: new connections are accepted, read
// and never answered nor closed; open connections stop forwarding in both
// directions until the fault is lifted.
func (p *FaultProxy) Blackhole() { p.setFault(fault{kind: blackholeFault}) }

// Drip forwards at most bytesPerSecond in each direction of every
// connection, open ones included.
func (p *FaultProxy) Drip(bytesPerSecond int) {
	p.setFault(fault{kind: dripFault, rate: max(bytesPerSecond, 1)})
}

// Buffer holds server-to-client bytes until n have accumulated or the
// server closes the connection; client-to-server bytes pass untouched.
func (p *FaultProxy) Buffer(n int) { p.setFault(fault{kind: bufferFault, size: max(n, 1)}) }

func (p *FaultProxy) setFault(f fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault = f
	close(p.changed)
	p.changed = make(chan struct{})
}

// current is the fault in force and a channel closed when it changes.
func (p *FaultProxy) current() (fault, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fault, p.changed
}

// ResetConnections sends a TCP RST on every open connection, both to the
// client and to the server, as a crashed host or a firewall does.
func (p *FaultProxy) ResetConnections() {
	for _, pc := range p.connections(func(*proxyConn) bool { return true }) {
		pc.abort(true)
	}
}

// Open is the number of client connections open now.
func (p *FaultProxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open
}

// MaxOpen is the most client connections that were open at once.
func (p *FaultProxy) MaxOpen() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.maxOpen
}

// Total is the number of client connections accepted so far, dropped and
// refused ones included.
func (p *FaultProxy) Total() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total
}

// Close stops listening and resets every open connection.
func (p *FaultProxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.ResetConnections()
}

// setOrigin makes the proxy name each connection's sender from its first
// bytes, for cutOrigin. Only for protocols where the client speaks first.
func (p *FaultProxy) setOrigin(fn func(head []byte) string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.origin = fn
}

// cutOrigin refuses (cut) or lets through again (!cut) the connections
// whose origin is label, resetting those open now.
func (p *FaultProxy) cutOrigin(label string, cut bool) {
	p.mu.Lock()
	p.cut[label] = cut
	p.mu.Unlock()
	if !cut {
		return
	}
	for _, pc := range p.connections(func(pc *proxyConn) bool { return pc.origin == label }) {
		pc.abort(true)
	}
}

func (p *FaultProxy) connections(match func(*proxyConn) bool) []*proxyConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*proxyConn
	for pc := range p.conns {
		if match(pc) {
			out = append(out, pc)
		}
	}
	return out
}

func (p *FaultProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

// handle decides a new connection's fate: dropped, blackholed, refused
// for its origin, or connected upstream and forwarded.
func (p *FaultProxy) handle(client net.Conn) {
	p.mu.Lock()
	p.total++
	f, target, origin := p.fault, p.target, p.origin
	p.mu.Unlock()
	if f.kind == dropFault {
		client.Close()
		return
	}
	pc := &proxyConn{client: client, dead: make(chan struct{})}
	if f.kind == blackholeFault {
		if p.track(pc) {
			buf := make([]byte, 32<<10)
			for {
				if _, err := client.Read(buf); err != nil {
					break
				}
			}
			p.untrack(pc)
		}
		pc.abort(false)
		return
	}
	var head []byte
	if origin != nil {
		head = readHead(client)
		pc.origin = origin(head)
		p.mu.Lock()
		refused := p.cut[pc.origin]
		p.mu.Unlock()
		if refused {
			pc.abort(true)
			return
		}
	}
	upstream, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		client.Close()
		return
	}
	pc.upstream = upstream
	if !p.track(pc) {
		pc.abort(true)
		return
	}
	defer p.untrack(pc)
	toServer := make(chan chunk, 64)
	toClient := make(chan chunk, 64)
	if len(head) > 0 {
		toServer <- chunk{head, time.Now()}
	}
	go pc.read(client, toServer)
	go pc.read(upstream, toClient)
	done := make(chan struct{})
	go func() {
		p.pump(pc, toServer, upstream, false)
		close(done)
	}()
	p.pump(pc, toClient, client, true)
	<-done
	pc.abort(false)
}

// readHead reads what a client sends first, up to the end of an HTTP
// request head, 64 KiB or 10 seconds.
func readHead(c net.Conn) []byte {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var head []byte
	buf := make([]byte, 4096)
	for len(head) < 64<<10 && !bytes.Contains(head, []byte("\r\n\r\n")) {
		n, err := c.Read(buf)
		head = append(head, buf[:n]...)
		if err != nil {
			break
		}
	}
	return head
}

// track counts pc as open, unless the proxy has closed, or since pc was
// accepted a Drop began or its origin was cut: deciding under the lock
// that ResetConnections and cutOrigin take means no connection slips
// between their sweep and its start.
func (p *FaultProxy) track(pc *proxyConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.fault.kind == dropFault || (pc.origin != "" && p.cut[pc.origin]) {
		return false
	}
	p.conns[pc] = struct{}{}
	p.open++
	p.maxOpen = max(p.maxOpen, p.open)
	return true
}

func (p *FaultProxy) untrack(pc *proxyConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.conns[pc]; ok {
		delete(p.conns, pc)
		p.open--
	}
}

// pump writes the chunks of one direction to dst, applying the fault in
// force to each. It returns when the source has ended (dst is then
// half-closed) or the connection died.
func (p *FaultProxy) pump(pc *proxyConn, in <-chan chunk, dst net.Conn, toClient bool) {
	w := &faultWriter{p: p, pc: pc, dst: dst}
	var held []byte // Buffer's accumulated server-to-client bytes
	for {
		f, changed := p.current()
		if len(held) > 0 && f.kind != bufferFault {
			w.write(held)
			held = nil
		}
		select {
		case c, ok := <-in:
			if !ok {
				w.write(held)
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
				return
			}
			if !w.wait(c.at) {
				return
			}
			f, _ = p.current()
			switch {
			case toClient && f.kind == bufferFault:
				held = append(held, c.data...)
				if len(held) >= f.size {
					w.write(held)
					held = nil
				}
			case f.kind == dripFault:
				w.write(held)
				held = nil
				w.drip(c.data)
			default:
				w.write(held)
				held = nil
				w.write(c.data)
			}
		case <-changed:
		case <-pc.dead:
			return
		}
	}
}

// faultWriter writes one direction of a connection. A failed write kills
// the whole connection, as the kernel would, and nothing more is written.
type faultWriter struct {
	p      *FaultProxy
	pc     *proxyConn
	dst    net.Conn
	broken bool
}

func (w *faultWriter) write(b []byte) {
	if w.broken || len(b) == 0 {
		return
	}
	if _, err := w.dst.Write(b); err != nil {
		w.broken = true
		w.pc.abort(false)
	}
}

// wait holds a chunk read at `at` while the fault says so: for ever under
// Blackhole, until at+d under Delay. It reports false when the connection
// died meanwhile.
func (w *faultWriter) wait(at time.Time) bool {
	for {
		f, changed := w.p.current()
		var timer <-chan time.Time
		switch {
		case f.kind == blackholeFault:
		case f.kind == delayFault && time.Until(at.Add(f.delay)) > 0:
			timer = time.After(time.Until(at.Add(f.delay)))
		default:
			return true
		}
		select {
		case <-timer:
		case <-changed:
		case <-w.pc.dead:
			return false
		}
	}
}

// drip writes b in small pieces paced to the Drip rate, writing the rest
// at once if the fault changes meanwhile.
func (w *faultWriter) drip(b []byte) {
	for len(b) > 0 {
		f, changed := w.p.current()
		if f.kind != dripFault {
			w.write(b)
			return
		}
		n := min(max(f.rate/20, 1), len(b))
		w.write(b[:n])
		b = b[n:]
		select {
		case <-time.After(time.Duration(n) * time.Second / time.Duration(f.rate)):
		case <-changed:
		case <-w.pc.dead:
			return
		}
	}
}

// proxyConn is one proxied connection.
type proxyConn struct {
	client   net.Conn
	upstream net.Conn // nil for a blackholed connection
	origin   string
	dead     chan struct{} // closed by abort
	once     sync.Once
}

// chunk is what one read returned, and when: Delay counts from then.
type chunk struct {
	data []byte
	at   time.Time
}

// read sends what src yields to out, closing out when src ends.
func (pc *proxyConn) read(src net.Conn, out chan<- chunk) {
	defer close(out)
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case out <- chunk{buf[:n], time.Now()}:
			case <-pc.dead:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// abort closes both sides, with a TCP RST when rst is set.
func (pc *proxyConn) abort(rst bool) {
	pc.once.Do(func() {
		close(pc.dead)
		for _, c := range []net.Conn{pc.client, pc.upstream} {
			if c == nil {
				continue
			}
			if tc, ok := c.(*net.TCPConn); ok && rst {
				tc.SetLinger(0)
			}
			c.Close()
		}
	})
}
