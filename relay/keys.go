package relay

import (
	"errors"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"time"
)

const keysPrefix = "/v2/keys"

// serveKeys answers /v2/keys/...: reads of the prefix from memory, the
// rest upstream.
func (s *Server) serveKeys(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodPut, http.MethodPost, http.MethodDelete:
		s.serveWrite(w, r)
		return
	default:
		s.count(kindInvalid)
		methodNotAllowed(w, "HEAD,GET,PUT,POST,DELETE")
		return
	}
	st := s.hub.current()
	if st != nil && st.clusterHeader != nil {
		w.Header()["X-Etcd-Cluster-Id"] = st.clusterHeader
	}
	rd, err := parseKeyRead(r.Method, r.URL.Path, r.URL.RawQuery)
	if err != nil {
		s.count(kindInvalid)
		err.write(w)
		return
	}
	switch {
	case !rd.fromMemory(st):
		s.pass(w, r, false)
	case rd.wait:
		s.serveWatch(w, r, rd)
	default:
		s.serveGet(w, r, st, rd)
	}
}

// keyRead is a GET or HEAD of the keys API, checked as etcd checks it.
type keyRead struct {
	key                             string
	head                            bool
	recursive, wait, stream, quorum bool
	waitIndex                       uint64
}

// fromMemory reports whether the read is answered from st: a key of the
// prefix, not a quorum read (those go through etcd's raft).
func (rd *keyRead) fromMemory(st *state) bool { return !rd.quorum && st.serves(rd.key) }

// parseKeyRead checks a read's parameters as etcd does, in etcd's order,
// with etcd's errors: every parameter of the keys API is checked, those of
// writes too, though a read ignores them.
func parseKeyRead(method, urlPath, rawQuery string) (keyRead, *etcdError) {
	rd := keyRead{key: path.Join("/", urlPath[len(keysPrefix):]), head: method == http.MethodHead}
	f, err := url.ParseQuery(rawQuery)
	if err != nil {
		return rd, newError(codeInvalidForm, err.Error(), 0)
	}
	if _, err := formUint(f, "prevIndex"); err != nil {
		return rd, newError(codeIndexNaN, `invalid value for "prevIndex"`, 0)
	}
	if rd.waitIndex, err = formUint(f, "waitIndex"); err != nil {
		return rd, newError(codeIndexNaN, `invalid value for "waitIndex"`, 0)
	}
	bools := []struct {
		name string
		dst  *bool
	}{{"recursive", &rd.recursive}, {"sorted", nil}, {"wait", &rd.wait}, {"dir", nil}, {"quorum", &rd.quorum}, {"stream", &rd.stream}}
	for _, b := range bools {
		v, err := formBool(f, b.name)
		if err != nil {
			return rd, newError(codeInvalidField, `invalid value for "`+b.name+`"`, 0)
		}
		if b.dst != nil {
			*b.dst = v
		}
	}
	if rd.wait && method != http.MethodGet {
		return rd, newError(codeInvalidField, `"wait" can only be used with GET requests`, 0)
	}
	if vs, ok := f["prevValue"]; ok && vs[0] == "" {
		return rd, newError(codePrevValueRequired, `"prevValue" cannot be empty`, 0)
	}
	if _, err := formBool(f, "noValueOnSuccess"); err != nil {
		return rd, newError(codeInvalidField, `invalid value for "noValueOnSuccess"`, 0)
	}
	hasTTL := f.Get("ttl") != ""
	if hasTTL {
		if _, err := formUint(f, "ttl"); err != nil {
			return rd, newError(codeTTLNaN, `invalid value for "ttl"`, 0)
		}
	}
	if _, ok := f["prevExist"]; ok {
		if _, err := formBool(f, "prevExist"); err != nil {
			return rd, newError(codeInvalidField, "invalid value for prevExist", 0)
		}
	}
	if _, ok := f["refresh"]; ok {
		refresh, err := formBool(f, "refresh")
		switch {
		case err != nil:
			return rd, newError(codeInvalidField, "invalid value for refresh", 0)
		case refresh && f.Get("value") != "":
			return rd, newError(codeRefreshValue, "A value was provided on a refresh", 0)
		case refresh && !hasTTL:
			return rd, newError(codeRefreshTTL, "No TTL value set", 0)
		}
	}
	return rd, nil
}

// formUint and formBool read the first value of a parameter as etcd does;
// an absent parameter is zero.
func formUint(f url.Values, name string) (uint64, error) {
	vs, ok := f[name]
	if !ok {
		return 0, nil
	}
	return strconv.ParseUint(vs[0], 10, 64)
}

func formBool(f url.Values, name string) (bool, error) {
	vs, ok := f[name]
	if !ok {
		return false, nil
	}
	return strconv.ParseBool(vs[0])
}

// answer is the body of a GET of rd.key from st, or etcd's error when
// there is no such node.
func (st *state) answer(rd keyRead) ([]byte, *etcdError) {
	if st.space.Get(rd.key) == nil {
		return nil, st.missing(rd.key)
	}
	return st.getAnswer(rd.key, rd.recursive, time.Now()), nil
}

// serveGet answers a read from st.
func (s *Server) serveGet(w http.ResponseWriter, r *http.Request, st *state, rd keyRead) {
	s.count(kindGet)
	body, err := st.answer(rd)
	if err != nil {
		err.write(w)
		return
	}
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["X-Etcd-Index"] = st.indexHeader
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(http.StatusOK)
	if !rd.head {
		w.Write(body)
	}
}

// serveWatch answers wait=true: at once from history, or when the event
// comes. Headers go out at once, as etcd flushes them, with the index the
// watch was registered at.
func (s *Server) serveWatch(w http.ResponseWriter, r *http.Request, rd keyRead) {
	reg, err := s.hub.watch(rd, nil)
	var etcdErr *etcdError
	switch {
	case errors.Is(err, errNotServed):
		s.pass(w, r, false) // the prefix moved since the request was routed
		return
	case errors.Is(err, errClosed):
		return // shutting down: an empty answer, as etcd gives
	case errors.As(err, &etcdErr):
		s.count(kindInvalid)
		etcdErr.write(w)
		return
	}
	s.countWatch(rd.stream)
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["X-Etcd-Index"] = []string{strconv.FormatUint(reg.index, 10)}
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	for _, e := range reg.past {
		w.Write(e.body)
	}
	if reg.w == nil {
		return // a long poll answered from history
	}
	defer s.hub.unwatch(reg.w)
	rc.Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case e, ok := <-reg.w.ch:
			if !ok {
				return
			}
			if _, err := w.Write(e.body); err != nil {
				return
			}
			if !rd.stream {
				// net/http sends the event and the end of the answer
				// together when the handler returns.
				s.metrics.fanout.Observe(time.Since(e.received).Seconds())
				return
			}
			if rc.Flush() != nil {
				return
			}
			s.metrics.fanout.Observe(time.Since(e.received).Seconds())
		}
	}
}

func (s *Server) countWatch(stream bool) {
	if stream {
		s.count(kindStream)
	} else {
		s.count(kindWatch)
	}
}

// serveWrite passes a write upstream or refuses it.
func (s *Server) serveWrite(w http.ResponseWriter, r *http.Request) {
	if !s.cfg.ForwardWrites {
		s.count(kindWriteRefused)
		errReadOnly().write(w)
		return
	}
	s.pass(w, r, true)
}
