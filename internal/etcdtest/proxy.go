package etcdtest

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy stands between a client and an etcd server. It counts what the
// client asks for, which is how tests check the load a client puts on etcd,
// and it can make etcd look slow or gone without touching the server.
type Proxy struct {
	srv      *httptest.Server
	mu       sync.Mutex
	requests []Request
	watching atomic.Int64
	maxWatch atomic.Int64
	delay    atomic.Int64 // nanoseconds added before forwarding
	down     atomic.Bool
	target   atomic.Pointer[url.URL]
	empty    atomic.Int64 // watches still to answer with an empty 200
}

// Request is one proxied request.
type Request struct {
	Method string
	Path   string
	Query  url.Values
}

// Watch reports whether the request was a long poll.
func (r Request) Watch() bool { return r.Query.Get("wait") == "true" }

// NewProxy forwards to target (a server URL) until the test ends.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	u, err := url.Parse(target)
	if err != nil {
		tb.Fatal(err)
	}
	p := &Proxy{}
	p.target.Store(u)
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(p.target.Load())
			r.Out.Host = r.In.Host
		},
		FlushInterval: -1, // stream long polls
	}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d := time.Duration(p.delay.Load()); d > 0 {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		if p.down.Load() {
			// A dropped connection, as a dead host behind a load balancer.
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					conn.Close()
					return
				}
			}
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		req := Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.Query()}
		if req.Watch() && p.empty.Add(-1) >= 0 {
			// What etcd sends when it closes a long poll without an event.
			w.Header().Set("X-Etcd-Index", "1")
			w.WriteHeader(http.StatusOK)
			p.mu.Lock()
			p.requests = append(p.requests, req)
			p.mu.Unlock()
			return
		}
		p.mu.Lock()
		p.requests = append(p.requests, req)
		p.mu.Unlock()
		if req.Watch() {
			n := p.watching.Add(1)
			for {
				m := p.maxWatch.Load()
				if n <= m || p.maxWatch.CompareAndSwap(m, n) {
					break
				}
			}
			defer p.watching.Add(-1)
		}
		rp.ServeHTTP(w, r)
	}))
	tb.Cleanup(p.srv.Close)
	return p
}

// URL is the proxy's address, to give to the client under test.
func (p *Proxy) URL() string { return p.srv.URL }

// Requests returns a copy of every request so far.
func (p *Proxy) Requests() []Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Request(nil), p.requests...)
}

// Count returns how many requests so far satisfy match (all when nil).
func (p *Proxy) Count(match func(Request) bool) int {
	n := 0
	for _, r := range p.Requests() {
		if match == nil || match(r) {
			n++
		}
	}
	return n
}

// Reset forgets the requests seen so far.
func (p *Proxy) Reset() {
	p.mu.Lock()
	p.requests = nil
	p.mu.Unlock()
	p.maxWatch.Store(p.watching.Load())
	p.empty.Store(0)
}

// OpenWatches is the number of long polls in flight now; MaxOpenWatches the
// most seen at once since the last Reset.
func (p *Proxy) OpenWatches() int    { return int(p.watching.Load()) }
func (p *Proxy) MaxOpenWatches() int { return int(p.maxWatch.Load()) }

// SetDelay makes every later request wait d before it is forwarded.
func (p *Proxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// SetTarget sends later requests to another server, as when a DNS name
// or load balancer starts pointing at a different cluster.
func (p *Proxy) SetTarget(target string) {
	u, err := url.Parse(target)
	if err == nil {
		p.target.Store(u)
	}
}

// EmptyWatches answers the next n long polls with 200 and an empty body,
// as etcd does when it ends a watch without an event; clients must retry.
func (p *Proxy) EmptyWatches(n int) { p.empty.Store(int64(n)) }

// SetDown makes later requests fail by dropping their connection.
func (p *Proxy) SetDown(down bool) { p.down.Store(down) }

// CloseClientConnections cuts every open connection, long polls included.
func (p *Proxy) CloseClientConnections() { p.srv.CloseClientConnections() }
