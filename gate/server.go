package gate

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confsync/confsync/internal/sdnotify"
)

// Defaults for Config fields left zero.
const (
	DefaultListen            = ":4001"
	DefaultMaxBodyBytes      = 20 << 20 // the site's client_max_body_size: dbconfig blobs
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultBodyTimeout       = 10 * time.Second
	DefaultBodyMinRate       = 1 << 10   // bytes a second; slower than any real client
	DefaultIdleTimeout       = time.Hour // keep-alive for long-polling clients
	DefaultMaxHeaderBytes    = 64 << 10
	DefaultShutdownTimeout   = 5 * time.Second
	DefaultUpstreamTimeout   = 10 * time.Second // over etcd's own 7s for writes
)

// Defaults of the command's rate limits and access log bounds (see
// docs/gate.md for the reasoning). In a Config, zero means no limit.
const (
	// A client address: 100 requests a second on average, 1000 at once.
	// Ten times what the busiest legitimate host sends (conftool
	// depooling a whole cluster), a tenth of the read rate at which the
	// site pages (1000 GETs a second on one etcd member).
	DefaultClientRate  = 100
	DefaultClientBurst = 1000
	// An authenticated user, shared by every host of a pool: 50 writes a
	// second, 500 at once.
	DefaultUserRate  = 50
	DefaultUserBurst = 500
	// The access log: 100 MiB a file, 9 old files kept (1 GB at most), and
	// 100 lines a second (1000 at once) before lines are dropped.
	DefaultAccessLogMaxBytes = 100 << 20
	DefaultAccessLogKeep     = 9
	DefaultAccessLogRate     = 100
	DefaultAccessLogBurst    = 1000
)

// Config configures a Server. Files are read by New and re-read by Reload
// and, while Serve runs, whenever they change on disk.
type Config struct {
	// Listen is the HOST:PORT Run serves clients on (default DefaultListen).
	Listen string
	// Notifier tells systemd when the gate is ready (listening, upstream
	// checked), how its upstream is doing, and that its upstream loop
	// turns (nil, or outside systemd: nothing).
	Notifier *sdnotify.Notifier
	// MetricsAddr, when set, is the HOST:PORT Run serves MetricsHandler on.
	MetricsAddr string

	// Upstreams are etcd client URLs (http or https), tried in order with
	// failover. At least one is required.
	Upstreams []string
	// UpstreamTimeout is how long etcd may take to start answering a write
	// or a quorum read (default DefaultUpstreamTimeout); reads it answers
	// from memory and watches (whose headers come at once) get half. Past
	// it the member is taken to be hung: a read moves to the next
	// upstream, a write gets 504 (it may have been applied), requests go
	// to the next upstream from then on and watches on the hung one are
	// ended so that their clients watch again elsewhere. The preferred
	// upstream is also probed every few seconds while Serve runs, so a
	// hung member is found without a request having to wait on it.
	UpstreamTimeout time.Duration

	// UpstreamCAFile verifies https upstreams (default: system roots).
	// UpstreamCertFile and UpstreamKeyFile are a client certificate for them.
	UpstreamCAFile, UpstreamCertFile, UpstreamKeyFile string

	// TLSCertFile and TLSKeyFile make the gate serve HTTPS. Both empty
	// serves plain HTTP, which is for tests and loopback only.
	TLSCertFile, TLSKeyFile string

	// HtpasswdFile holds the users (bcrypt or apr1 hashes).
	HtpasswdFile string
	// ACLFile is the TOML ACL. Empty refuses every write.
	ACLFile string

	// ReadOnlyFile, when set, makes the gate read-only while the file exists.
	ReadOnlyFile string
	// ReadOnly makes the gate read-only for its whole life.
	ReadOnly bool

	// AdvertiseURL is the URL written into /v2/members and /v2/machines
	// responses. Empty uses the scheme and Host of each request.
	AdvertiseURL string

	MaxBodyBytes      int64         // default DefaultMaxBodyBytes
	ReadHeaderTimeout time.Duration // default DefaultReadHeaderTimeout
	IdleTimeout       time.Duration // default DefaultIdleTimeout
	MaxHeaderBytes    int           // default DefaultMaxHeaderBytes
	ShutdownTimeout   time.Duration // default DefaultShutdownTimeout

	// A request body is read whole before anything is forwarded, so etcd
	// never sees part of one. The client gets BodyTimeout to send it, plus
	// a second for every BodyMinRate bytes it sent: a client trickling a
	// body is cut off with 408 (defaults DefaultBodyTimeout and
	// DefaultBodyMinRate).
	BodyTimeout time.Duration
	BodyMinRate int64

	// ClientLimit limits the requests of each client address (IPv6: each
	// /64), UserLimit the writes of each authenticated user; past them a
	// request gets 429 with Retry-After. [[rate_limit]] entries of the ACL
	// file set other limits for the clients and users they list. Zero
	// values mean no limit (the command defaults to DefaultClientRate and
	// friends). Open watches are not counted; see quickWatch.
	ClientLimit, UserLimit RateLimit

	// Logger receives operational logs (default: discard).
	Logger *slog.Logger
	// AccessLog says where one JSON line per request goes (default: none).
	AccessLog AccessLogConfig
}

