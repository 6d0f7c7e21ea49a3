package gate

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// A watch (wait=true) may stay open for days, and a site has thousands.
// Served through net/http's response writer, each would keep the server's
// per-connection read and write buffers, a header snapshot and two
// goroutines that went through the TLS handshake (and so have grown
// stacks). Once etcd has answered with its headers, the gate therefore
// takes the client connection over (hijacks it) and streams the answer
// itself from a small goroutine; when the watch ends and the client wants
// to keep the connection, it is handed back to the http.Server through
// reentryListener as if newly accepted, still authenticated by TLS.

// clientWriteTimeout bounds each write to a client that stopped reading
// (nginx's send_timeout).
const clientWriteTimeout = 60 * time.Second

// watchStream is one long poll being streamed on a hijacked connection.
type watchStream struct {
	s         *Server
	log       accessEntry
	client    net.Conn
	up        *upstreamConn
	body      io.Reader
	keepAlive bool // frame chunked and hand the connection back afterwards
	closing   atomic.Bool
	sent      int64 // bytes of etcd's body passed on
}

// streamWatch takes over the client connection to stream resp, and reports
// whether it did. It does not when it cannot hand the connection back
// later (no reentryListener: ServeHTTP used outside Serve), or for answers
// that are not a stream.
func (s *Server) streamWatch(w *recorder, r *http.Request, resp *http.Response, uc *upstreamConn, entry accessEntry) bool {
	rl := s.reentry.Load()
	if rl == nil || r.ProtoMajor != 1 || resp.StatusCode != http.StatusOK || resp.ContentLength >= 0 || resp.Body == http.NoBody {
		return false
	}
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return false
	}
	conn.SetDeadline(time.Time{})
	ws := &watchStream{
		s:      s,
		log:    entry,
		client: conn,
		up:     uc,
		body:   resp.Body,
		// A client that sent more than this request (pipelining) gets the
		// connection closed after the watch; it retries what was not answered.
		keepAlive: r.ProtoAtLeast(1, 1) && !r.Close && brw.Reader.Buffered() == 0,
	}
	head := ws.head(resp)
	resp.Header = nil // the body keeps resp reachable for trailers; drop the map
	w.handedOff = true
	if !s.trackStream(ws, true) {
		conn.Close()
		uc.Close()
		s.finish(ws.log)
		return true
	}
	go ws.run(head)
	return true
}

