package gate

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// forwarder sends requests to etcd over pooled, kept-alive HTTP/1.1
// connections and copies the answers back.
//
// Keeping upstream connections alive is most of the speed: the site's
// nginx opened one per request, which cost etcd three times its direct CPU
// per request. Only the wait for an answer's headers is timed (etcd sends
// even a watch's headers at once); the body is not, because a watch may
// wait for days. A client going away closes its upstream connection.
//
// The forwarder is deliberately smaller than httputil.ReverseProxy with an
// http.Transport: each request is written and its response read in the
// handler's own goroutine, with no per-connection reader and writer
// goroutines, and a streamed response is copied without holding a buffer
// while it waits for upstream data. Measured against that pair, this cuts
// the CPU per proxied GET by about a quarter and, with watch.go, the
// memory an open watch holds from about 90 KB to about 30 KB.
type forwarder struct {
	pools     []*connPool
	preferred atomic.Int64
	tls       atomic.Pointer[tls.Config]
	dialer    net.Dialer
	buffers   *bufferPool
	writers   sync.Pool // *bufio.Writer for request headers and bodies

	// timeout bounds the wait for an answer's headers (see headerTimeout).
	timeout time.Duration

	onError  func(target *url.URL, err error)
	onSwitch func(from, to *url.URL)
	// onDown is told of an upstream given up on (it could not be reached
	// or did not answer in time), after requests moved to the next one.
	onDown func(target *url.URL, err error)
}

const (
	maxIdlePerUpstream = 512
	upstreamIdleTime   = 60 * time.Second // well under etcd's own limits
	upstreamReadBuffer = 1 << 10          // parses response headers; large reads bypass it
	tlsHandshakeLimit  = 10 * time.Second
)

func newForwarder(targets []*url.URL, tlsConfig *tls.Config, timeout time.Duration) *forwarder {
	f := &forwarder{
		timeout: timeout,
		dialer:  net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		buffers: newBufferPool(),
		writers: sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }},
	}
	f.tls.Store(tlsConfig)
	for _, t := range targets {
		f.pools = append(f.pools, &connPool{target: t})
	}
	return f
}

// current is the upstream requests go to first.
func (f *forwarder) current() *url.URL {
	return f.pools[int(f.preferred.Load())%len(f.pools)].target
}

// setTLS replaces the TLS configuration for new upstream connections and
// retires the existing ones as they fall idle.
func (f *forwarder) setTLS(cfg *tls.Config) {
	f.tls.Store(cfg)
	for _, p := range f.pools {
		p.retire()
	}
}

// closeIdle closes every idle upstream connection.
func (f *forwarder) closeIdle() {
	for _, p := range f.pools {
		p.retire()
	}
}

// upstreamError is a failure to get an answer from any upstream.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string { return e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// roundTrip sends r to an upstream and returns the response headers, with
// the connection the body is to be read from. Upstreams are tried in
// order from the preferred one. A request moves on to the next upstream
// only when it cannot have been acted on: the connection could not be
// made, or it is a read without a body. An upstream that fails (cannot
// be reached, breaks the connection, does not answer in time) is given up
// on: the next one becomes the preferred, and onDown is told. (A reused
// connection the upstream had closed is not a failure; see tryUpstream.)
func (f *forwarder) roundTrip(r *http.Request) (*http.Response, *upstreamConn, error) {
	start := int(f.preferred.Load())
	n := len(f.pools)
	bodiless := r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
	var lastErr error
	for i := range n {
		idx := (start + i) % n
		pool := f.pools[idx]
		resp, uc, err := f.tryUpstream(pool, r, bodiless)
		if err == nil {
			if idx != start && f.preferred.CompareAndSwap(int64(start), int64(idx)) {
				f.onSwitch(f.pools[start].target, pool.target)
			}
			return resp, uc, nil
		}
		if isClientSide(r, err) {
			return nil, nil, err
		}
		f.onError(pool.target, err)
		f.giveUp(idx, err)
		lastErr = fmt.Errorf("upstream %s: %w", pool.target, err)
		var dialErr *dialError
		if !errors.As(err, &dialErr) && !(bodiless && isReadMethod(r.Method)) {
			break // it may have reached etcd: never replay it elsewhere
		}
	}
	return nil, nil, &upstreamError{lastErr}
}

