package relay

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Request kinds counted by confsync_relay_requests_total.
const (
	kindGet          = "get"           // a GET answered from memory
	kindWatch        = "watch"         // a long poll answered from memory
	kindStream       = "stream"        // a streamed watch answered from memory
	kindUpstream     = "upstream"      // passed to etcd (outside the prefix, hidden, quorum, other paths)
	kindWrite        = "write"         // a write passed to etcd (-forward-writes)
	kindWriteRefused = "write_refused" // a write refused with 403
	kindInvalid      = "invalid"       // refused for bad parameters, method or path
	kindInfo         = "info"          // /version, /health, /v2/members, /v2/machines, /metrics
)

var requestKinds = []string{kindGet, kindWatch, kindStream, kindUpstream, kindWrite, kindWriteRefused, kindInvalid, kindInfo}

// metrics are the relay's Prometheus metrics. Counters count as things
// happen; gauges about the watch and the history are read at scrape time.
type metrics struct {
	requestsVec    *prometheus.CounterVec
	requests       map[string]prometheus.Counter
	fanout         prometheus.Histogram
	events         prometheus.Counter
	resets         *prometheus.CounterVec
	watchesEnded   *prometheus.CounterVec
	upstreamErrors prometheus.Counter

	server *Server
	descs  struct {
		watchers, upstreamUp, dataAge, index, historyEvents, historyFloor *prometheus.Desc
	}
}

func newMetrics() *metrics {
	m := &metrics{
		requestsVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confsync_relay_requests_total",
			Help: "Requests by kind: get, watch and stream (answered from memory), upstream (passed to etcd), write (passed to etcd), write_refused, invalid, info.",
		}, []string{"kind"}),
		requests: map[string]prometheus.Counter{},
		fanout: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "confsync_relay_fanout_seconds",
			Help:    "Time from the relay receiving an event to its answer being written to a waiting watcher, one observation per watcher.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "confsync_relay_events_total",
			Help: "Events under the prefix received from the watch.",
		}),
		resets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confsync_relay_resets_total",
			Help: "Full copies of the prefix installed, by reason and by what became of the history: kept (the copy matched) or restarted (events were missed; watches that needed them ended).",
		}, []string{"reason", "history"}),
		watchesEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confsync_relay_watches_ended_total",
			Help: "Watches the relay ended: slow (a stream fell 100 events behind) or history-restarted.",
		}, []string{"reason"}),
		upstreamErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "confsync_relay_upstream_errors_total",
			Help: "Requests that could not be passed to any etcd endpoint.",
		}),
	}
	for _, k := range requestKinds {
		m.requests[k] = m.requestsVec.WithLabelValues(k)
	}
	m.descs.watchers = prometheus.NewDesc("confsync_relay_watchers", "Watches waiting in the relay, by mode (long-poll, stream).", []string{"mode"}, nil)
	m.descs.upstreamUp = prometheus.NewDesc("confsync_relay_upstream_up", "1 while the watch of the prefix is connected to etcd.", nil, nil)
	m.descs.dataAge = prometheus.NewDesc("confsync_relay_data_age_seconds", "How old the served data may be: 0 while the watch is current, else the time since it was; -1 before any data.", nil, nil)
	m.descs.index = prometheus.NewDesc("confsync_relay_index", "The etcd index the served data is current to.", nil, nil)
	m.descs.historyEvents = prometheus.NewDesc("confsync_relay_history_events", "Events kept for watchers that resume.", nil, nil)
	m.descs.historyFloor = prometheus.NewDesc("confsync_relay_history_floor_index", "Waits with a waitIndex at or below this get error 401.", nil, nil)
	return m
}

// register adds the metrics to reg.
func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.requestsVec, m.fanout, m.events, m.resets, m.watchesEnded, m.upstreamErrors, m} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Describe and Collect make the gauges read at scrape time.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.descs.watchers, m.descs.upstreamUp, m.descs.dataAge, m.descs.index, m.descs.historyEvents, m.descs.historyFloor} {
		ch <- d
	}
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	s := m.server
	longPolls, streams, events, floor := s.hub.counts()
	ch <- prometheus.MustNewConstMetric(m.descs.watchers, prometheus.GaugeValue, float64(longPolls), "long-poll")
	ch <- prometheus.MustNewConstMetric(m.descs.watchers, prometheus.GaugeValue, float64(streams), "stream")
	up, age := s.upstreamState(time.Now())
	ch <- prometheus.MustNewConstMetric(m.descs.upstreamUp, prometheus.GaugeValue, boolFloat(up))
	ch <- prometheus.MustNewConstMetric(m.descs.dataAge, prometheus.GaugeValue, age)
	var index float64
	if st := s.hub.current(); st != nil {
		index = float64(st.index())
	}
	ch <- prometheus.MustNewConstMetric(m.descs.index, prometheus.GaugeValue, index)
	ch <- prometheus.MustNewConstMetric(m.descs.historyEvents, prometheus.GaugeValue, float64(events))
	ch <- prometheus.MustNewConstMetric(m.descs.historyFloor, prometheus.GaugeValue, float64(floor))
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
