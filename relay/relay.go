package relay

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/watch"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultHistory is the number of events kept for watchers that resume:
// etcd's own window, which here holds only events under the prefix.
const DefaultHistory = 1000

// DataAgeHeader is on every answer: the seconds since the served data was
// last known current, 0 while it is, -1 when the relay has none.
const DataAgeHeader = "X-Confsync-Data-Age"

// Config configures a Server. Nothing in it is required: a Server with
// no Upstream serves the prefix and answers everything else with an
// error.
type Config struct {
	// Upstream is the etcd cluster that gets what the relay does not
	// answer itself: keys outside the prefix, hidden keys, quorum=true
	// reads, other paths, writes with ForwardWrites. Nil when there is no
	// v2 API to pass them to (a copy fed from etcd's v3 API): they get
	// etcd's error 300 then.
	Upstream *etcd.Client
	// Status reports the watch feeding the Listener; it gives the data
	// age. Nil counts the data as always current.
	Status func() watch.Status
	// History is the number of events under the prefix kept for watchers
	// that resume (default DefaultHistory).
	History int
	// ForwardWrites passes writes to Upstream unchanged. Otherwise they
	// are refused with 403 and errorCode 107, like the gate's read-only
	// mode.
	ForwardWrites bool
	// NoIOURing writes each answer to a waiting client with a system call
	// of its own, as happens anyway where io_uring is missing or refused
	// (the kernel.io_uring_disabled sysctl, a seccomp filter). Otherwise
	// an event's answers go out up to 128 per system call.
	NoIOURing bool
	// Registerer receives the relay's metrics. Nil keeps them, with the
	// Go runtime's and the process's, in a registry of the Server's own,
	// served by MetricsHandler and at /metrics.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Server answers etcd v2 clients from the copy of one prefix.
type Server struct {
	cfg      Config
	logger   *slog.Logger
	hub      *hub
	up       *upstream // nil without Config.Upstream
	metrics  *metrics
	registry *prometheus.Registry // nil when the metrics went to Config.Registerer
	age      atomic.Pointer[ageSample]
	date     atomic.Pointer[dateText]
	fanning  atomic.Pointer[chan struct{}] // closed when the running fan-out ends
	batches  *batchPool
	started  time.Time

	frontsMu sync.Mutex
	fronts   []*front
	shutdown bool
}

// New builds a Server. It serves nothing from memory until its Listener
// receives a first copy (from a watch.Watcher); until then every request
// goes upstream.
func New(cfg Config) *Server {
	if cfg.History <= 0 {
		cfg.History = DefaultHistory
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, logger: logger, metrics: newMetrics(), started: time.Now(), batches: newBatchPool(cfg.NoIOURing, logger)}
	s.metrics.server = s
	s.hub = newHub(cfg.History, s.metrics, logger)
	s.hub.write = s.fanout
	if cfg.Upstream != nil {
		s.up = newUpstream(cfg.Upstream, s.metrics, logger)
	}
	reg := cfg.Registerer
	if reg == nil {
		s.registry = prometheus.NewRegistry()
		s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg = s.registry
	}
	if err := s.metrics.register(reg); err != nil {
		logger.Warn("relay metrics not registered", "err", err)
	}
	return s
}

// Listener is what the watch of the prefix feeds: give it as
// watch.Config.Listener.
func (s *Server) Listener() watch.Listener { return s.hub }

// Handler serves etcd's v2 API.
func (s *Server) Handler() http.Handler { return s }

// MetricsHandler serves the relay's metrics when they are kept in its own
// registry; with Config.Registerer set, the caller serves them.
func (s *Server) MetricsHandler() http.Handler {
	if s.registry == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{})
}

// CloseWatches ends every watch being served and refuses new ones, as
// etcd does when it stops (clients get an empty answer and ask again).
// With Handler, call it before http.Server.Shutdown, which waits for open
// requests.
func (s *Server) CloseWatches() { s.hub.close() }

// Shutdown stops everything Serve serves: watches end (an empty answer,
// as etcd gives when it stops), listeners close, idle connections close,
// and requests in flight get until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.hub.close()
	defer s.batches.close()
	s.frontsMu.Lock()
	s.shutdown = true
	fronts := s.fronts
	s.fronts = nil
	s.frontsMu.Unlock()
	var errs []error
	for _, f := range fronts {
		errs = append(errs, f.shutdown(ctx))
	}
	return errors.Join(errs...)
}

func (s *Server) addFront(f *front) bool {
	s.frontsMu.Lock()
	defer s.frontsMu.Unlock()
	if s.shutdown {
		return false
	}
	s.fronts = append(s.fronts, f)
	return true
}