// Server is the gate: an http.Handler that enforces the ACL and read-only
// mode and proxies everything else to etcd unchanged.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	fwd     *forwarder
	reentry atomic.Pointer[reentryListener] // set while Serve runs

	bodyBytes     atomic.Int64 // of request bodies held (see bodyBudget)
	clientBuckets *limiter[netip.Addr]
	userBuckets   *limiter[string]
	accessLog     *accessLog // nil without one

	streamsMu sync.Mutex
	streams   map[*watchStream]struct{} // watches on hijacked connections; nil outside Serve

	acl   atomic.Pointer[ACL]
	users atomic.Pointer[Htpasswd] // nil without HtpasswdFile
	cert  atomic.Pointer[tls.Certificate]

	// Read-only if any of these says so.
	readOnlyFile   atomic.Bool
	readOnlyManual atomic.Bool

	reloadMu sync.Mutex // serializes reloads
}

// New checks the configuration and loads every file. Errors name the file
// or setting at fault.
func New(cfg Config) (*Server, error) {
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	if cfg.BodyMinRate <= 0 {
		cfg.BodyMinRate = DefaultBodyMinRate
	}
	s := &Server{cfg: cfg, log: cfg.Logger, clientBuckets: newLimiter[netip.Addr](), userBuckets: newLimiter[string]()}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return nil, errors.New("TLS certificate and key must be given together")
	}
	if cfg.AdvertiseURL != "" {
		if u, err := url.Parse(cfg.AdvertiseURL); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("advertise URL %q: want https://host:port", cfg.AdvertiseURL)
		}
	}
	targets, err := parseUpstreams(cfg.Upstreams)
	if err != nil {
		return nil, err
	}
	s.metrics = newMetrics(s)
	s.fwd = newForwarder(targets, nil, cfg.UpstreamTimeout)
	s.fwd.onError = func(target *url.URL, err error) {
		s.metrics.upstreamErrors.WithLabelValues(target.String()).Inc()
		s.log.Warn("upstream failed", "upstream", target.String(), "err", err)
	}
	s.fwd.onSwitch = func(from, to *url.URL) {
		s.metrics.failovers.Inc()
		s.log.Warn("failed over to another upstream", "from", from.String(), "to", to.String())
	}
	s.fwd.onDown = s.endWatchesOn
	if err := s.loadUpstreamTLS(); err != nil {
		return nil, err
	}
	if err := s.loadTLS(); err != nil {
		return nil, err
	}
	if err := s.loadHtpasswd(); err != nil {
		return nil, err
	}
	if err := s.loadACL(); err != nil {
		return nil, err
	}
	if cfg.ACLFile == "" {
		s.log.Warn("no ACL file given: every write is refused")
	}
	if acl := s.acl.Load(); len(acl.Users()) > 0 && cfg.HtpasswdFile == "" {
		return nil, fmt.Errorf("%s names users but no htpasswd file is given", acl.File())
	}
	if cfg.ReadOnlyFile != "" {
		dir := filepath.Dir(cfg.ReadOnlyFile)
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("read-only flag file %s: directory %s must exist (the file itself may not)", cfg.ReadOnlyFile, dir)
		}
		s.checkReadOnlyFile()
	}
	// Last: nothing after it may fail, or the file would stay open.
	if s.accessLog, err = openAccessLog(cfg.AccessLog, s.log, s.metrics); err != nil {
		return nil, err
	}
	return s, nil
}

