package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/etcdv3"
	"github.com/confsync/confsync/backends/watch"
	"github.com/confsync/confsync/internal/sdnotify"
)

// RunConfig configures the confsync relay command: a Server fed by its
// own watch of Prefix, on its own listener.
type RunConfig struct {
	// Config is the Server's; Upstream and Status are set by Run.
	Config
	// Etcd says how to reach the upstream cluster.
	Etcd etcd.Config
	// V3 reads the prefix through etcd's v3 API (etcd 3.6 has no v2):
	// revisions serve as indexes, directories are derived from key paths,
	// and nothing is passed upstream (there is no v2 API to pass it to).
	V3 bool
	// Prefix is the key whose subtree is served from memory.
	Prefix string
	// Listen is the HOST:PORT clients connect to. Listener, when set, is
	// used instead (tests pass one bound to port 0).
	Listen   string
	Listener net.Listener
	// TLSCertFile and TLSKeyFile make the listener speak HTTPS.
	TLSCertFile, TLSKeyFile string
	// MetricsAddr, when set, serves /metrics, /health and /status there
	// (the client listener serves /metrics and /health too).
	MetricsAddr string
	// CacheFile persists the copy (the agent's last-known-good format), so
	// that a relay started while etcd is down serves from it. CacheSource
	// names the upstream in it (default "etcd:" and the endpoints); a cache
	// written for another source is not used.
	CacheFile, CacheSource string
	// Watch tunes the watch of the prefix (poll timeout, re-read period,
	// streaming); Source, Prefix and Listener are set by Run.
	Watch watch.Config
	// ShutdownTimeout bounds the wait for requests in flight on stop
	// (default 5s).
	ShutdownTimeout time.Duration
	// Notifier tells systemd when the relay is ready (listening, with data
	// from etcd or its cache), how it is doing, and that it still answers
	// (nil, or outside systemd: nothing).
	Notifier *sdnotify.Notifier
}

// Run serves until ctx ends. It returns an error when it cannot start
// (bad configuration, a listener that cannot be opened) or its listener
// fails; an etcd that is down is normal and only logged.
func Run(ctx context.Context, cfg RunConfig) error {
	if cfg.Prefix == "" || cfg.Prefix[0] != '/' {
		return fmt.Errorf("relay prefix %q: want an absolute key such as /conftool/v1", cfg.Prefix)
	}
	cfg.Prefix = backends.CleanKey(cfg.Prefix)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	logger := cfg.Logger
	src, err := openSource(ctx, cfg)
	if err != nil {
		return err
	}
	defer src.Close()
	tlsConfig, err := listenerTLS(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return err
	}

	var w *watch.Watcher
	srvCfg := cfg.Config
	srvCfg.Upstream = src.v2
	srvCfg.Status = func() watch.Status { return w.Status() }
	srv := New(srvCfg)
	wcfg := cfg.Watch
	wcfg.Source, wcfg.Prefix, wcfg.Listener, wcfg.Logger = src.Source, cfg.Prefix, srv.Listener(), logger
	w = watch.New(wcfg)
	cache := cacheFor(cfg, src)
	seed := loadCache(cache, cfg.Prefix, logger)

	ls, err := serveListeners(cfg, srv, tlsConfig)
	if err != nil {
		return err
	}
	logger.Info("relay serving", "addr", ls.addr, "tls", tlsConfig != nil, "prefix", cfg.Prefix,
		"etcd", strings.Join(src.endpoints, ","), "api", src.api, "history", srv.cfg.History, "forward_writes", cfg.ForwardWrites)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if err := w.Start(watchCtx, nil, seed); err != nil {
		ls.shutdown(srv, cfg.ShutdownTimeout)
		return err
	}
	saved := make(chan struct{})
	go func() {
		defer close(saved)
		keepCacheSaved(watchCtx, cache, w, srv.hub, logger)
	}()
	go srv.superviseSystemd(watchCtx, cfg.Notifier, ls.addr, tlsConfig != nil)

	select {
	case <-ctx.Done():
	case err = <-ls.errs:
		err = fmt.Errorf("relay listener: %w", err)
	}
	// Clients first (their watches end with an empty answer), then the
	// watch, then the last save of the cache.
	cfg.Notifier.Stopping("relay stopping: ending every watch")
	ls.shutdown(srv, cfg.ShutdownTimeout)
	stopWatch()
	w.Wait()
	<-saved
	return err
}

