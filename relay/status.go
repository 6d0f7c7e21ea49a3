package relay

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/confsync/confsync/backends/watch"
)

// Status is what the relay's /status reports (on the metrics listener),
// for `confsync status` and for a person with curl.
type Status struct {
	// Kind tells confsync status which daemon answered: "relay".
	Kind    string    `json:"kind"`
	Started time.Time `json:"started"`
	// Ready is true once the relay has data to serve, from etcd or cache.
	Ready bool `json:"ready"`
	// Watch is the one watch feeding the relay; nil when the Server was
	// built without Config.Status.
	Watch *watch.Status `json:"watch,omitempty"`
	// AgeSeconds is how old the served data may be, as the X-Confsync-Data-Age
	// header: 0 current, -1 no data yet.
	AgeSeconds float64 `json:"age_seconds"`
	// Index is the etcd index of the served copy.
	Index   uint64        `json:"etcd_index"`
	History HistoryStatus `json:"history"`
	// Watchers are the clients' watches waiting now, by mode.
	Watchers WatcherCounts `json:"watchers"`
	// FanoutWrites is how the fan-out writes an event to waiting clients:
	// "io_uring" (up to 128 answers per system call) or "write" (one each:
	// -no-io-uring, or io_uring missing or refused).
	FanoutWrites string `json:"fanout_writes"`
}

// HistoryStatus is the event history kept for watchers that resume: a
// waitIndex at or above Floor is answered from it, one below gets 401.
type HistoryStatus struct {
	Events int    `json:"events"`
	Floor  uint64 `json:"floor"`
	Limit  int    `json:"limit"`
}

// WatcherCounts counts the clients' watches by mode.
type WatcherCounts struct {
	LongPoll int `json:"long_poll"`
	Stream   int `json:"stream"`
}

// Status reports the relay now.
func (s *Server) Status() Status {
	longPolls, streams, events, floor := s.hub.counts()
	_, age := s.upstreamState(time.Now())
	st := Status{
		Kind:         "relay",
		Started:      s.started,
		AgeSeconds:   age,
		History:      HistoryStatus{Events: events, Floor: floor, Limit: s.cfg.History},
		Watchers:     WatcherCounts{LongPoll: longPolls, Stream: streams},
		FanoutWrites: s.batches.mode(),
	}
	if cur := s.hub.current(); cur != nil {
		st.Ready, st.Index = true, cur.index()
	}
	if s.cfg.Status != nil {
		ws := s.cfg.Status()
		st.Watch = &ws
	}
	return st
}

func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	body, err := json.MarshalIndent(s.Status(), "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(body, '\n'))
}
