package gate

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"sync/atomic"
	"time"
)

// Defences against clients that send too much or too slowly: rate limits
// per client address and per user, and a deadline on request bodies.

// admitClient spends a token of the client's bucket, answering 429 itself
// when there is none. A watch only needs the bucket not to be empty: it is
// charged when it ends, if it ended at once (see quickWatch).
func (s *Server) admitClient(w http.ResponseWriter, r *http.Request, watch bool) bool {
	key, addr, ok := clientKey(r.RemoteAddr)
	if !ok {
		return true // not an IP client: ServeHTTP called from code
	}
	limit := s.clientLimit(addr)
	v := s.clientBuckets.take(key, limit, time.Now(), !watch)
	if !v.ok {
		s.tooMany(w, "client", addr.String(), limit, v)
	}
	return v.ok
}

// admitUser spends a token of an authenticated user's bucket, answering
// 429 itself when there is none.
func (s *Server) admitUser(w http.ResponseWriter, user string) bool {
	limit := s.cfg.UserLimit
	if l, ok := s.acl.Load().UserLimit(user); ok {
		limit = l
	}
	v := s.userBuckets.take(user, limit, time.Now(), true)
	if !v.ok {
		s.tooMany(w, "user", user, limit, v)
	}
	return v.ok
}

// chargeClient charges a watch that was answered at once to its client.
func (s *Server) chargeClient(remote string) {
	if key, addr, ok := clientKey(remote); ok {
		s.clientBuckets.charge(key, s.clientLimit(addr), time.Now())
	}
}

// clientLimit is the limit for a client address: the ACL file's, or the
// configured default.
func (s *Server) clientLimit(addr netip.Addr) RateLimit {
	if l, ok := s.acl.Load().ClientLimit(addr); ok {
		return l
	}
	return s.cfg.ClientLimit
}

// tooMany answers 429 with Retry-After and an etcd-shaped body. The first
// refusal of a client or user after it was let through is logged; the
// rest only counted, or the log would grow with the flood it reports.
func (s *Server) tooMany(w http.ResponseWriter, by, who string, limit RateLimit, v verdict) {
	s.metrics.rateLimited.WithLabelValues(by).Inc()
	if v.firstRefusal {
		s.log.Warn("rate limited", "by", by, by, who, "limit", limit.String())
	}
	after := retryAfter(v.retry)
	w.Header().Set("Retry-After", after)
	writeError(w, http.StatusTooManyRequests, errorCodeTooManyRequests, "Too Many Requests",
		fmt.Sprintf("gate: %s %s is over its rate limit (%s); retry after %ss", by, who, limit, after))
}

// errorCodeTooManyRequests is the errorCode of a 429. etcd's v2 API has no
// code for it (its clients treat unknown codes as a generic error), so the
// gate uses the HTTP status, which no etcd code collides with.
const errorCodeTooManyRequests = 429

// bodyBudget bounds the request bodies held in memory at once, all
// requests together: a dozen of the largest allowed, thousands of
// ordinary ones. Past it a request gets 503 rather than the gate running
// out of memory.
const bodyBudget = 256 << 20

// errBodyBudget is a body that would take the bodies held past bodyBudget.
var errBodyBudget = errors.New("too many request bodies held at once")

