package relay

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// fallbackVersion is /version before etcd ever answered it: the v2 API the
// relay speaks is etcd 3.4's.
const fallbackVersion = `{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}`

// serveVersion answers /version with etcd's last answer.
func (s *Server) serveVersion(w http.ResponseWriter, r *http.Request) {
	s.count(kindInfo)
	body := []byte(fallbackVersion)
	if s.up != nil {
		if v, _ := s.up.infoNow(r.Context()); v != nil {
			body = v
		}
	}
	s.writeInfo(w, r, "application/json", body)
}

// serveHealth answers /health for the relay itself, in etcd's shape:
// true while the served data is current; false with a reason, and 503,
// while it may be stale (the relay still serves it) or there is none.
func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	s.count(kindInfo)
	st := s.hub.current()
	a := s.ageNow(time.Now())
	var reason string
	switch {
	case st == nil:
		reason = "no data yet: etcd has not answered and there was no cache"
	case a.age > 0:
		reason = fmt.Sprintf("stale: serving the copy at index %d, last known current %.0fs ago; etcd does not answer", st.index(), a.age)
	}
	body := `{"health":"true"}`
	status := http.StatusOK
	if reason != "" {
		b, _ := json.Marshal(map[string]string{"health": "false", "reason": reason})
		body, status = string(b), http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write([]byte(body))
}

// serveMachines answers /v2/machines with the relay's own URL: clients
// that sync their endpoints from it keep talking to the relay.
func (s *Server) serveMachines(w http.ResponseWriter, r *http.Request) {
	s.count(kindInfo)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET,HEAD")
		return
	}
	s.writeInfo(w, r, "text/plain; charset=utf-8", []byte(selfURL(r)))
}

// member is one entry of /v2/members, fields in etcd's order.
type member struct {
	ID         string   `json:"id"`
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
}

// serveMembers answers GET /v2/members with etcd's members, every client
// URL replaced by the relay's: etcdctl and the v2 client library sync
// their endpoints from it and would otherwise go around the relay. The
// leader is etcd's answer, rewritten the same way.
func (s *Server) serveMembers(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if isWriteMethod(r.Method) && !s.cfg.ForwardWrites {
			s.count(kindWriteRefused)
			errReadOnly().write(w)
			return
		}
		s.pass(w, r, true)
		return
	}
	s.count(kindInfo)
	if st := s.hub.current(); st != nil && st.clusterHeader != nil {
		w.Header()["X-Etcd-Cluster-Id"] = st.clusterHeader
	}
	if r.URL.Path == "/v2/members/leader" {
		s.serveLeader(w, r)
		return
	}
	var list struct {
		Members []member `json:"members"`
	}
	if s.up != nil {
		if _, raw := s.up.infoNow(r.Context()); raw != nil {
			json.Unmarshal(raw, &list)
		}
	}
	if len(list.Members) == 0 {
		list.Members = []member{{ID: "0", Name: "confsync-relay", PeerURLs: []string{}, ClientURLs: []string{}}}
	}
	for i := range list.Members {
		list.Members[i].ClientURLs = []string{selfURL(r)}
	}
	body, _ := json.Marshal(list)
	s.writeInfo(w, r, "application/json", append(body, '\n'))
}

// serveLeader answers /v2/members/leader from etcd, rewritten.
func (s *Server) serveLeader(w http.ResponseWriter, r *http.Request) {
	if s.up == nil {
		noUpstream(r).write(w)
		return
	}
	resp, err := s.up.roundTrip(r, false)
	if err != nil {
		unreachable(r, err).write(w)
		return
	}
	defer resp.Body.Close()
	var m member
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&m) != nil {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "etcd did not name its leader")
		return
	}
	m.ClientURLs = []string{selfURL(r)}
	body, _ := json.Marshal(m)
	s.writeInfo(w, r, "application/json", append(body, '\n'))
}

func (s *Server) writeInfo(w http.ResponseWriter, r *http.Request, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
}

// selfURL is the URL the client reached the relay at.
func selfURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil || r.Context().Value(tlsConnKey{}) != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}
