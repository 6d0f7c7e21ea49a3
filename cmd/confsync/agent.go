package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/confsync/confsync/agent"
	"github.com/confsync/confsync/backends"
	"github.com/confsync/confsync/backends/etcd"
	"github.com/confsync/confsync/backends/watch"
	"github.com/confsync/confsync/internal/sdnotify"
	"github.com/confsync/confsync/relay"
	"github.com/prometheus/client_golang/prometheus"
)

// agentFlags are the render flags plus the daemon's own.
type agentFlags struct {
	renderFlags
	watch          bool
	interval       int
	stateDir       string
	metricsAddr    string
	wait           string
	resyncInterval time.Duration
	grace          time.Duration
	watchPrefix    string
	watchStream    bool
	serve          string
	serveTLSCert   string
	serveTLSKey    string
}

func (f *agentFlags) register(fs *flag.FlagSet) {
	f.renderFlags.register(fs)
	// The agent runs until stopped unless -onetime is given.
	fs.Lookup("onetime").DefValue = "false"
	f.onetime = false
	fs.Lookup("onetime").Usage = "render every resource once and exit, exactly like confsync render"
	fs.BoolVar(&f.watch, "watch", true, "follow etcd with one watch for every root (the default)")
	fs.StringVar(&f.watchPrefix, "watch-prefix", "", "the key the one watch follows (default: the longest common ancestor of every key the resources read); must cover them all")
	fs.StringVar(&f.serve, "serve", "", "HOST:PORT to serve etcd's v2 read API of the watched prefix on, from the agent's own copy (as confsync relay does)")
	fs.StringVar(&f.serveTLSCert, "serve-tls-cert", "", "certificate (PEM, chain included) to serve -serve with HTTPS")
	fs.StringVar(&f.serveTLSKey, "serve-tls-key", "", "key (PEM) of -serve-tls-cert")
	fs.BoolVar(&f.watchStream, "watch-stream", true, "stream the watch (stream=true) once etcd is proven to deliver it event by event; false keeps to long polls")
	fs.IntVar(&f.interval, "interval", 0, "instead of watching, re-read every root every this many seconds")
	fs.StringVar(&f.stateDir, "state-dir", "/var/lib/confsync", `where the last-known-good cache lives ("" disables it)`)
	fs.StringVar(&f.metricsAddr, "metrics-addr", "127.0.0.1:9105", `HOST:PORT for /metrics, /healthz, /readyz and /status ("" disables)`)
	fs.StringVar(&f.wait, "wait", "0", "quiescence MIN:MAX: render once changes stop for MIN, at most MAX after the first (e.g. 2s:10s)")
	fs.DurationVar(&f.resyncInterval, "resync-interval", 10*time.Minute, "re-read every root and re-apply every resource this often in watch mode")
	fs.DurationVar(&f.grace, "grace", 30*time.Second, "on SIGTERM, let running check and reload commands finish this long")
}

func agentFlagSet(f *agentFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	f.register(fs)
	return fs
}

func (f *agentFlags) validate(fs *flag.FlagSet) error {
	explicit := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { explicit[fl.Name] = true })
	if explicit["watch"] && f.watch && f.interval > 0 {
		return errors.New("-watch and -interval exclude each other; -resync-interval sets the periodic full read in watch mode")
	}
	if f.interval < 0 {
		return errors.New("-interval must be positive")
	}
	if !f.watch && f.interval == 0 {
		f.interval = 600 // confd's default polling period
	}
	if f.template != "" {
		return errors.New("-template is for confsync render")
	}
	if (f.serveTLSCert == "") != (f.serveTLSKey == "") {
		return errors.New("-serve-tls-cert and -serve-tls-key go together")
	}
	if f.serveTLSCert != "" && f.serve == "" {
		return errors.New("-serve-tls-cert needs -serve")
	}
	if f.watchPrefix != "" && !strings.HasPrefix(f.watchPrefix, "/") {
		return fmt.Errorf("-watch-prefix %q: want an absolute key such as /conftool/v1", f.watchPrefix)
	}
	_, _, err := agent.ParseWait(f.wait)
	return err
}