// readBody reads the request body in full, within the body deadline,
// before anything is sent upstream: etcd never sees part of a body, and a
// client trickling one holds no upstream connection. On failure it
// answers the client itself (408 too slow, 413 too large, 503 too many
// bodies at once, 400 unreadable). release gives back the body's share of
// bodyBudget once the request is done with it.
func (s *Server) readBody(w *recorder, r *http.Request) (release func(), ok bool) {
	if r.Body == nil || r.Body == http.NoBody {
		return func() {}, true
	}
	rc := http.NewResponseController(w)
	var buf bytes.Buffer
	held := &budgetReader{r: r.Body, held: &s.bodyBytes}
	release = held.release
	if r.ContentLength > 0 {
		if err := held.take(r.ContentLength); err != nil {
			release()
			s.busy(w, r)
			return nil, false
		}
		buf.Grow(int(r.ContentLength))
	}
	_, err := buf.ReadFrom(&deadlineReader{
		r: held, rc: rc, start: time.Now(),
		timeout: s.cfg.BodyTimeout, minRate: s.cfg.BodyMinRate,
	})
	var tooBig *http.MaxBytesError
	if err != nil {
		// The server discards what is left of a small body after the
		// handler; a trickling client must not hold the connection for that.
		rc.SetReadDeadline(time.Now())
	} else {
		rc.SetReadDeadline(time.Time{})
		r.Body.Close()
	}
	switch {
	case err == nil:
		r.ContentLength = int64(buf.Len())
		r.Body = http.NoBody
		if buf.Len() > 0 {
			r.Body = io.NopCloser(bytes.NewReader(buf.Bytes()))
		}
		return release, true
	case errors.Is(err, errBodyBudget):
		s.busy(w, r)
	case errors.As(err, &tooBig):
		s.tooLarge(w)
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.metrics.slowBodies.Inc()
		s.log.Info("request body too slow; refused", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "received", buf.Len())
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusRequestTimeout, 210, "Invalid POST form",
			fmt.Sprintf("gate: request body not received in time (%s, plus 1s for every %d bytes); nothing was written",
				s.cfg.BodyTimeout, s.cfg.BodyMinRate))
	case r.Context().Err() != nil:
		w.status = 499 // the client went away; nothing to answer
	default:
		s.log.Info("request body unreadable", "remote", r.RemoteAddr, "err", err)
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusBadRequest, 210, "Invalid POST form", "gate: request body unreadable")
	}
	release()
	return nil, false
}

// busy answers 503 to a request whose body would not fit in bodyBudget.
func (s *Server) busy(w http.ResponseWriter, r *http.Request) {
	s.log.Warn("request bodies held at once over budget; refused", "remote", r.RemoteAddr, "budget_bytes", bodyBudget)
	w.Header().Set("Retry-After", "1")
	w.Header().Set("Connection", "close")
	writeError(w, http.StatusServiceUnavailable, 300, "Raft Internal Error", "gate: too many request bodies in flight; retry")
}

// budgetReader counts the bytes it reads against a shared total, which
// may not pass bodyBudget.
type budgetReader struct {
	r     io.Reader
	held  *atomic.Int64
	taken int64 // counted against held by this reader
	read  int64
}

// take reserves n bytes more.
func (b *budgetReader) take(n int64) error {
	if b.held.Add(n) > bodyBudget {
		b.held.Add(-n)
		return errBodyBudget
	}
	b.taken += n
	return nil
}

func (b *budgetReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.read += int64(n)
	if b.read > b.taken { // a body of unknown length, or longer than declared
		if terr := b.take(b.read - b.taken); terr != nil {
			return n, terr
		}
	}
	return n, err
}

func (b *budgetReader) release() {
	b.held.Add(-b.taken)
	b.taken = 0
}

// deadlineReader reads a request body under a deadline that moves with
// the data: timeout from the start, plus a second for every minRate bytes
// received (Apache's mod_reqtimeout does the same). A client sending at
// least minRate bytes a second is never cut off; one trickling a byte a
// second is, after about timeout.
type deadlineReader struct {
	r        io.Reader
	rc       *http.ResponseController
	start    time.Time
	timeout  time.Duration
	minRate  int64
	received int64
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	credit := time.Duration(float64(d.received) / float64(d.minRate) * float64(time.Second))
	// Not supported when ServeHTTP is called without a connection: no deadline then.
	d.rc.SetReadDeadline(d.start.Add(d.timeout + credit))
	n, err := d.r.Read(p)
	d.received += int64(n)
	return n, err
}

// clientKey parses a client's address: the key its requests are counted
// under (its IP address, or for IPv6 its /64, since one host may use any
// address of its subnet) and the address itself. The client's own claims
// (X-Forwarded-For) are not believed: the gate is the edge.
func clientKey(remoteAddr string) (key, addr netip.Addr, ok bool) {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return netip.Addr{}, netip.Addr{}, false
	}
	addr = ap.Addr().Unmap().WithZone("")
	key = addr
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		key = p.Addr()
	}
	return key, addr, true
}