// giveUp moves requests off upstream idx, if it is still the preferred
// one, and tells onDown.
func (f *forwarder) giveUp(idx int, err error) {
	n := len(f.pools)
	if n > 1 && f.preferred.CompareAndSwap(int64(idx), int64((idx+1)%n)) {
		f.onSwitch(f.pools[idx].target, f.pools[(idx+1)%n].target)
	}
	f.onDown(f.pools[idx].target, err)
}

// errUpstreamTimeout marks an upstream that did not answer in time.
var errUpstreamTimeout = errors.New("no answer in time")

// headerTimeout is how long etcd may take to start answering r. etcd
// answers a read that does not ask for a quorum from its own memory, and a
// watch's headers at once, so those get half the time that writes and
// quorum reads get: those wait for raft, and etcd's own limit for them is
// 7s with default settings (5s plus two election timeouts). Past it, etcd
// is taken to be hung.
func (f *forwarder) headerTimeout(r *http.Request) time.Duration {
	if isReadMethod(r.Method) && !strings.Contains(r.URL.RawQuery, "quorum=true") {
		return f.timeout / 2
	}
	return f.timeout
}

// tryUpstream sends r to one upstream. A bodiless request that fails on a
// reused connection before any answer is sent once more on a fresh one:
// the upstream closed the idle connection, as servers may.
func (f *forwarder) tryUpstream(pool *connPool, r *http.Request, bodiless bool) (*http.Response, *upstreamConn, error) {
	for attempt := 0; ; attempt++ {
		uc, err := pool.get(r.Context(), f, !bodiless)
		if err != nil {
			return nil, nil, err
		}
		resp, err := f.exchange(uc, r)
		if err == nil {
			return resp, uc, nil
		}
		uc.Close()
		if uc.reused && bodiless && attempt == 0 && !isClientSide(r, err) && isClosedBeforeAnswer(err) {
			continue
		}
		return nil, nil, err
	}
}

// isClientSide reports whether err is the client's doing (gone away, body
// too large or unreadable) rather than the upstream's.
func isClientSide(r *http.Request, err error) bool {
	var tooBig *http.MaxBytesError
	return r.Context().Err() != nil || errors.As(err, &tooBig) || errors.Is(err, errClientBody)
}

func isClosedBeforeAnswer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// errClientBody marks a failure to read the client's request body.
var errClientBody = errors.New("reading the request body")

// exchange writes r on uc and reads the response headers, within
// headerTimeout. A failure to write is not the end: the upstream may have
// answered and closed without reading the whole body, and that answer is
// the one to pass on.
func (f *forwarder) exchange(uc *upstreamConn, r *http.Request) (*http.Response, error) {
	uc.SetDeadline(time.Now().Add(f.headerTimeout(r)))
	resp, err := f.writeAndRead(uc, r)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, fmt.Errorf("%w: no answer within %v", errUpstreamTimeout, f.headerTimeout(r))
	}
	uc.SetDeadline(time.Time{})
	return resp, err
}

func (f *forwarder) writeAndRead(uc *upstreamConn, r *http.Request) (*http.Response, error) {
	bw := f.writers.Get().(*bufio.Writer)
	bw.Reset(uc.Conn)
	werr := writeRequest(bw, r, uc.pool.target.Host)
	bw.Reset(nil)
	f.writers.Put(bw)
	if werr != nil && isClientSide(r, werr) {
		return nil, werr
	}
	// Only the method matters for reading the answer; keeping the client's
	// request out of the response keeps a long watch from holding it.
	method := &http.Request{Method: r.Method}
	for {
		resp, err := http.ReadResponse(uc.br, method)
		switch {
		case err != nil && werr != nil:
			return nil, werr
		case err != nil:
			return nil, err
		case resp.StatusCode < 200:
			continue // an interim answer; the gate never asks for one
		case werr != nil:
			resp.Close = true // the request was cut short: do not reuse
		}
		return resp, nil
	}
}

