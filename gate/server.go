package gate

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Config fields left zero.
const (
	DefaultMaxBodyBytes      = 20 << 20 // the site's client_max_body_size: dbconfig blobs
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = time.Hour // keep-alive for long-polling clients
	DefaultMaxHeaderBytes    = 64 << 10
	DefaultShutdownTimeout   = 5 * time.Second
)

// Config configures a Server. Files are read by New and re-read by Reload
// and, while Serve runs, whenever they change on disk.
type Config struct {
	// Upstreams are etcd client URLs (http or https), tried in order with
	// failover. At least one is required.
	Upstreams []string
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

	// Logger receives operational logs (default: discard).
	Logger *slog.Logger
	// AccessLog receives one record per request (default: none).
	AccessLog *slog.Logger
}

// Server is the gate: an http.Handler that enforces the ACL and read-only
// mode and proxies everything else to etcd unchanged.
type Server struct {
	cfg     Config
	log     *slog.Logger
	access  *slog.Logger
	metrics *metrics

	fwd     *forwarder
	reentry atomic.Pointer[reentryListener] // set while Serve runs

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
	s := &Server{cfg: cfg, log: cfg.Logger, access: cfg.AccessLog}
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
	s.fwd = newForwarder(targets, nil)
	s.fwd.onError = func(target *url.URL, err error) {
		s.metrics.upstreamErrors.WithLabelValues(target.String()).Inc()
		s.log.Warn("upstream failed", "upstream", target.String(), "err", err)
	}
	s.fwd.onSwitch = func(from, to *url.URL) {
		s.metrics.failovers.Inc()
		s.log.Warn("failed over to another upstream", "from", from.String(), "to", to.String())
	}
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
	return s, nil
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

func (s *Server) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cert.Load(), nil
}

func (s *Server) certificateExpiry() time.Time {
	if c := s.cert.Load(); c != nil && c.Leaf != nil {
		return c.Leaf.NotAfter
	}
	return time.Unix(0, 0)
}
