package gate

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// memberRewriter returns how to rewrite the response to GET clean, or nil.
//
// etcdctl (v2) and the v2 client library, unless told --no-sync, read the
// member list and then talk to the client URLs etcd advertises. If those
// are etcd's own addresses every later request bypasses the gate, so the
// gate replaces every member's client URLs by its own URL. (It cannot know
// the URL of another host's gate; a client wanting several lists them all
// in --endpoints.)
func memberRewriter(clean string) func([]byte, string) ([]byte, error) {
	switch clean {
	case "/v2/members", "/v2/members/":
		return rewriteMemberList
	case "/v2/members/leader":
		return rewriteMember
	case "/v2/machines":
		return rewriteMachines
	}
	return nil
}

func rewriteMemberList(body []byte, self string) ([]byte, error) {
	var list map[string]json.RawMessage
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, err
	}
	var members []json.RawMessage
	if err := json.Unmarshal(list["members"], &members); err != nil {
		return nil, err
	}
	for i, m := range members {
		var err error
		if members[i], err = rewriteMember(m, self); err != nil {
			return nil, err
		}
	}
	raw, err := json.Marshal(members)
	if err != nil {
		return nil, err
	}
	list["members"] = raw
	return marshalLike(body, list)
}

func rewriteMember(body []byte, self string) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, err
	}
	var urls []string
	if raw, ok := m["clientURLs"]; ok {
		if err := json.Unmarshal(raw, &urls); err != nil {
			return nil, err
		}
	}
	if len(urls) == 0 { // a member that has not started yet
		return body, nil
	}
	m["clientURLs"], _ = json.Marshal([]string{self})
	return marshalLike(body, m)
}

func rewriteMachines(body []byte, self string) ([]byte, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return body, nil
	}
	return []byte(self), nil
}

// marshalLike encodes v, ending in a newline if the original did (etcd
// writes JSON with a trailing newline).
func marshalLike(orig []byte, v any) ([]byte, error) {
	out, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if bytes.HasSuffix(orig, []byte("\n")) {
		out = append(out, '\n')
	}
	return out, nil
}

// selfURL is the URL clients should use to reach this gate.
func (s *Server) selfURL(r *http.Request) string {
	if s.cfg.AdvertiseURL != "" {
		return s.cfg.AdvertiseURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// isWatch reports whether r is an etcd v2 long poll.
func isWatch(r *http.Request) bool {
	if r.Method != http.MethodGet || !strings.Contains(r.URL.RawQuery, "wait") {
		return false
	}
	b, err := strconv.ParseBool(r.URL.Query().Get("wait"))
	return err == nil && b
}