// Header values shared by every answer; net/http never modifies them.
var (
	jsonContentType = []string{"application/json"}
	corsMethods     = []string{"POST, GET, OPTIONS, PUT, DELETE"}
	corsOrigin      = []string{"*"}
	corsHeaders     = []string{"accept, content-type, authorization"}
)

// ServeHTTP routes a request: the keys API, the informational endpoints,
// and everything else upstream.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// etcd allows every origin by default.
	h["Access-Control-Allow-Methods"] = corsMethods
	h["Access-Control-Allow-Origin"] = corsOrigin
	h["Access-Control-Allow-Headers"] = corsHeaders
	s.setAge(h, s.hub.current())
	p := r.URL.Path
	if r.Method == http.MethodOptions {
		s.count(kindInfo)
		w.WriteHeader(http.StatusOK)
		return
	}
	if clean := cleanPath(p); clean != p {
		s.count(kindInvalid)
		redirectClean(w, r, clean)
		return
	}
	switch {
	case p == "/v2/keys" || strings.HasPrefix(p, "/v2/keys/"):
		s.serveKeys(w, r)
	case p == "/version":
		s.serveVersion(w, r)
	case p == "/health":
		s.serveHealth(w, r)
	case p == "/v2/machines":
		s.serveMachines(w, r)
	case p == "/v2/members" || p == "/v2/members/" || p == "/v2/members/leader":
		s.serveMembers(w, r)
	case p == "/metrics" && s.registry != nil:
		s.count(kindInfo)
		s.MetricsHandler().ServeHTTP(w, r)
	case isWriteMethod(r.Method):
		s.serveWrite(w, r)
	default:
		s.pass(w, r, false)
	}
}

// cleanPath is the path etcd's mux would serve: dot segments and double
// slashes removed, a trailing slash kept.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	clean := path.Clean(p)
	if p[len(p)-1] == '/' && clean != "/" {
		clean += "/"
	}
	return clean
}

// redirectClean answers an unclean path as etcd's mux does: 301 to the
// clean one.
func redirectClean(w http.ResponseWriter, r *http.Request, clean string) {
	u := *r.URL
	u.Path, u.RawPath = clean, ""
	http.Redirect(w, r, u.String(), http.StatusMovedPermanently)
}

func (s *Server) count(kind string) { s.metrics.requests[kind].Inc() }

// isWriteMethod reports the methods that change etcd.
func isWriteMethod(m string) bool {
	return m != http.MethodGet && m != http.MethodHead && m != http.MethodOptions
}

// ageSample is the data age header, computed at most every ageRefresh
// so that answers do not each ask the watch for its status.
type ageSample struct {
	at     time.Time
	st     *state // the state it was computed with data or without
	header []string
	up     bool
	age    float64
}

const ageRefresh = 100 * time.Millisecond

// setAge puts the data age header on an answer from st.
func (s *Server) setAge(h http.Header, st *state) {
	if st == nil {
		h[DataAgeHeader] = noDataAge
		return
	}
	h[DataAgeHeader] = s.ageNow(time.Now()).header
}

var noDataAge = []string{"-1"}

// ageValue is the data age header's value for an answer from st.
func (s *Server) ageValue(st *state) string {
	if st == nil {
		return noDataAge[0]
	}
	return s.ageNow(time.Now()).header[0]
}

func (s *Server) ageNow(now time.Time) *ageSample {
	st := s.hub.current()
	if a := s.age.Load(); a != nil && now.Sub(a.at) < ageRefresh && (a.st == nil) == (st == nil) {
		return a
	}
	up, age := s.upstreamState(now)
	a := &ageSample{at: now, st: st, up: up, age: age, header: []string{strconv.FormatFloat(age, 'f', 0, 64)}}
	s.age.Store(a)
	return a
}

// upstreamState reports whether the watch is connected and how old the
// data may be, in whole seconds rounded up (-1: no data yet).
func (s *Server) upstreamState(now time.Time) (bool, float64) {
	st := s.hub.current()
	if s.cfg.Status == nil {
		if st == nil {
			return false, -1
		}
		return true, 0
	}
	status := s.cfg.Status()
	age := status.Age(now)
	switch {
	case st == nil || age < 0:
		return status.Connected, -1
	case st.fromCache && age == 0:
		// Connected, but the first read has not replaced the cache yet.
		return status.Connected, math.Max(1, math.Ceil(now.Sub(status.LastSync).Seconds()))
	}
	return status.Connected, math.Ceil(age.Seconds())
}