// head renders the status line and headers: etcd's, framed chunked for a
// keep-alive client and delimited by closing the connection otherwise (an
// HTTP/1.0 client such as pybal).
func (ws *watchStream) head(resp *http.Response) []byte {
	b := make([]byte, 0, 512)
	b = append(b, "HTTP/1.1 200 OK\r\n"...)
	h := make(http.Header, len(resp.Header))
	copyResponseHeader(h, resp.Header, true)
	for k, vv := range h {
		for _, v := range vv {
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	if ws.keepAlive {
		b = append(b, "Transfer-Encoding: chunked\r\n\r\n"...)
	} else {
		b = append(b, "Connection: close\r\n\r\n"...)
	}
	return b
}

func (ws *watchStream) run(head []byte) {
	s := ws.s
	ws.log.status = http.StatusOK
	defer func() {
		s.trackStream(ws, false)
		s.finish(ws.log)
	}()
	// The client's side of the connection must stay silent; a read
	// returning means it went away (or broke protocol), and ends the watch.
	detected := make(chan error, 1)
	go func() {
		var one [1]byte
		_, err := ws.client.Read(one[:])
		if err == nil {
			err = errors.New("client sent data during a watch")
		}
		if !ws.closing.Load() {
			ws.up.Close() // wakes the copy loop below
		}
		detected <- err
	}()

	err := ws.write(head)
	if err == nil {
		err = ws.copy()
	}
	// Stop watching the client before the last chunk goes out: once it has
	// that, a keep-alive client may send its next request at once, and
	// those bytes belong to the server the connection goes back to.
	ws.closing.Store(true)
	ws.client.SetReadDeadline(time.Now())
	clientErr := <-detected
	clientQuiet := errors.Is(clientErr, os.ErrDeadlineExceeded)
	upstreamOK := err == nil
	var upErr *upstreamError
	if errors.As(err, &upErr) && clientQuiet && ws.sent == 0 {
		// etcd went away (or was given up on) before sending an event. End
		// the answer as etcd ends a watch without one, empty: the client
		// watches again from the same index, through the next member.
		s.log.Info("watch ended without an event: its upstream failed", "upstream", ws.up.pool.target.String(),
			"remote", ws.log.remote, "uri", ws.log.uri, "err", upErr.err)
		err = nil
	}
	if err == nil && clientQuiet && ws.keepAlive {
		err = ws.write([]byte("0\r\n\r\n"))
	}

	if upstreamOK && err == nil && clientQuiet && ws.up.br.Buffered() == 0 {
		ws.up.pool.put(ws.up)
	} else {
		ws.up.Close()
	}
	if rl := s.reentry.Load(); rl != nil && err == nil && clientQuiet && ws.keepAlive {
		ws.client.SetDeadline(time.Time{}) // the server sets its own
		if rl.give(ws.client) {
			return
		}
	}
	ws.client.Close()
}

// copy streams the body, one chunk per read, waiting for upstream data
// without holding a copy buffer. The last (empty) chunk is left to run.
// Failures to read from etcd are *upstreamError.
func (ws *watchStream) copy() error {
	for {
		if ws.up.br.Buffered() == 0 {
			if _, err := ws.up.br.Peek(1); err != nil && err != io.EOF {
				return &upstreamError{err}
			}
		}
		buf := ws.s.fwd.buffers.Get()
		// Leave room in front for the chunk size line and after for its CRLF.
		const front = 18
		n, rerr := ws.body.Read(buf[front : len(buf)-2])
		var werr error
		if n > 0 {
			ws.sent += int64(n)
			frame := buf[front : front+n]
			if ws.keepAlive {
				size := strconv.AppendInt(buf[:0:front], int64(n), 16)
				size = append(size, '\r', '\n')
				start := front - len(size)
				copy(buf[start:], size)
				frame = append(buf[start:front+n], '\r', '\n')
			}
			werr = ws.write(frame)
		}
		ws.s.fwd.buffers.Put(buf)
		switch {
		case werr != nil:
			return werr
		case rerr == io.EOF:
			return nil // run writes the last chunk
		case rerr != nil:
			return &upstreamError{rerr}
		}
	}
}

func (ws *watchStream) write(p []byte) error {
	ws.client.SetWriteDeadline(time.Now().Add(clientWriteTimeout))
	n, err := ws.client.Write(p)
	ws.log.bytes += int64(n)
	return err
}

// trackStream adds or removes a stream from the set Serve closes on
// shutdown. Adding fails once shutdown has begun.
func (s *Server) trackStream(ws *watchStream, add bool) bool {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	if !add {
		delete(s.streams, ws)
		return true
	}
	if s.streams == nil {
		return false
	}
	s.streams[ws] = struct{}{}
	return true
}

// endWatchesOn ends the watches streaming from an upstream that was given
// up on: a hung etcd would leave them open forever. Each ends as etcd ends
// a watch without an event, and its client watches again elsewhere.
func (s *Server) endWatchesOn(target *url.URL, err error) {
	s.streamsMu.Lock()
	var ended []*watchStream
	for ws := range s.streams {
		if ws.up.pool.target == target {
			ended = append(ended, ws)
		}
	}
	s.streamsMu.Unlock()
	if len(ended) > 0 {
		s.log.Warn("ending the watches on an upstream given up on", "upstream", target.String(), "watches", len(ended), "err", err)
	}
	for _, ws := range ended {
		ws.up.Close() // wakes the copy loop, which ends the answer
	}
}

// closeStreams cuts every watch being streamed and refuses new ones.
func (s *Server) closeStreams() {
	s.streamsMu.Lock()
	streams := s.streams
	s.streams = nil
	s.streamsMu.Unlock()
	for ws := range streams {
		ws.client.Close()
		ws.up.Close()
	}
}

// reentryListener is the listener the http.Server serves: the real one,
// plus client connections handed back after a watch streamed on them.
type reentryListener struct {
	net.Listener
	accepted chan acceptResult
	back     chan net.Conn
	done     chan struct{}
	close    sync.Once
}

type acceptResult struct {
	conn net.Conn
	err  error
}

func newReentryListener(ln net.Listener) *reentryListener {
	l := &reentryListener{
		Listener: ln,
		accepted: make(chan acceptResult),
		back:     make(chan net.Conn),
		done:     make(chan struct{}),
	}
	go l.acceptLoop()
	return l
}

func (l *reentryListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		select {
		case l.accepted <- acceptResult{c, err}:
		case <-l.done:
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

func (l *reentryListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.back:
		return c, nil
	case a := <-l.accepted:
		return a.conn, a.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// give hands a connection back to the server; false once it is closed.
func (l *reentryListener) give(c net.Conn) bool {
	select {
	case l.back <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *reentryListener) Close() error {
	err := net.ErrClosed
	l.close.Do(func() {
		close(l.done)
		err = l.Listener.Close()
	})
	return err
}
