package agent

import (
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the agent's Prometheus metrics. Counters are kept as they
// happen; gauges are computed from Status at scrape time, so they can never
// disagree with /status.
type metrics struct {
	agent          *Agent
	renders        *prometheus.CounterVec
	writes         *prometheus.CounterVec
	errors         *prometheus.CounterVec
	renderDuration prometheus.Histogram
	resyncs        *prometheus.CounterVec
	watchRestarts  *prometheus.CounterVec
	fetchErrors    *prometheus.CounterVec

	healthy, errorTime, lastSuccess, dataAge, index, backendUp, ready, failedFiles *prometheus.Desc
	watchInfo, watchConnected, watchIndex, watchAge                                *prometheus.Desc
}

func newMetrics(reg *prometheus.Registry, a *Agent) *metrics {
	m := &metrics{
		agent: a,
		renders: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "confsync_resource_renders_total",
			Help: "Renders of a resource (each compares with the destination; see writes)."}, []string{"name"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "confsync_resource_writes_total",
			Help: "Times a resource's destination was replaced."}, []string{"name"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "confsync_errors_total",
			Help: "Failed resource attempts by step: fetch, template, write, check, reload."}, []string{"kind"}),
		renderDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "confsync_render_duration_seconds",
			Help:    "Time to render, compare and (when changed) write and check one resource.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}),
		resyncs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "confsync_resyncs_total",
			Help: "Full re-reads of the watched prefix (label root), by reason (periodic, history-cleared, index-went-backwards, cluster-id-changed, compacted, requested)."},
			[]string{"root", "reason"}),
		watchRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "confsync_watch_restarts_total",
			Help: "Watch requests of the watched prefix (label root) that ended in an error."}, []string{"root"}),
		fetchErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "confsync_fetch_errors_total",
			Help: "Failed reads of the watched prefix (label root)."}, []string{"root"}),
		healthy: prometheus.NewDesc("confd_resource_healthy",
			"1 when the resource's last attempt succeeded (confd's name, kept for existing alerts).", []string{"name"}, nil),
		errorTime: prometheus.NewDesc("confd_resource_error_timestamp_seconds",
			"Time of the resource's last failure, -1 when healthy (confd's name).", []string{"name"}, nil),
		lastSuccess: prometheus.NewDesc("confsync_resource_last_success_timestamp_seconds",
			"Time the resource last succeeded, 0 if never.", []string{"name"}, nil),
		dataAge: prometheus.NewDesc("confsync_data_age_seconds",
			"How old a root's data may be: 0 while etcd answers, else time since it last did; -1 when never.", []string{"root"}, nil),
		index: prometheus.NewDesc("confsync_etcd_index",
			"The etcd index a root's data is current to.", []string{"root"}, nil),
		backendUp: prometheus.NewDesc("confsync_backend_up",
			"1 when every root's source answers.", nil, nil),
		ready: prometheus.NewDesc("confsync_ready",
			"1 when every resource has been rendered at least once.", nil, nil),
		failedFiles: prometheus.NewDesc("confsync_resource_files_failed",
			"Resource files that do not load.", nil, nil),
		watchInfo: prometheus.NewDesc("confsync_watch_info",
			"The one watch every root is cut from: its prefix, the endpoint in use and its mode (stream, long-poll, v3-watch or interval).",
			[]string{"prefix", "endpoint", "mode"}, nil),
		watchConnected: prometheus.NewDesc("confsync_watch_connected",
			"1 while the watch's last request to etcd succeeded.", nil, nil),
		watchIndex: prometheus.NewDesc("confsync_watch_index",
			"The etcd index the watched prefix is current to.", nil, nil),
		watchAge: prometheus.NewDesc("confsync_watch_data_age_seconds",
			"How old the watched data may be: 0 while etcd answers, else time since it last did; -1 when never.", nil, nil),
	}
	reg.MustRegister(m.renders, m.writes, m.errors, m.renderDuration, m.resyncs, m.watchRestarts, m.fetchErrors, m,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observeRender(d time.Duration) { m.renderDuration.Observe(d.Seconds()) }

// Resync, WatchRestart and FetchError make metrics a watch.Observer.
func (m *metrics) Resync(root, reason string) { m.resyncs.WithLabelValues(root, reason).Inc() }
func (m *metrics) WatchRestart(root string, _ error) {
	m.watchRestarts.WithLabelValues(root).Inc()
}
func (m *metrics) FetchError(root string, _ error) {
	m.fetchErrors.WithLabelValues(root).Inc()
	m.errors.WithLabelValues(string(KindFetch)).Inc()
}

// Describe and Collect make metrics a collector of the computed gauges.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.healthy, m.errorTime, m.lastSuccess, m.dataAge, m.index, m.backendUp, m.ready,
		m.failedFiles, m.watchInfo, m.watchConnected, m.watchIndex, m.watchAge} {
		ch <- d
	}
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	s := m.agent.Status()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, r := range s.Resources {
		gauge(m.healthy, boolValue(r.Healthy), r.Name)
		errAt := -1.0
		if r.LastErrorAt != nil && !r.Healthy {
			errAt = float64(r.LastErrorAt.Unix())
		}
		gauge(m.errorTime, errAt, r.Name)
		success := 0.0
		if r.LastSuccess != nil {
			success = float64(r.LastSuccess.Unix())
		}
		gauge(m.lastSuccess, success, r.Name)
	}
	for _, f := range s.FailedFiles {
		gauge(m.healthy, 0, filepath.Base(f.File))
	}
	for _, r := range s.Roots {
		gauge(m.dataAge, r.AgeSeconds, r.Root)
		gauge(m.index, float64(r.Index), r.Root)
	}
	w := s.Watch
	gauge(m.watchInfo, 1, w.Prefix, w.Endpoint, w.Mode)
	gauge(m.watchConnected, boolValue(w.Connected))
	gauge(m.watchIndex, float64(w.Index))
	gauge(m.watchAge, w.AgeSeconds)
	gauge(m.backendUp, boolValue(s.BackendUp))
	gauge(m.ready, boolValue(s.Ready))
	gauge(m.failedFiles, float64(len(s.FailedFiles)))
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