// hopHeaders are meaningful for one connection only and are not forwarded
// in either direction (RFC 9110 section 7.6.1). Upgrade is among them, as
// at the site's nginx: websockets are not proxied.
var hopHeaders = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Te": true,
	"Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Proxy-Authenticate": true, "Proxy-Authorization": true,
}

// requestHeadersSetByGate are request headers the gate writes itself.
var requestHeadersSetByGate = map[string]bool{
	"Host": true, "Content-Length": true, "Expect": true, "X-Forwarded-For": true, "X-Real-Ip": true,
}

// connectionTokens lists the headers named in h's Connection header, which
// are hop-by-hop too.
func connectionTokens(h http.Header) []string {
	var tokens []string
	for _, v := range h["Connection"] {
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				tokens = append(tokens, textproto.CanonicalMIMEHeaderKey(t))
			}
		}
	}
	return tokens
}

// copyResponseHeader copies etcd's response headers, leaving out
// hop-by-hop ones and, when skipLength, Content-Length.
func copyResponseHeader(dst, src http.Header, skipLength bool) {
	tokens := connectionTokens(src)
	for k, vv := range src {
		if hopHeaders[k] || (skipLength && k == "Content-Length") || (tokens != nil && slices.Contains(tokens, k)) {
			continue
		}
		dst[k] = vv
	}
}

// writeRequest writes r as an HTTP/1.1 request for host, adding
// X-Forwarded-For (appended to the client's chain, like nginx's
// $proxy_add_x_forwarded_for) and X-Real-IP.
func writeRequest(bw *bufio.Writer, r *http.Request, host string) error {
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(r.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	tokens := connectionTokens(r.Header)
	for k, vv := range r.Header {
		if hopHeaders[k] || requestHeadersSetByGate[k] || (tokens != nil && slices.Contains(tokens, k)) {
			continue
		}
		for _, v := range vv {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	clientIP, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		clientIP = r.RemoteAddr
	}
	bw.WriteString("X-Forwarded-For: ")
	if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 {
		bw.WriteString(strings.Join(prior, ", "))
		bw.WriteString(", ")
	}
	bw.WriteString(clientIP)
	bw.WriteString("\r\nX-Real-IP: ")
	bw.WriteString(clientIP)
	bw.WriteString("\r\n")

	hasBody := r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
	switch {
	case !hasBody && !isReadMethod(r.Method):
		bw.WriteString("Content-Length: 0\r\n\r\n")
	case !hasBody:
		bw.WriteString("\r\n")
	case r.ContentLength > 0:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(r.ContentLength, 10))
		bw.WriteString("\r\n\r\n")
		if _, err := io.CopyN(bw, bodyReader{r.Body}, r.ContentLength); err != nil {
			return err
		}
	default: // length unknown: pass it on chunked
		bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		cw := httputil.NewChunkedWriter(bw)
		if _, err := io.Copy(cw, bodyReader{r.Body}); err != nil {
			return err
		}
		cw.Close()
		bw.WriteString("\r\n")
	}
	return bw.Flush()
}

// bodyReader tags errors reading the client's body, to tell them from
// upstream failures.
type bodyReader struct{ r io.Reader }

func (b bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		var tooBig *http.MaxBytesError
		if !errors.As(err, &tooBig) {
			err = fmt.Errorf("%w: %w", errClientBody, err)
		}
	}
	return n, err
}

