package gate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// ServeHTTP decides and, when allowed, proxies one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &recorder{ResponseWriter: w}
	entry := newAccessEntry(r, time.Now())
	defer func() {
		if !rec.handedOff { // else the watch stream accounts for itself
			entry.status, entry.bytes = rec.status, rec.bytes
			s.finish(entry)
		}
	}()

	if r.URL.Path == "" || r.URL.Path[0] != '/' {
		writeError(rec, http.StatusBadRequest, 210, "Invalid POST form", "gate: request target must be a path")
		return
	}
	watch := isWatch(r)
	if !s.admitClient(rec, r, watch) {
		return
	}
	if r.ContentLength > s.cfg.MaxBodyBytes {
		s.tooLarge(rec)
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		// The server's own writer, so it knows to close the connection.
		r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	}

	clean := cleanPath(r.URL.Path)
	canonical := isCanonical(r.URL)
	write := isWrite(r) && !isMetricsPath(clean)
	if write {
		var ok bool
		if entry.user, ok = s.admitWrite(rec, r, clean, canonical); !ok {
			return
		}
		if entry.user != "" && !s.admitUser(rec, entry.user) {
			return
		}
	}
	release, ok := s.readBody(rec, r)
	if !ok {
		return
	}
	defer release()
	entry.forwardedWrite = write
	if watch {
		entry.watch = true
		s.metrics.openWatches.Inc() // finish decrements
	}
	var rewrite func([]byte, string) ([]byte, error)
	if canonical && r.Method == http.MethodGet {
		rewrite = memberRewriter(clean)
	}
	s.forward(rec, r, rewrite, entry)
}

// accessEntry is what the access log and metrics need of a request, kept
// apart from the request so a long watch does not keep it alive.
type accessEntry struct {
	remote, method, uri, proto, user string
	start                            time.Time
	status                           int
	bytes                            int64
	watch                            bool // a watch was forwarded
	forwardedWrite                   bool // a write was forwarded
}

func newAccessEntry(r *http.Request, start time.Time) accessEntry {
	return accessEntry{remote: r.RemoteAddr, method: r.Method, uri: r.RequestURI, proto: r.Proto, start: start}
}

// finish records a finished request in the metrics and the access log,
// and charges a watch answered at once to its client (see quickWatch).
func (s *Server) finish(e accessEntry) {
	if e.status == 0 {
		e.status = http.StatusOK
	}
	elapsed := time.Since(e.start)
	if e.watch {
		if elapsed < quickWatch {
			s.chargeClient(e.remote)
		}
		s.metrics.openWatches.Dec() // after the charge: tests wait on it
	}
	s.metrics.observe(e.method, e.status, elapsed, e.watch)
	if s.accessLog != nil {
		s.accessLog.request(e, elapsed)
	}
}

// forward proxies r to etcd and copies the answer back.
func (s *Server) forward(w *recorder, r *http.Request, rewrite func([]byte, string) ([]byte, error), entry accessEntry) {
	resp, uc, err := s.fwd.roundTrip(r)
	if err != nil {
		s.forwardError(w, r, err)
		return
	}
	if rewrite != nil && resp.StatusCode == http.StatusOK && resp.Header.Get("Content-Encoding") == "" {
		s.writeRewritten(w, r, resp, uc, rewrite)
		return
	}
	if entry.watch && s.streamWatch(w, r, resp, uc, entry) {
		return
	}
	// A client going away must not leave a watch's upstream connection
	// (and etcd's watcher) behind.
	stop := context.AfterFunc(r.Context(), func() { uc.Close() })
	reusable, err := s.fwd.copyResponse(w, resp, uc)
	if !stop() {
		reusable = false
	}
	if reusable {
		uc.pool.put(uc)
	} else {
		uc.Close()
	}
	var upErr *upstreamError
	if errors.As(err, &upErr) && r.Context().Err() == nil {
		s.fwd.onError(uc.pool.target, upErr.err)
		// Headers are out: cut the connection so the client sees a
		// truncated answer rather than a short one.
		panic(http.ErrAbortHandler)
	}
}

// writeRewritten answers with the member list rewritten to the gate's URL
// (see memberRewriter).
func (s *Server) writeRewritten(w http.ResponseWriter, r *http.Request, resp *http.Response, uc *upstreamConn, rewrite func([]byte, string) ([]byte, error)) {
	const limit = 4 << 20
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	uc.Close() // member lists are rare; no need to keep the connection
	if err != nil {
		s.forwardError(w, r, &upstreamError{fmt.Errorf("read member list: %w", err)})
		return
	}
	if len(body) <= limit {
		if out, err := rewrite(body, s.selfURL(r)); err != nil {
			s.log.Warn("member list not rewritten; passing it unchanged", "path", r.URL.Path, "err", err)
		} else {
			body = out
		}
	}
	copyResponseHeader(w.Header(), resp.Header, true)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(resp.StatusCode)
	w.Write(body)
}