func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var f agentFlags
	fs := agentFlagSet(&f)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, commandHelp("agent")) }
	if err := f.parse(fs, args); err != nil {
		return usageError(stderr, "agent", err)
	}
	if err := f.validate(fs); err != nil {
		return usageError(stderr, "agent", err)
	}
	if f.onetime {
		return renderOnce(ctx, &f.renderFlags, stdout, stderr)
	}
	logger, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return usageError(stderr, "agent", err)
	}
	src, closeSrc, err := f.source(ctx, logger)
	if err != nil {
		return usageError(stderr, "agent", err)
	}
	defer closeSrc()
	if f.backend == "env" && f.interval == 0 {
		return usageError(stderr, "agent", errors.New("-backend env cannot be watched; give -interval or -onetime"))
	}
	if f.stateDir != "" {
		if err := os.MkdirAll(f.stateDir, 0o750); err != nil {
			return usageError(stderr, "agent", fmt.Errorf("-state-dir: %w (or -state-dir \"\" to run without a cache)", err))
		}
	}
	waitMin, waitMax, _ := agent.ParseWait(f.wait)
	reg := prometheus.NewRegistry()
	var a *agent.Agent
	served := f.served(src, reg, func() watch.Status { return a.WatchStatus() }, logger)
	a, err = agent.New(agent.Config{
		Load:           agent.LoadOptions{ConfDir: f.confDir, Prefix: f.prefix, DestRoot: f.destRoot},
		Source:         src,
		Interval:       time.Duration(f.interval) * time.Second,
		ResyncInterval: f.resyncInterval,
		WaitMin:        waitMin,
		WaitMax:        waitMax,
		StateDir:       f.stateDir,
		CacheSource:    f.cacheSource(),
		Grace:          f.grace,
		DataFiles:      f.dataFiles(),
		Watch:          watch.Config{Prefix: f.watchPrefix, NoStream: !f.watchStream, Listener: served.listener()},
		Notifier:       sdnotify.New(),
		Registry:       reg,
		Options:        agent.Options{Noop: f.noop, SyncOnly: f.syncOnly, KeepStageFile: f.keepStageFile, Diff: stdout, Logger: logger},
	})
	if err != nil {
		return usageError(stderr, "agent", err)
	}
	if f.metricsAddr != "" {
		ln, err := net.Listen("tcp", f.metricsAddr)
		if err != nil {
			return usageError(stderr, "agent", fmt.Errorf("-metrics-addr: %w (pick a free port per agent, or \"\" to disable)", err))
		}
		srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		logger.Info("serving metrics and status", "addr", ln.Addr().String())
	}
	if served != nil {
		ln, err := relay.Listen(f.serve, f.serveTLSCert, f.serveTLSKey)
		if err != nil {
			return usageError(stderr, "agent", fmt.Errorf("-serve: %w", err))
		}
		go served.Serve(ln)
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			served.Shutdown(sctx)
		}()
		logger.Info("serving etcd's v2 read API from the agent's copy", "addr", ln.Addr().String(), "tls", f.serveTLSCert != "")
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				a.Reload()
			}
		}
	}()
	logger.Info("agent started", "confdir", f.confDir, "mode", f.mode())
	if err := a.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "confsync agent: %v\n", err)
		return 1
	}
	return 0
}

// servedRelay is the relay of -serve, nil without it.
type servedRelay struct{ *relay.Server }

// served builds the relay -serve asks for: fed by the agent's own watch,
// passing what it does not hold to etcd's v2 API (none with etcdv3), its
// metrics next to the agent's.
func (f *agentFlags) served(src backends.Source, reg prometheus.Registerer, status func() watch.Status, logger *slog.Logger) *servedRelay {
	if f.serve == "" {
		return nil
	}
	upstream, _ := src.(*etcd.Client)
	return &servedRelay{relay.New(relay.Config{Upstream: upstream, Status: status, Registerer: reg, Logger: logger})}
}

func (s *servedRelay) listener() watch.Listener {
	if s == nil {
		return nil
	}
	return s.Listener()
}

// dataFiles are the files to follow when the file backend is watched.
func (f *agentFlags) dataFiles() []string {
	if f.backend != "file" || f.interval > 0 {
		return nil
	}
	return f.files
}

func (f *agentFlags) mode() string {
	if f.interval > 0 {
		return fmt.Sprintf("interval %ds", f.interval)
	}
	return "watch"
}
