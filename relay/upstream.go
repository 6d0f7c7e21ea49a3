package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confsync/confsync/backends/etcd"
)

// upstream passes requests to etcd, trying its endpoints in turn.
type upstream struct {
	endpoints []string
	transport http.RoundTripper
	user      string
	password  string
	preferred atomic.Int64
	metrics   *metrics
	logger    *slog.Logger

	info infoCache
}

func newUpstream(c *etcd.Client, m *metrics, logger *slog.Logger) *upstream {
	u := &upstream{endpoints: c.Endpoints(), transport: c.Transport(), metrics: m, logger: logger}
	u.user, u.password = c.BasicAuth()
	return u
}

// hopHeaders belong to one connection and are never passed on.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Te", "Trailer",
	"Transfer-Encoding", "Upgrade", "Proxy-Authenticate", "Proxy-Authorization"}

// roundTrip sends r to the preferred endpoint, moving on to the next only
// when the request cannot have reached etcd: it has no body, or the
// connection could not be made. A read carries the relay's credentials
// unless the client brought its own; a write only ever carries the
// client's, so that the relay never lends its identity to a writer.
func (u *upstream) roundTrip(r *http.Request, write bool) (*http.Response, error) {
	start := int(u.preferred.Load())
	bodiless := r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
	var lastErr error
	for i := range u.endpoints {
		idx := (start + i) % len(u.endpoints)
		out, err := u.request(r, u.endpoints[idx], write)
		if err != nil {
			return nil, err
		}
		resp, err := u.transport.RoundTrip(out)
		if err == nil {
			if idx != start {
				u.preferred.CompareAndSwap(int64(start), int64(idx))
			}
			return resp, nil
		}
		if r.Context().Err() != nil {
			return nil, err
		}
		lastErr = fmt.Errorf("%s: %w", u.endpoints[idx], err)
		var opErr *net.OpError
		if !bodiless && !(errors.As(err, &opErr) && opErr.Op == "dial") {
			break // it may have reached etcd: never send it twice
		}
	}
	u.metrics.upstreamErrors.Inc()
	return nil, lastErr
}

// request is r addressed to endpoint.
func (u *upstream) request(r *http.Request, endpoint string, write bool) (*http.Request, error) {
	target := endpoint + r.URL.EscapedPath()
	if r.URL.RawQuery != "" {
		target += "?" + r.URL.RawQuery
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, target, r.Body)
	if err != nil {
		return nil, err
	}
	out.ContentLength = r.ContentLength
	out.Header = r.Header.Clone()
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	for _, h := range connectionTokens(r.Header) {
		out.Header.Del(h)
	}
	if !write && u.user != "" && out.Header.Get("Authorization") == "" {
		out.SetBasicAuth(u.user, u.password)
	}
	return out, nil
}

func connectionTokens(h http.Header) []string {
	var out []string
	for _, v := range h.Values("Connection") {
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, http.CanonicalHeaderKey(t))
			}
		}
	}
	return out
}

// pass sends r upstream and copies the answer back as it comes, flushing
// as etcd writes, so that watches outside the prefix stream through.
func (s *Server) pass(w http.ResponseWriter, r *http.Request, write bool) {
	if write {
		s.count(kindWrite)
	} else {
		s.count(kindUpstream)
	}
	h := w.Header()
	h[DataAgeHeader] = []string{"0"} // etcd's own answer
	if s.up == nil {
		noUpstream(r).write(w)
		return
	}
	resp, err := s.up.roundTrip(r, write)
	if err != nil {
		if r.Context().Err() == nil {
			unreachable(r, err).write(w)
		}
		return
	}
	defer resp.Body.Close()
	copyHeader(h, resp.Header)
	w.WriteHeader(resp.StatusCode)
	if resp.ContentLength < 0 {
		// A watch: etcd sent its headers when it registered it, and the
		// client may be waiting for them (to know the index, say).
		http.NewResponseController(w).Flush()
	}
	copyBody(w, resp.Body)
}

// noUpstream is the answer to what needs etcd when the relay has no v2
// API to pass it to.
func noUpstream(r *http.Request) *etcdError {
	return newError(codeRaftInternal, fmt.Sprintf("confsync relay: %s %s is not served from memory and there is no etcd v2 API to pass it to", r.Method, r.URL.Path), 0)
}

func unreachable(r *http.Request, err error) *etcdError {
	return newError(codeRaftInternal, fmt.Sprintf("confsync relay: %s %s needs etcd, which does not answer: %v", r.Method, r.URL.Path, err), 0)
}

// copyHeader copies etcd's answer headers, without hop-by-hop ones, over
// the relay's (etcd's CORS headers replace the relay's).
func copyHeader(dst, src http.Header) {
	skip := map[string]bool{}
	for _, h := range hopHeaders {
		skip[h] = true
	}
	for _, h := range connectionTokens(src) {
		skip[h] = true
	}
	for k, vv := range src {
		if !skip[k] {
			dst[k] = vv
		}
	}
}

// copyBody copies a body, flushing after every read.
func copyBody(w http.ResponseWriter, body io.Reader) {
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if rc.Flush() != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// How long etcd's answers to /version and /v2/members are reused, how
// soon asking again after a failure, and how long one attempt may take.
const (
	infoRefresh = 30 * time.Second
	infoRetry   = 5 * time.Second
	infoTimeout = 2 * time.Second
)

// infoCache keeps etcd's last answers to /version and /v2/members, so that
// the relay answers them while etcd is away.
type infoCache struct {
	mu       sync.Mutex
	version  []byte
	members  []byte
	next     time.Time // when to ask etcd again
	fetching bool
}

// infoNow returns etcd's last answers, asking again first when they are
// due and no other request is already asking.
func (u *upstream) infoNow(ctx context.Context) (version, members []byte) {
	c := &u.info
	c.mu.Lock()
	if time.Now().Before(c.next) || c.fetching {
		defer c.mu.Unlock()
		return c.version, c.members
	}
	c.fetching = true
	c.mu.Unlock()
	v := u.fetchInfo(ctx, "/version")
	m := u.fetchInfo(ctx, "/v2/members")
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fetching = false
	if v != nil {
		c.version = v
	}
	if m != nil {
		c.members = m
	}
	c.next = time.Now().Add(infoRetry)
	if v != nil && m != nil {
		c.next = time.Now().Add(infoRefresh)
	}
	return c.version, c.members
}

// fetchInfo GETs p from the first endpoint that answers, or nil.
func (u *upstream) fetchInfo(ctx context.Context, p string) []byte {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), infoTimeout)
	defer cancel()
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://relay"+p, nil)
	if err != nil {
		return nil
	}
	resp, err := u.roundTrip(r, false)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil
	}
	return body
}