// Close writes out and closes the access log. Call it after Serve returned.
func (s *Server) Close() error {
	if s.accessLog == nil {
		return nil
	}
	return s.accessLog.Close()
}

// ReadOnly reports whether writes are refused now.
func (s *Server) ReadOnly() bool {
	return s.cfg.ReadOnly || s.readOnlyFile.Load() || s.readOnlyManual.Load()
}

// SetReadOnly switches read-only mode on or off from code. The gate is
// read-only while any of Config.ReadOnly, the flag file and SetReadOnly(true)
// says so; SetReadOnly(false) therefore does not override the other two.
// Open watches are not disturbed.
func (s *Server) SetReadOnly(on bool) {
	if s.readOnlyManual.Swap(on) != on {
		s.log.Info("read-only switched by call", "read_only_call", on, "read_only", s.ReadOnly())
	}
}

// Serve accepts connections on ln (wrapping them in TLS when configured)
// until ctx is done, then shuts down: new connections are refused,
// requests in flight get Config.ShutdownTimeout to finish, and what is left
// (watches, typically) is cut. While serving, configuration files are
// watched and reloaded when they change.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		// A non-nil empty map turns HTTP/2 off (see serverTLSConfig).
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		BaseContext:  func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	if s.cfg.TLSCertFile != "" {
		ln = tls.NewListener(ln, serverTLSConfig(s.getCertificate))
	}
	watchCtx, stopWatching := context.WithCancel(ctx)
	defer stopWatching()
	if err := s.watchFiles(watchCtx); err != nil {
		ln.Close()
		return err
	}
	go s.probeLoop(watchCtx)
	rl := newReentryListener(ln)
	defer rl.Close()
	s.streamsMu.Lock()
	s.streams = make(map[*watchStream]struct{})
	s.streamsMu.Unlock()
	s.reentry.Store(rl)
	defer s.reentry.Store(nil)

	served := make(chan error, 1)
	go func() { served <- hs.Serve(rl) }()
	select {
	case err := <-served:
		s.closeStreams()
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(shutdownCtx); err != nil {
		hs.Close()
	}
	<-served
	s.closeStreams()
	s.fwd.closeIdle()
	return nil
}

// upstreamProbeInterval is how often Serve asks the preferred upstream
// whether it is healthy (see checkUpstreams).
const upstreamProbeInterval = 2 * time.Second

// probeLoop checks the preferred upstream every upstreamProbeInterval,
// failing over when it is unhealthy, and tells systemd how it went. It is
// the loop that feeds the watchdog: every check goes through the
// forwarder's connection pools, with the upstream timeout, so the loop
// turns whatever etcd does, and stops only when the gate itself is stuck.
func (s *Server) probeLoop(ctx context.Context) {
	wd, err := s.cfg.Notifier.Watchdog("the gate's upstream checks", s.log)
	if err != nil {
		s.log.Error("systemd watchdog not used", "err", err)
	}
	if len(s.fwd.pools) < 2 && wd == nil && !s.cfg.Notifier.Enabled() {
		return // nowhere to fail over to, and nobody to tell
	}
	go wd.Run(ctx)
	t := time.NewTicker(upstreamProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			err := s.checkUpstreams(ctx)
			s.cfg.Notifier.Status(s.statusLine(err))
			wd.Alive()
		}
	}
}

// statusLine is the gate's state in one line, for `systemctl status`.
func (s *Server) statusLine(upstreamErr error) string {
	mode := "writable"
	if s.ReadOnly() {
		mode = "read-only"
	}
	up := s.fwd.current().String()
	if upstreamErr != nil {
		return fmt.Sprintf("serving %s; upstream %s unhealthy: %v", mode, up, upstreamErr)
	}
	return fmt.Sprintf("serving %s; upstream %s healthy", mode, up)
}

func (s *Server) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cert.Load(), nil
}

func (s *Server) certificateExpiry() time.Time {
	if c := s.cert.Load(); c != nil && c.Leaf != nil {
		return c.Leaf.NotAfter
	}
	return time.Unix(0, 0)
}
