package etcdtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	client "go.etcd.io/etcd/client/v2"
)

// statusClient asks etcd members over HTTP how they are: the v3 status
// API through etcd's JSON gateway (served by 3.4 and 3.6 alike), /health,
// /version and v2 statistics. Each request has a short timeout and its own
// connection, so a hung member costs a second, not a stuck test, and the
// harness leaves no idle connection behind to skew what a test counts.
type statusClient struct {
	hc *http.Client
}

func newStatusClient() *statusClient {
	return &statusClient{hc: &http.Client{
		Timeout:   time.Second,
		Transport: &http.Transport{DisableKeepAlives: true},
	}}
}

func (s *statusClient) close() { s.hc.CloseIdleConnections() }

// memberStatus is what a member says of itself and its leader.
type memberStatus struct {
	memberID  uint64
	leaderID  uint64 // 0 when it knows no leader
	clusterID string // hexadecimal, as in X-Etcd-Cluster-Id
}

func (s *statusClient) status(url string) (memberStatus, error) {
	resp, err := s.hc.Post(url+"/v3/maintenance/status", "application/json", strings.NewReader("{}"))
	if err != nil {
		return memberStatus{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return memberStatus{}, fmt.Errorf("%s/v3/maintenance/status: %s", url, resp.Status)
	}
	// The gateway writes 64-bit integers as JSON strings.
	var body struct {
		Header struct {
			ClusterID string `json:"cluster_id"`
			MemberID  string `json:"member_id"`
		} `json:"header"`
		Leader string `json:"leader"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return memberStatus{}, fmt.Errorf("%s/v3/maintenance/status: %w", url, err)
	}
	var st memberStatus
	var cluster uint64
	for _, f := range []struct {
		text string
		dst  *uint64
	}{{body.Header.ClusterID, &cluster}, {body.Header.MemberID, &st.memberID}, {body.Leader, &st.leaderID}} {
		if f.text == "" {
			continue // omitted when zero
		}
		if *f.dst, err = strconv.ParseUint(f.text, 10, 64); err != nil {
			return memberStatus{}, fmt.Errorf("%s/v3/maintenance/status: %w", url, err)
		}
	}
	st.clusterID = strconv.FormatUint(cluster, 16)
	return st, nil
}

// healthy reports whether url's /health says true: the member serves and
// sees a leader.
func (s *statusClient) healthy(url string) bool {
	var body struct {
		Health string `json:"health"`
	}
	return s.getJSON(url+"/health", &body) == nil && body.Health == "true"
}

// serving reports whether the member at url answers HTTP at all.
func (s *statusClient) serving(url string) bool {
	var body map[string]any
	return s.getJSON(url+"/version", &body) == nil
}

// watchers reads the v2 watcher count from url's /v2/stats/store.
func (s *statusClient) watchers(url string) (int, error) {
	var body struct {
		Watchers *int `json:"watchers"`
	}
	if err := s.getJSON(url+"/v2/stats/store", &body); err != nil {
		if strings.Contains(err.Error(), "404") {
			return 0, fmt.Errorf("%w (an etcd without the v2 API, such as 3.6, has no v2 watchers to count)", err)
		}
		return 0, err
	}
	if body.Watchers == nil {
		return 0, fmt.Errorf("%s/v2/stats/store has no watchers field", url)
	}
	return *body.Watchers, nil
}

func (s *statusClient) getJSON(url string, v any) error {
	resp, err := s.hc.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return nil
}

// leader polls the members at urls (empty strings are members to skip but
// still count toward the quorum) until one says it leads and a quorum of
// all members names it, and returns its index.
func (s *statusClient) leader(urls []string, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		statuses := make([]*memberStatus, len(urls))
		for i, u := range urls {
			if u == "" {
				continue
			}
			if st, err := s.status(u); err == nil {
				statuses[i] = &st
			}
		}
		if i, ok := quorumLeader(statuses); ok {
			return i, nil
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("no leader that a quorum of the %d members acknowledges within %s", len(urls), timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// quorumLeader finds the member that says it leads and that a quorum of
// all members (nil: no answer) name as leader.
func quorumLeader(statuses []*memberStatus) (int, bool) {
	for i, st := range statuses {
		if st == nil || st.leaderID == 0 || st.leaderID != st.memberID {
			continue
		}
		votes := 0
		for _, o := range statuses {
			if o != nil && o.leaderID == st.memberID {
				votes++
			}
		}
		if votes > len(statuses)/2 {
			return i, true
		}
	}
	return -1, false
}

// v2Client is a v2 keys client for endpoints; tr may be nil.
func v2Client(endpoints []string, tr client.CancelableTransport) client.KeysAPI {
	cfg := client.Config{Endpoints: endpoints, HeaderTimeoutPerRequest: 10 * time.Second}
	if tr != nil {
		cfg.Transport = tr
	}
	c, err := client.New(cfg)
	if err != nil {
		panic(err) // only fails for malformed endpoints, which the harness built
	}
	return client.NewKeysAPI(c)
}
