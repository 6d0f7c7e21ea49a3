package mirror

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are one mirror's Prometheus series, in a registry of its own.
// The etcdmirror_* names and their url/prefix labels are etcdmirror's, so
// existing alerts (etcdmirror_lag > 50) keep working.
type metrics struct {
	reg           *prometheus.Registry
	replicated    prometheus.Counter
	writeLatency  prometheus.Histogram
	loadTime      prometheus.Summary
	events        *prometheus.CounterVec
	ignored       *prometheus.CounterVec
	resyncs       *prometheus.CounterVec
	resyncChanges *prometheus.CounterVec
	errors        *prometheus.CounterVec
	phase         *prometheus.GaugeVec
}

func newMetrics(m *Mirror) *metrics {
	labels := prometheus.Labels{"url": m.cfg.MetricsURL, "prefix": m.keys.dstRoot}
	x := &metrics{
		reg: prometheus.NewRegistry(),
		replicated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "etcdmirror_replicated_events_total",
			Help: "Source events replicated to the destination (applied, or found already applied).",
		}),
		writeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "etcdmirror_write_latency",
			Help:        "Seconds spent applying one event to the destination.",
			ConstLabels: labels,
			Buckets:     prometheus.DefBuckets,
		}),
		loadTime: prometheus.NewSummary(prometheus.SummaryOpts{
			Name: "etcdmirror_load_time",
			Help: "Seconds spent on each full resynchronisation.",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confsync_mirror_events_total",
			Help: "Source events handled, by action and outcome (applied, already_applied, superseded).",
		}, []string{"action", "outcome"}),
		ignored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confsync_mirror_ignored_events_total",
			Help: "Source events not applied, by reason (regex, hidden, outside_prefix).",
		}, []string{"reason"}),
		resyncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confsync_mirror_resyncs_total",
			Help: "Full resynchronisations, by reason (reload, history_cleared, interrupted).",
		}, []string{"reason"}),
		resyncChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confsync_mirror_resync_changes_total",
			Help: "Destination keys a resynchronisation wrote or deleted, by kind of difference.",
		}, []string{"kind"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confsync_mirror_errors_total",
			Help: "Failed requests that were retried, by side (source, destination).",
		}, []string{"side"}),
		phase: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "confsync_mirror_phase",
			Help: "1 for the current phase (starting, standby, resync, streaming, stopped), 0 for the others.",
		}, []string{"phase"}),
	}
	gauge := func(name, help string, constLabels prometheus.Labels, f func(Status) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: constLabels},
			func() float64 { return f(m.Status()) })
	}
	x.reg.MustRegister(
		x.replicated, x.writeLatency, x.loadTime, x.events, x.ignored, x.resyncs, x.resyncChanges, x.errors, x.phase,
		gauge("etcdmirror_lag", "Source index minus the index applied on the destination, in etcd indexes; never negative.",
			labels, func(s Status) float64 { return float64(s.LagEvents) }),
		gauge("confsync_mirror_lag_events", "Source index minus the index applied on the destination; never negative.",
			nil, func(s Status) float64 { return float64(s.LagEvents) }),
		gauge("confsync_mirror_lag_seconds", "How long the destination has been behind the latest known source index; 0 when caught up.",
			nil, func(s Status) float64 { return s.LagSeconds }),
		gauge("confsync_mirror_source_index", "Latest source index the mirror knows of.",
			nil, func(s Status) float64 { return float64(s.SourceIndex) }),
		gauge("confsync_mirror_applied_index", "Every source event up to this index is on the destination.",
			nil, func(s Status) float64 { return float64(s.AppliedIndex) }),
		gauge("confsync_mirror_persisted_index", "Index last recorded in the destination's replication index key.",
			nil, func(s Status) float64 { return float64(s.PersistedIndex) }),
		gauge("confsync_mirror_last_progress_timestamp_seconds", "When the mirror last made progress (Unix time).",
			nil, func(s Status) float64 { return unix(s.LastProgress) }),
		gauge("confsync_mirror_last_error_timestamp_seconds", "When the last error happened (Unix time, 0 if none).",
			nil, func(s Status) float64 { return unix(s.LastErrorAt) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "confsync_mirror_lock_losses_total",
			Help: "Times this mirror lost its destination lock and stopped writing."},
			func() float64 { return float64(m.Status().LockLosses) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "confsync_mirror_lock_held",
			Help: "1 while this mirror holds the destination lock (and may write), 0 otherwise (standby, starting, stopped)."},
			func() float64 {
				if m.lock != nil && m.lock.check() == nil {
					return 1
				}
				return 0
			}),
		gauge("confsync_mirror_healthy", "1 while the mirror makes progress, 0 once it has stalled for longer than the stall timeout.",
			nil, func(s Status) float64 {
				if s.Healthy {
					return 1
				}
				return 0
			}),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return x
}

func (x *metrics) setPhase(p string) {
	for _, name := range []string{phaseStarting, phaseStandby, phaseResync, phaseStreaming, phaseStopped} {
		v := 0.0
		if name == p {
			v = 1
		}
		x.phase.WithLabelValues(name).Set(v)
	}
}
