package agent

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"sort"
	"time"

	"github.com/confsync/confsync/backends/watch"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Status is the agent's state as /status reports it and `confsync check`
// reads it.
type Status struct {
	// Kind is "agent", for `confsync status`.
	Kind      string    `json:"kind"`
	Started   time.Time `json:"started"`
	Ready     bool      `json:"ready"`
	BackendUp bool      `json:"backend_up"`
	// Watch is the one watch every root is cut from.
	Watch     WatchStatus      `json:"watch"`
	Roots     []RootStatus     `json:"roots"`
	Resources []ResourceStatus `json:"resources"`
	// FailedFiles are resource files that do not load and have no earlier
	// version running.
	FailedFiles []FileError `json:"failed_files,omitempty"`
}

// WatchStatus is the one watch: its prefix, endpoint, mode (stream,
// long-poll or interval), index and connection.
type WatchStatus struct {
	watch.Status
	// AgeSeconds is how old the data may be, as for a root.
	AgeSeconds float64 `json:"age_seconds"`
}

// RootStatus is one root the resources read.
type RootStatus struct {
	watch.RootStatus
	// AgeSeconds is how old the data may be: 0 while connected, else the
	// time since the root was last known current; -1 when never.
	AgeSeconds float64 `json:"age_seconds"`
}

// ResourceStatus is one resource.
type ResourceStatus struct {
	Name    string `json:"name"`
	File    string `json:"file"`
	Dest    string `json:"dest"`
	Healthy bool   `json:"healthy"`
	// Applied is true once the destination has been written from data
	// (from etcd or the cache).
	Applied       bool       `json:"applied"`
	LastSuccess   *time.Time `json:"last_success,omitempty"`
	LastError     string     `json:"last_error,omitempty"`
	LastErrorKind string     `json:"last_error_kind,omitempty"`
	LastErrorAt   *time.Time `json:"last_error_at,omitempty"`
	Failures      int        `json:"consecutive_failures"`
	PendingReload bool       `json:"pending_reload"`
	// ConfigError is set when the resource file no longer loads and the
	// previous version is still the one running.
	ConfigError string `json:"config_error,omitempty"`
	Renders     int    `json:"renders"`
	Writes      int    `json:"writes"`
}

// FileError is a resource file that does not load.
type FileError struct {
	File  string `json:"file"`
	Error string `json:"error"`
}

// Status reports the agent's state now.
func (a *Agent) Status() Status {
	now := time.Now()
	w := a.watcher.Status()
	s := Status{Kind: "agent", Started: a.started, BackendUp: w.Connected && !w.FromCache,
		Watch: WatchStatus{Status: w, AgeSeconds: w.Age(now).Seconds()}}
	for _, r := range a.watcher.Roots() {
		s.Roots = append(s.Roots, RootStatus{RootStatus: r, AgeSeconds: r.Age(now).Seconds()})
		if !r.Connected {
			s.BackendUp = false
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	s.Ready = true
	for file, st := range a.resources {
		rs := ResourceStatus{
			Name: st.res.Name, File: file, Dest: st.res.Dest, Applied: st.applied,
			Failures: st.failures, PendingReload: st.pendingReload != "",
			Renders: st.renders, Writes: st.writes,
		}
		if !st.lastSuccess.IsZero() {
			t := st.lastSuccess
			rs.LastSuccess = &t
		}
		if st.lastErr != nil {
			t := st.lastErrAt
			rs.LastError, rs.LastErrorKind, rs.LastErrorAt = st.lastErr.Error(), string(st.lastErrKind), &t
		}
		if err := a.loadErrs[file]; err != nil {
			rs.ConfigError = err.Error()
		}
		rs.Healthy = st.applied && st.lastErr == nil && rs.ConfigError == ""
		s.Ready = s.Ready && st.applied
		s.Resources = append(s.Resources, rs)
	}
	for file, err := range a.loadErrs {
		if _, running := a.resources[file]; !running {
			s.FailedFiles = append(s.FailedFiles, FileError{File: file, Error: err.Error()})
		}
	}
	sort.Slice(s.Resources, func(i, j int) bool { return s.Resources[i].File < s.Resources[j].File })
	sort.Slice(s.FailedFiles, func(i, j int) bool { return s.FailedFiles[i].File < s.FailedFiles[j].File })
	return s
}

// WatchStatus is the one watch's state: what a relay serving the agent's
// copy reports as its data age.
func (a *Agent) WatchStatus() watch.Status { return a.watcher.Status() }

// Handler serves /metrics, /healthz, /readyz, /status and /debug/pprof/.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.cfg.Registry, promhttp.HandlerOpts{}))
	// Profiles help diagnose a misbehaving agent; the address is loopback
	// by default, like the rest of this handler.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !a.Status().Ready {
			http.Error(w, "not ready: some resources have not been rendered yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(a.Status())
	})
	return mux
}