// copyResponse writes resp to w and reports whether uc may be reused. It
// never holds a copy buffer while waiting on a streamed body: when nothing
// is buffered from upstream it flushes what it wrote (so a watch's headers
// and each event reach the client at once) and waits for the next byte
// first. Upstream failures are returned as *upstreamError.
func (f *forwarder) copyResponse(w http.ResponseWriter, resp *http.Response, uc *upstreamConn) (reusable bool, err error) {
	copyResponseHeader(w.Header(), resp.Header, false)
	w.WriteHeader(resp.StatusCode)
	if resp.Body == http.NoBody {
		return !resp.Close && uc.br.Buffered() == 0, nil
	}
	// A body of known length ends with its last bytes; only one of unknown
	// length (chunked, as watches are) may leave us waiting.
	streaming := resp.ContentLength < 0
	for {
		if streaming && uc.br.Buffered() == 0 {
			if err := http.NewResponseController(w).Flush(); err != nil {
				return false, err
			}
			if _, err := uc.br.Peek(1); err != nil && err != io.EOF {
				return false, &upstreamError{err}
			}
		}
		buf := f.buffers.Get()
		n, rerr := resp.Body.Read(buf)
		var werr error
		if n > 0 {
			_, werr = w.Write(buf[:n])
		}
		f.buffers.Put(buf)
		if werr != nil {
			return false, werr
		}
		if rerr == io.EOF {
			return !resp.Close && uc.br.Buffered() == 0, nil
		}
		if rerr != nil {
			return false, &upstreamError{rerr}
		}
	}
}

// connPool holds idle connections to one upstream.
type connPool struct {
	target *url.URL
	mu     sync.Mutex
	idle   []*upstreamConn
	gen    uint64 // bumped to retire every connection made before
}

type upstreamConn struct {
	net.Conn
	raw       net.Conn // the TCP connection under TLS, for liveness checks
	br        *bufio.Reader
	pool      *connPool
	gen       uint64
	reused    bool
	idleSince time.Time
}

// dialError is a failure to connect to an upstream: nothing was sent.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// get returns an idle connection or dials a new one. For requests with a
// body (which cannot be replayed) an idle connection is first checked to
// be still open.
func (p *connPool) get(ctx context.Context, f *forwarder, checkAlive bool) (*upstreamConn, error) {
	now := time.Now()
	p.mu.Lock()
	for len(p.idle) > 0 {
		uc := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if uc.gen != p.gen || now.Sub(uc.idleSince) > upstreamIdleTime {
			uc.Close()
			continue
		}
		p.mu.Unlock()
		if checkAlive && !connAlive(uc.raw) {
			uc.Close()
			p.mu.Lock()
			continue
		}
		uc.reused = true
		return uc, nil
	}
	gen := p.gen
	p.mu.Unlock()
	return p.dial(ctx, f, gen)
}

func (p *connPool) dial(ctx context.Context, f *forwarder, gen uint64) (*upstreamConn, error) {
	raw, err := f.dialer.DialContext(ctx, "tcp", p.target.Host)
	if err != nil {
		return nil, &dialError{err}
	}
	conn := raw
	if p.target.Scheme == "https" {
		cfg := f.tls.Load().Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = p.target.Hostname()
		}
		tc := tls.Client(raw, cfg)
		hctx, cancel := context.WithTimeout(ctx, tlsHandshakeLimit)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			raw.Close()
			return nil, &dialError{fmt.Errorf("TLS handshake: %w", err)}
		}
		conn = tc
	}
	return &upstreamConn{Conn: conn, raw: raw, br: bufio.NewReaderSize(conn, upstreamReadBuffer), pool: p, gen: gen}, nil
}

// put returns a connection whose last response was read to the end.
func (p *connPool) put(uc *upstreamConn) {
	uc.idleSince = time.Now()
	p.mu.Lock()
	if uc.gen != p.gen || len(p.idle) >= maxIdlePerUpstream {
		p.mu.Unlock()
		uc.Close()
		return
	}
	p.idle = append(p.idle, uc)
	p.mu.Unlock()
}

func (p *connPool) retire() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.gen++
	p.mu.Unlock()
	for _, uc := range idle {
		uc.Close()
	}
}

func parseUpstreams(raw []string) ([]*url.URL, error) {
	if len(raw) == 0 {
		return nil, errors.New("no upstream given")
	}
	var targets []*url.URL
	for _, s := range raw {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("upstream %q: %w", s, err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("upstream %q: want http://host:port or https://host:port", s)
		}
		if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("upstream %q: want only scheme, host and port (no path, query or user)", s)
		}
		if u.Port() == "" {
			u.Host = net.JoinHostPort(u.Hostname(), map[string]string{"http": "80", "https": "443"}[u.Scheme])
		}
		targets = append(targets, &url.URL{Scheme: u.Scheme, Host: u.Host})
	}
	return targets, nil
}