// admitWrite decides whether a write may go to etcd, answering the client
// itself when it may not: 403 in read-only mode, a redirect for a path
// etcd would not take as written, 401 when the ACL does not allow it.
// It returns the authenticated user, if any.
func (s *Server) admitWrite(w http.ResponseWriter, r *http.Request, clean string, canonical bool) (string, bool) {
	if s.ReadOnly() {
		s.metrics.readOnlyRejections.Inc()
		writeJSON(w, http.StatusForbidden, bodyReadOnly)
		return "", false
	}
	if !canonical {
		// What etcd itself answers for most unclean paths (307 since Go
		// 1.22's ServeMux, 301 before); a client that follows it is judged
		// again on the clean path.
		http.Redirect(w, r, (&url.URL{Path: clean, RawQuery: r.URL.RawQuery}).String(), http.StatusTemporaryRedirect)
		return "", false
	}
	return s.authorize(w, r, clean)
}

// authorize decides a write to the clean path by the ACL, answering 401
// itself when the write is not allowed. It returns the authenticated
// user, if any.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, clean string) (string, bool) {
	acl := s.acl.Load()
	key, isKey := keyOf(clean)
	if isKey && acl.MayWrite(key, "") {
		return "", true
	}
	name, password, hasAuth := r.BasicAuth()
	if !hasAuth {
		s.unauthorized(w, "no_credentials")
		return "", false
	}
	users := s.users.Load()
	if users == nil {
		s.unauthorized(w, "bad_credentials")
		return "", false
	}
	ok, cached := users.Verify(name, password)
	switch {
	case !ok:
		s.metrics.credentialChecks.WithLabelValues("rejected").Inc()
		s.log.Info("bad credentials", "user", name, "remote", r.RemoteAddr, "path", clean)
		s.unauthorized(w, "bad_credentials")
		return "", false
	case cached:
		s.metrics.credentialChecks.WithLabelValues("cached").Inc()
	default:
		s.metrics.credentialChecks.WithLabelValues("verified").Inc()
	}
	if (isKey && acl.MayWrite(key, name)) || (!isKey && acl.IsAdmin(name)) {
		return name, true
	}
	s.log.Info("write not allowed by ACL", "user", name, "method", r.Method, "path", clean)
	s.unauthorized(w, "not_allowed")
	return name, false
}

func (s *Server) unauthorized(w http.ResponseWriter, reason string) {
	s.metrics.authFailures.WithLabelValues(reason).Inc()
	w.Header().Set("WWW-Authenticate", `Basic realm="etcd"`)
	writeJSON(w, http.StatusUnauthorized, bodyUnauthorized)
}

func (s *Server) tooLarge(w http.ResponseWriter) {
	writeError(w, http.StatusRequestEntityTooLarge, 210, "Invalid POST form",
		"gate: request body larger than "+strconv.FormatInt(s.cfg.MaxBodyBytes, 10)+" bytes")
}

func (s *Server) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	var tooBig *http.MaxBytesError
	switch {
	case r.Context().Err() != nil:
		if rec, ok := w.(*recorder); ok {
			rec.status = 499 // the client went away; nothing to answer
		}
	case errors.As(err, &tooBig):
		s.tooLarge(w)
	case errors.Is(err, errClientBody):
		s.log.Info("request body unreadable", "remote", r.RemoteAddr, "err", err)
		writeError(w, http.StatusBadRequest, 210, "Invalid POST form", "gate: request body unreadable")
	case errors.Is(err, errUpstreamTimeout) && !isReadMethod(r.Method):
		s.log.Error("etcd did not answer a write in time", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusGatewayTimeout, 300, "Raft Internal Error",
			"gate: etcd did not answer in time; the write may have been applied: read the key before retrying")
	case !isReadMethod(r.Method) && !errors.As(err, new(*dialError)):
		s.log.Error("etcd went away before answering a write", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusBadGateway, 300, "Raft Internal Error",
			"gate: etcd went away before answering; the write may have been applied: read the key before retrying")
	case errors.Is(err, errUpstreamTimeout):
		s.log.Error("no upstream answered in time", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusGatewayTimeout, 300, "Raft Internal Error", "gate: no upstream etcd answered in time")
	default:
		s.log.Error("no upstream answered", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusBadGateway, 300, "Raft Internal Error", "gate: no upstream etcd reachable")
	}
}

func writeJSON(w http.ResponseWriter, code int, body string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	io.WriteString(w, body)
}

// writeError answers with an etcd v2 error body.
func writeError(w http.ResponseWriter, code, etcdCode int, message, cause string) {
	writeJSON(w, code, fmt.Sprintf(`{"errorCode":%d,"message":%q,"cause":%q,"index":0}`, etcdCode, message, cause))
}

// recorder notes the status and size of a response for logs and metrics.
type recorder struct {
	http.ResponseWriter
	status    int
	bytes     int64
	handedOff bool // the connection was hijacked for a watch stream
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 && code >= 200 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

// FlushError lets the proxy push watch headers and events out at once.
func (r *recorder) FlushError() error {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
		return nil
	}
	return http.NewResponseController(r.ResponseWriter).Flush()
}

// Unwrap gives http.ResponseController the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// bufferPool recycles the proxy's copy buffers.
type bufferPool struct{ pool sync.Pool }

type copyBuffer [32 << 10]byte

func newBufferPool() *bufferPool {
	return &bufferPool{pool: sync.Pool{New: func() any { return new(copyBuffer) }}}
}

func (p *bufferPool) Get() []byte  { return p.pool.Get().(*copyBuffer)[:] }
func (p *bufferPool) Put(b []byte) { p.pool.Put((*copyBuffer)(b)) }
