package gate

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// ConfigError is a configuration the gate cannot start with: a bad
// setting or a file that does not load. The command exits 2 on it.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// Run is `confsync gate`: it loads the configuration, serves clients on
// cfg.Listen (and the gate's own metrics on cfg.MetricsAddr) until ctx is
// done, then shuts down as Serve does. Each value received from hangups
// (the command's SIGHUP) reloads every configuration file and reopens the
// access log. Configuration errors are *ConfigError.
func Run(ctx context.Context, cfg Config, hangups <-chan os.Signal) error {
	srv, err := New(cfg)
	if err != nil {
		return &ConfigError{err}
	}
	defer srv.Close()
	cfg = srv.cfg // with defaults
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	if cfg.MetricsAddr != "" {
		stop, err := serveMetrics(cfg.MetricsAddr, srv)
		if err != nil {
			ln.Close()
			return fmt.Errorf("metrics address %s: %w", cfg.MetricsAddr, err)
		}
		defer stop()
	}
	go reloadOnHangup(ctx, hangups, srv)
	srv.log.Info("gate listening", "addr", ln.Addr().String(), "tls", cfg.TLSCertFile != "",
		"upstreams", strings.Join(cfg.Upstreams, ","), "read_only", srv.ReadOnly(),
		"client_limit", cfg.ClientLimit.String(), "user_limit", cfg.UserLimit.String())
	go func() {
		// Ready once listening with the upstream checked (healthy or not:
		// the status says which, and a gate in front of an etcd that is
		// down still answers clients with etcd's own errors).
		checkCtx, cancel := context.WithTimeout(ctx, cfg.UpstreamTimeout)
		defer cancel()
		cfg.Notifier.Ready(srv.statusLine(srv.checkUpstreams(checkCtx)))
	}()
	if err := srv.Serve(ctx, ln); err != nil {
		return err
	}
	cfg.Notifier.Stopping("gate stopped")
	srv.log.Info("gate stopped")
	return nil
}

// serveMetrics serves the gate's /metrics, /healthz and /readyz on addr.
func serveMetrics(addr string, srv *Server) (stop func() error, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: srv.MetricsHandler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(srv.log.Handler(), slog.LevelDebug)}
	go hs.Serve(ln)
	srv.log.Info("serving metrics", "addr", ln.Addr().String())
	return hs.Close, nil
}

// reloadOnHangup reloads on each signal until ctx is done.
func reloadOnHangup(ctx context.Context, hangups <-chan os.Signal, srv *Server) {
	for {
		select {
		case <-ctx.Done():
			return
		case sig := <-hangups:
			srv.log.Info("SIGHUP: reloading configuration files and reopening the access log", "signal", sig.String())
			srv.Reload() // logs what failed
		}
	}
}
