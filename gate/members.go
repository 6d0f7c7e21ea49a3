package gate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
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

// checkUpstreams asks the preferred upstream for etcd's /health, which
// fails on a member that is down, hung, has no leader (a follower cut off
// from the others, serving ever older data) or raised an alarm. When it
// fails, the first other upstream that is healthy becomes the preferred
// one, and the watches on the unhealthy one are ended so that their
// clients watch again there. When none is healthy nothing changes:
// failing over would not help, and ending watches would only make every
// client reconnect.
func (s *Server) checkUpstreams(ctx context.Context) error {
	f := s.fwd
	cur := int(f.preferred.Load()) % len(f.pools)
	err := s.upstreamHealth(ctx, f.pools[cur])
	if err == nil {
		return nil
	}
	for i := 1; i < len(f.pools); i++ {
		next := (cur + i) % len(f.pools)
		if s.upstreamHealth(ctx, f.pools[next]) != nil {
			continue
		}
		if f.preferred.CompareAndSwap(int64(cur), int64(next)) {
			s.log.Warn("preferred upstream unhealthy", "upstream", f.pools[cur].target.String(), "err", err)
			f.onSwitch(f.pools[cur].target, f.pools[next].target)
			f.onDown(f.pools[cur].target, err)
		}
		return nil
	}
	if len(f.pools) > 1 {
		s.log.Warn("no upstream is healthy; staying with the preferred one", "upstream", f.pools[cur].target.String(), "err", err)
	}
	return err
}

// upstreamHealth asks one upstream for /health.
func (s *Server) upstreamHealth(ctx context.Context, pool *connPool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "/health", nil)
	if err != nil {
		return err
	}
	req.RemoteAddr = "127.0.0.1:0"
	resp, uc, err := s.fwd.tryUpstream(pool, req, true)
	if err != nil {
		s.metrics.upstreamErrors.WithLabelValues(pool.target.String()).Inc()
		return err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if err == nil && !resp.Close {
		uc.pool.put(uc)
	} else {
		uc.Close()
	}
	switch {
	case err != nil:
		return err
	case resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"health":"true"`)):
		return fmt.Errorf("/health answered %s %s", resp.Status, bytes.TrimSpace(body))
	}
	return nil
}
