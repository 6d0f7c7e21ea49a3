package mirror

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const helpPage = `confsync mirror
/lag      replication lag in etcd indexes, a plain integer (never negative)
/metrics  Prometheus metrics (etcdmirror_* names kept)
/healthz  200 while replication makes progress, 503 once it has stalled
/status   replication status as JSON
`

// Registry is the mirror's own Prometheus registry.
func (m *Mirror) Registry() *prometheus.Registry { return m.m.reg }

// Handler serves etcdmirror's /lag and /metrics, plus /healthz and /status.
func (m *Mirror) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, helpPage)
	})
	mux.HandleFunc("GET /lag", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "%d\n", m.Status().LagEvents)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.m.reg, promhttp.HandlerOpts{Registry: m.m.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		s := m.Status()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if s.Healthy {
			fmt.Fprintf(w, "ok: %s, applied through index %d, lag %d\n", s.Phase, s.AppliedIndex, s.LagEvents)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "stalled: %s, no progress for %s (applied through index %d, lag %d)",
			s.Phase, time.Since(s.LastProgress).Round(time.Second), s.AppliedIndex, s.LagEvents)
		if s.LastError != "" {
			fmt.Fprintf(w, "; last error at %s: %s", s.LastErrorAt.UTC().Format(time.RFC3339), s.LastError)
		}
		fmt.Fprintln(w)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(m.Status())
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, fmt.Sprintf("The desired url %s was not found", r.URL.Path), http.StatusNotFound)
	})
	return mux
}