// superviseSystemd says READY=1 once the relay listens and has data (from
// etcd or its cache), keeps `systemctl status` current, and feeds the
// watchdog with answers to its own /health, asked through its own listener:
// pings stop when the relay no longer answers clients, not merely when the
// process is gone, and go on while etcd is away (the relay then answers
// from its copy, which is its job).
func (s *Server) superviseSystemd(ctx context.Context, n *sdnotify.Notifier, addr string, useTLS bool) {
	if !n.Enabled() {
		return
	}
	wd, err := n.Watchdog("the relay's answers to its own /health", s.logger)
	if err != nil {
		s.logger.Error("systemd watchdog not used", "err", err)
	}
	go wd.Run(ctx)
	scheme := "http"
	if useTLS {
		scheme = "https"
	}
	probe := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		// Its own certificate, by its own address: only the answer matters.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}
	every := 2 * time.Second
	if wd != nil {
		every = min(every, wd.Interval()/4)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	ready := false
	for {
		if resp, err := probe.Get(scheme + "://" + addr + "/health"); err == nil {
			resp.Body.Close()
			wd.Alive()
		}
		line := s.statusLine()
		switch {
		case !ready && s.hub.current() != nil:
			ready = true
			n.Ready(line)
		default:
			n.Status(line)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// statusLine is the relay's state in one line, for `systemctl status`.
func (s *Server) statusLine() string {
	st := s.hub.current()
	if st == nil {
		return "listening; no data yet (etcd has not answered and there was no cache)"
	}
	longPolls, streams, _, _ := s.hub.counts()
	a := s.ageNow(time.Now())
	line := fmt.Sprintf("serving %s at index %d to %d watchers", st.space.Prefix(), st.index(), longPolls+streams)
	if a.age > 0 {
		line += fmt.Sprintf("; etcd does not answer, data %.0fs old", a.age)
	}
	return line
}

// upstreamSource is what the relay follows: etcd's v2 API (also passed
// requests the relay does not answer) or its v3 API.
type upstreamSource struct {
	backends.Source
	v2        *etcd.Client // nil for v3
	api       string       // "etcd" or "etcdv3", as the cache names it
	endpoints []string
	Close     func()
}

func openSource(ctx context.Context, cfg RunConfig) (*upstreamSource, error) {
	if cfg.V3 {
		c, err := etcdv3.New(ctx, cfg.Etcd, cfg.Logger)
		if err != nil {
			return nil, err
		}
		return &upstreamSource{Source: c, api: "etcdv3", endpoints: c.Endpoints(), Close: c.Close}, nil
	}
	c, err := etcd.New(ctx, cfg.Etcd)
	if err != nil {
		return nil, err
	}
	return &upstreamSource{Source: c, v2: c, api: "etcd", endpoints: c.Endpoints(), Close: c.Close}, nil
}

// listeners are what Run serves on.
type listeners struct {
	addr    string
	metrics *http.Server // nil without a metrics address
	errs    chan error   // a listener that failed
}

// serveListeners opens the client listener (and the metrics one) and
// serves them.
func serveListeners(cfg RunConfig, srv *Server, tlsConfig *tls.Config) (*listeners, error) {
	ln, err := listen(cfg, tlsConfig)
	if err != nil {
		return nil, err
	}
	ls := &listeners{addr: ln.Addr().String(), errs: make(chan error, 2)}
	if cfg.MetricsAddr != "" {
		mln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("metrics address %s: %w", cfg.MetricsAddr, err)
		}
		ls.metrics = newHTTPServer(srv.metricsMux(), srv.logger)
		go func() { ls.errs <- ls.metrics.Serve(mln) }()
	}
	go func() { ls.errs <- srv.Serve(ln) }()
	return ls, nil
}

// shutdown ends every watch and request, giving requests in flight
// timeout (default 5s).
func (ls *listeners) shutdown(srv *Server, timeout time.Duration) {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	srv.Shutdown(ctx)
	if ls.metrics != nil {
		ls.metrics.Shutdown(ctx)
	}
}

// metricsMux serves /metrics, /health and /status for a metrics listener.
func (s *Server) metricsMux() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", s.MetricsHandler())
	mux.HandleFunc("/health", s.serveHealth)
	mux.HandleFunc("/status", s.serveStatus)
	return mux
}

// Listen opens addr for a Server, speaking HTTPS when certFile and keyFile
// are given (TLS 1.2 and up, HTTP/1.x as pybal speaks it).
func Listen(addr, certFile, keyFile string) (net.Listener, error) {
	tlsConfig, err := listenerTLS(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return listen(RunConfig{Listen: addr}, tlsConfig)
}

func listen(cfg RunConfig, tlsConfig *tls.Config) (net.Listener, error) {
	ln := cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
		}
	}
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	return ln, nil
}

// newHTTPServer serves h with the timeouts a server of long polls needs:
// none on writing (a watch may wait for days), a bound on reading a
// request's headers, and kept-alive connections for clients that poll.
func newHTTPServer(h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Hour,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(slogWriter{logger}, "", 0),
	}
}

