package gate

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type metrics struct {
	registry *prometheus.Registry

	requests           *prometheus.CounterVec
	duration           *prometheus.HistogramVec
	authFailures       *prometheus.CounterVec
	readOnlyRejections prometheus.Counter
	openWatches        prometheus.Gauge
	upstreamErrors     *prometheus.CounterVec
	failovers          prometheus.Counter
	credentialChecks   *prometheus.CounterVec
	reloads            *prometheus.CounterVec
	rateLimited        *prometheus.CounterVec
	slowBodies         prometheus.Counter
	accessLogDropped   prometheus.Counter
	accessLogRotations prometheus.Counter
	accessLogErrors    prometheus.Counter
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confsync_gate_requests_total",
			Help: "Requests answered, by HTTP status code and method.",
		}, []string{"code", "method"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "confsync_gate_request_duration_seconds",
			Help:    "Time to answer requests other than watches (wait=true), by method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"method"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confsync_gate_auth_failures_total",
			Help: "Writes refused with 401, by reason: no_credentials, bad_credentials, not_allowed.",
		}, []string{"reason"}),
		readOnlyRejections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "confsync_gate_read_only_rejections_total",
			Help: "Writes refused with 403 because the gate is read-only.",
		}),
		openWatches: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "confsync_gate_open_watches",
			Help: "wait=true requests being proxied now.",
		}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confsync_gate_upstream_errors_total",
			Help: "Failed attempts to reach an upstream etcd, by upstream URL.",
		}, []string{"upstream"}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "confsync_gate_upstream_failovers_total",
			Help: "Times the preferred upstream changed because it could not be reached.",
		}),
		credentialChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confsync_gate_credential_checks_total",
			Help: "Password checks, by result: cached (verified from the cache), verified (hash computed), rejected.",
		}, []string{"result"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confsync_gate_config_reloads_total",
			Help: "Reloads of configuration files, by file kind and result (ok, error; on error the previous config stays).",
		}, []string{"file", "result"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confsync_gate_rate_limited_total",
			Help: "Requests refused with 429, by the bucket that was empty: client (address) or user.",
		}, []string{"by"}),
		slowBodies: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "confsync_gate_slow_bodies_total",
			Help: "Requests refused with 408 because their body came too slowly; nothing was forwarded.",
		}),
		accessLogDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "confsync_gate_access_log_dropped_total",
			Help: "Access log lines not written: past the rate bound, or while the file could not be rotated.",
		}),
		accessLogRotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "confsync_gate_access_log_rotations_total",
			Help: "Times the access log reached its size bound and was rotated.",
		}),
		accessLogErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "confsync_gate_access_log_errors_total",
			Help: "Failures to write or rotate the access log.",
		}),
	}
	m.registry.MustRegister(
		m.requests, m.duration, m.authFailures, m.readOnlyRejections, m.openWatches,
		m.upstreamErrors, m.failovers, m.credentialChecks, m.reloads,
		m.rateLimited, m.slowBodies, m.accessLogDropped, m.accessLogRotations, m.accessLogErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "confsync_gate_rate_limit_buckets",
			Help:        "Token buckets held for rate limiting (clients or users seen lately, not yet refilled).",
			ConstLabels: prometheus.Labels{"by": "client"},
		}, func() float64 { return float64(s.clientBuckets.size()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "confsync_gate_rate_limit_buckets",
			Help:        "Token buckets held for rate limiting (clients or users seen lately, not yet refilled).",
			ConstLabels: prometheus.Labels{"by": "user"},
		}, func() float64 { return float64(s.userBuckets.size()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "confsync_gate_read_only",
			Help: "1 while the gate refuses writes (read-only mode), else 0.",
		}, func() float64 { return boolFloat(s.ReadOnly()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "confsync_gate_tls_certificate_expiry_timestamp_seconds",
			Help: "NotAfter of the serving certificate, as a Unix time (0 without TLS).",
		}, func() float64 { return float64(s.certificateExpiry().Unix()) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// methodLabel bounds the method label to the methods etcd knows, so a
// client sending made-up methods cannot grow the metric without limit.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost,
		http.MethodDelete, http.MethodOptions, http.MethodPatch:
		return m
	}
	return "other"
}

func (m *metrics) observe(method string, code int, elapsed time.Duration, watch bool) {
	method = methodLabel(method)
	m.requests.WithLabelValues(strconv.Itoa(code), method).Inc()
	if !watch {
		m.duration.WithLabelValues(method).Observe(elapsed.Seconds())
	}
}

// MetricsHandler serves the gate's own endpoints, meant for a separate
// (internal) listener:
//
//	/metrics  Prometheus metrics of the gate (etcd's own /metrics stays
//	          reachable through the gate itself)
//	/healthz  200 while the process serves; reports read-only mode
//	/readyz   200 when an upstream etcd answers GET /version, else 503
func (s *Server) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, fmt.Sprintf(`{"health":"ok","read_only":%t}`, s.ReadOnly()))
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s.Status(r.Context()))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.probeUpstream(r.Context()); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, fmt.Sprintf(`{"ready":false,"error":%q}`, err.Error()))
			return
		}
		writeJSON(w, http.StatusOK, `{"ready":true}`)
	})
	return mux
}

// probeUpstream asks the preferred upstream (and, failing it, the next)
// for /version. One that cannot be reached or does not answer in time is
// given up on, as for any request.
func (s *Server) probeUpstream(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.UpstreamTimeout+time.Second) // the header timeout decides
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "/version", nil)
	if err != nil {
		return err
	}
	req.RemoteAddr = "127.0.0.1:0"
	resp, uc, err := s.fwd.roundTrip(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	if err == nil && !resp.Close {
		uc.pool.put(uc)
	} else {
		uc.Close()
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("upstream answered %s", resp.Status)
	}
	return err
}

// Status is the gate's state as /status (on the metrics address) reports
// it and `confsync status` shows it.
type Status struct {
	// Kind is "gate".
	Kind     string `json:"kind"`
	Listen   string `json:"listen"`
	ReadOnly bool   `json:"read_only"`
	// Upstreams are the etcd members in failover order; Preferred is the
	// one requests go to first.
	Upstreams []string `json:"upstreams"`
	Preferred string   `json:"preferred"`
	// UpstreamError is what the preferred upstream (and the next, failing
	// it) answered when asked for /version just now; "" when it answered.
	UpstreamError string `json:"upstream_error,omitempty"`
	// OpenWatches are the watches clients hold open through the gate.
	OpenWatches int `json:"open_watches"`
}

// Status reports the gate's state, asking the upstream how it is.
func (s *Server) Status(ctx context.Context) Status {
	st := Status{Kind: "gate", Listen: s.cfg.Listen, ReadOnly: s.ReadOnly(), Upstreams: s.cfg.Upstreams,
		Preferred: s.fwd.current().String()}
	if err := s.probeUpstream(ctx); err != nil {
		st.UpstreamError = err.Error()
	}
	s.streamsMu.Lock()
	st.OpenWatches = len(s.streams)
	s.streamsMu.Unlock()
	return st
}

// Registry is where the gate's metrics live.
func (s *Server) Registry() *prometheus.Registry { return s.metrics.registry }