// slogWriter sends net/http's own complaints (TLS handshake errors from
// scanners, say) to the debug log.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Debug(strings.TrimSpace(string(p)))
	return len(p), nil
}

// listenerTLS is the TLS configuration of the client listener: TLS 1.2
// or later with AEAD suites, and ALPN offering http/1.0 besides http/1.1,
// since a client offering only http/1.0 is otherwise refused by Go's TLS
// stack. No h2: every v2 client speaks HTTP/1.x.
func listenerTLS(certFile, keyFile string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("certificate %s with key %s: %w", certFile, keyFile, err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		NextProtos: []string{"http/1.1", "http/1.0"},
	}, nil
}

func cacheFor(cfg RunConfig, src *upstreamSource) *watch.Cache {
	if cfg.CacheFile == "" {
		return nil
	}
	source := cfg.CacheSource
	if source == "" {
		source = src.api + ":" + strings.Join(src.endpoints, ",")
	}
	return &watch.Cache{Path: cfg.CacheFile, Source: source}
}

// loadCache reads the persisted copy; one that cannot be used is logged
// and skipped (the relay then waits for etcd).
func loadCache(cache *watch.Cache, prefix string, logger *slog.Logger) *watch.Copy {
	if cache == nil {
		return nil
	}
	cached, err := cache.Load()
	switch {
	case err != nil:
		logger.Warn("cache not used", "err", err)
		return nil
	case cached == nil:
		return nil
	case cached.Space.Prefix() != prefix:
		logger.Warn("cache not used: it holds another prefix", "path", cache.Path, "cached", cached.Space.Prefix(), "prefix", prefix)
		return nil
	}
	logger.Info("serving from the cache until etcd answers", "path", cache.Path, "keys", cached.Space.Len(),
		"etcd_index", cached.Space.Index(), "fetched_at", cached.FetchedAt)
	return cached
}

// keepCacheSaved writes the copy once a second when it changed, and once
// more when ctx ends.
func keepCacheSaved(ctx context.Context, cache *watch.Cache, w *watch.Watcher, h *hub, logger *slog.Logger) {
	if cache == nil {
		return
	}
	var saved uint64
	save := func() {
		gen := h.generation()
		if gen == saved {
			return
		}
		c := w.Copy()
		if c.Space == nil || c.FromCache {
			return
		}
		if err := cache.Save(c); err != nil {
			logger.Error("saving the cache failed", "path", cache.Path, "err", err)
			return
		}
		saved = gen
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			save()
			return
		case <-t.C:
			save()
		}
	}
}
